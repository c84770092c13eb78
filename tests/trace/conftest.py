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

    def saved(model, mode: str, ids):
        with cuda_semantics(mode, fast_matmul=True):
            return _forward_saved(model, mode, ids)

    return SimpleNamespace(make_config=models.make_config, instantiate=models.instantiate, saved=saved)


def trace_cases() -> dict[str, dict]:
    """Reduced-width configs of the model_types the tracer is checked on (``tests/trace/cases.yaml``)."""
    cases = yaml.safe_load((Path(__file__).parent / "cases.yaml").read_text())["cases"]
    return {mt: dict(cfg, model_type=mt) for mt, cfg in cases.items()}
