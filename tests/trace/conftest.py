from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def harness():
    """The ground-truth harness (``benchmarks.harness``): ``make_config``, ``instantiate``, and ``saved(model,
    mode, ids)``, the saved-for-backward snapshot of one forward under the harness's ``cuda_semantics``."""
    if str(ROOT) not in sys.path:   # ``benchmarks`` lives at the repository root
        sys.path.insert(0, str(ROOT))
    from benchmarks.harness import models
    from benchmarks.harness.kinds.saved import _forward_saved
    from benchmarks.harness.semantics import cuda_semantics

    from advisor.trace.cuda_semantics import sdpa_as_cuda

    def saved(model, mode: str, ids):
        # the harness's CUDA semantics plus the SDPA patch the tracer applies (CUDA's memory-efficient kernel where
        # v is narrower than q/k: DeepSeek's MLA), so both sides measure under one set of rules
        with cuda_semantics(mode, fast_matmul=True), sdpa_as_cuda():
            return _forward_saved(model, mode, ids)

    return SimpleNamespace(make_config=models.make_config, instantiate=models.instantiate, saved=saved)


def trace_cases() -> dict[str, dict]:
    """Reduced-width configs of the model_types the tracer is checked on (``tests/trace/cases.yaml``)."""
    cases = yaml.safe_load((Path(__file__).parent / "cases.yaml").read_text())["cases"]
    return {mt: dict(cfg, model_type=mt) for mt, cfg in cases.items()}
