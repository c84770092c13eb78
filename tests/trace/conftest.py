from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def harness():
    """The ground-truth harness ``benchmarks/measure.py`` (not a package), loaded once under a private name."""
    name = "dsadvise_benchmarks_measure"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "measure.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def trace_cases() -> dict[str, dict]:
    """Reduced-width configs of the model_types the tracer is checked on (``tests/trace/cases.yaml``)."""
    cases = yaml.safe_load((Path(__file__).parent / "cases.yaml").read_text())["cases"]
    return {mt: dict(cfg, model_type=mt) for mt, cfg in cases.items()}
