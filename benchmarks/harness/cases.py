"""Case lists: the committed settings every measurement kind runs, split into calibration and held-out.

Each kind ``K`` reads ``benchmarks/cases/K.yaml``::

    defaults: {batch: 1, ckpt: none, method: full}   # merged under every case of the file
    calibration:                                     # cases the estimator was developed against
      - {model: llama-2-7b, mode: fp32, attn: sdpa, seq: 512, quick: true}
    held-out:                                        # cases nobody tuned the estimator on
      - {...}

``model`` is a catalog name (``advisor/data/models.yaml``) or a harness-only config of
``benchmarks/cases/configs.yaml``; ``overrides`` (a mapping) changes config keys (e.g. ``vocab_size``);
``quick: true`` puts a case in the ``--quick`` subset. Every other key is a setting the kind reads.
A case's identity is its kind, its settings and its resolved model config (what the cache key hashes).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CASES_DIR = Path(__file__).resolve().parents[1] / "cases"
GROUPS = ("calibration", "held-out")


@dataclass(frozen=True)
class Case:
    """One measurement to make: its kind, its group and its settings (``model``, ``overrides``, ...)."""

    kind: str
    group: str
    settings: dict[str, Any] = field(hash=False)
    quick: bool = False

    @property
    def model(self) -> str:
        return self.settings["model"]

    @property
    def overrides(self) -> dict[str, Any]:
        return dict(self.settings.get("overrides") or {})

    def config(self) -> dict[str, Any]:
        """The resolved HF config dict: the catalog's (or ``configs.yaml``'s) config with the overrides."""
        return {**model_config(self.model), **self.overrides}

    @property
    def label(self) -> str:
        from benchmarks.harness.kinds import kind

        return kind(self.kind).label(self)

    def identity(self) -> dict[str, Any]:
        """What the measurement depends on (the cache key hashes it): kind, settings, resolved config, and
        what the kind's optional ``identity(case)`` adds."""
        from benchmarks.harness.kinds import kind

        extra = getattr(kind(self.kind), "identity", None)
        return {"kind": self.kind, "settings": self.settings, "config": self.config(),
                **(extra(self) if extra else {})}


@functools.lru_cache(maxsize=None)
def _presets(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def model_config(name: str) -> dict[str, Any]:
    """A harness-only config of ``configs.yaml``, else the catalog's config of ``name``."""
    presets = _presets(CASES_DIR / "configs.yaml")
    if name in presets:
        return dict(presets[name])
    from benchmarks.harness.models import catalog_config

    return catalog_config(name)


def load(kind: str) -> list[Case]:
    """Every case of ``cases/<kind>.yaml`` (calibration first), defaults merged in."""
    path = CASES_DIR / f"{kind}.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    unknown = set(data) - {"defaults", *GROUPS}
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {sorted(unknown)} (expected defaults, {', '.join(GROUPS)})")
    defaults = data.get("defaults") or {}
    out = []
    for group in GROUPS:
        for raw in data.get(group) or []:
            settings = {**defaults, **raw}
            quick = bool(settings.pop("quick", False))
            if "overrides" in settings:
                settings["overrides"] = dict(sorted((settings["overrides"] or {}).items()))
            out.append(Case(kind, group, settings, quick))
    labels = [c.label for c in out]
    dup = {x for x in labels if labels.count(x) > 1}
    if dup:
        raise ValueError(f"{path}: duplicate cases {sorted(dup)}")
    return out


def model_label(case: Case) -> str:
    """``llama-2-7b fp32 sdpa ckpt=none s=512 b=1 [method] [key=value overrides]`` (the docs' row name)."""
    s = case.settings
    extra = "" if s.get("method", "full") == "full" else f" {s['method']}"
    ov = "".join(f" {k}={v}" for k, v in case.overrides.items())
    return f"{s['model']} {s['mode']} {s['attn']} ckpt={s.get('ckpt', 'none')} s={s['seq']} b={s['batch']}{extra}{ov}"


def canonical(obj: Any) -> str:
    """Canonical JSON (sorted keys, no spaces): what hashes see."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
