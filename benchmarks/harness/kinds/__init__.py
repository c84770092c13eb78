"""Measurement kinds: one module each, found here by name, with its cases in ``benchmarks/cases/<name>.yaml``.

A kind module defines:

``TITLE``, ``DESCRIPTION`` (markdown for the docs), ``UNIT`` (``"GiB"`` or ``"MiB"``), ``ORDER`` (docs order),
``SOURCES``
    the shared harness modules its measurement depends on (besides itself); the cache key hashes them.
``COLUMNS``
    headers of the extra table columns :func:`compare` fills.
``label(case) -> str``
    the case's row name (unique within the kind).
``measure(case) -> dict``
    the ground truth, run under :func:`benchmarks.harness.semantics.cuda_semantics`; the dict is
    JSON-able and holds ``"cuda_semantics"`` (the :meth:`Semantics.record` of the run).
``compare(case, measured) -> Row``
    dsadvise's estimate of the same quantity against ``measured`` (re-run on every report: estimator
    changes never invalidate a measurement).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from benchmarks.harness.cases import Case

_REQUIRED = ("TITLE", "DESCRIPTION", "UNIT", "ORDER", "SOURCES", "COLUMNS", "label", "measure", "compare")


@dataclass
class Row:
    """One table row: measured and estimated bytes of a case, and the kind's extra cells (formatted)."""

    case: Case
    measured: int
    estimated: int
    cells: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def error(self) -> float:
        """(estimated - measured) / measured."""
        return (self.estimated - self.measured) / self.measured


def names() -> list[str]:
    """Every kind, in docs order."""
    found = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    return sorted(found, key=lambda n: (kind(n).ORDER, n))


def kind(name: str) -> ModuleType:
    """The module of kind ``name``; raises KeyError for an unknown kind or one missing a required name."""
    try:
        mod = importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{__name__}.{name}":
            raise KeyError(f"no measurement kind {name!r} (benchmarks/harness/kinds/{name}.py)") from None
        raise
    missing = [a for a in _REQUIRED if not hasattr(mod, a)]
    if missing:
        raise KeyError(f"kind {name!r} lacks {', '.join(missing)} (see benchmarks/harness/kinds/__init__.py)")
    return mod
