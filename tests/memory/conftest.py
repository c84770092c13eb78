"""Fixtures shared by the memory tests."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:   # ``benchmarks`` (the measurement harness) lives at the repository root
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def harness_kind():
    """Loader of a measurement kind of the harness, ``benchmarks.harness.kinds.<name>`` (imported on first
    use: it imports torch and transformers). ``harness_kind("saved").measure_saved(...)`` is the
    saved-bytes ground truth; see ``benchmarks/README.md``."""

    def load(name: str):
        return importlib.import_module(f"benchmarks.harness.kinds.{name}")

    return load
