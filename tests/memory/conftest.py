"""Fixtures shared by the memory tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def benchmark_module():
    """Loader of a module of ``benchmarks/`` (not a package), once, under a private name:
    ``benchmark_module("measure")`` is the ground-truth harness ``benchmarks/measure.py``."""

    def load(name: str):
        private = f"dsadvise_benchmarks_{name}"
        if private not in sys.modules:
            spec = importlib.util.spec_from_file_location(private, ROOT / "benchmarks" / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[private] = module
            spec.loader.exec_module(module)
        return sys.modules[private]

    return load
