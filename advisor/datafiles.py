"""Locating and loading the data files that ship with the package (catalogs, rules, schemas, templates)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

_PKG = Path(__file__).resolve().parent
DATA_DIR = _PKG / "data"


def bundled_dir(name: str) -> Path:
    """The top-level ``rules/`` or ``templates/`` folder: inside the wheel, else in the source checkout."""
    installed = _PKG / "_bundled" / name
    if installed.is_dir():
        return installed
    source = _PKG.parent / name
    if source.is_dir():
        return source
    raise FileNotFoundError(f"dsadvise is missing its {name}/ folder (looked in {installed} and {source})")


@lru_cache(maxsize=None)
def load_data(relative: str):
    """Parse a JSON or YAML file under ``advisor/data``; cached, so callers must not mutate the result.

    A YAML file's parse is kept in :mod:`advisor.datacache` keyed by its bytes, so an unchanged catalog
    costs a JSON read instead of importing and running the YAML parser.
    """
    path = DATA_DIR / relative
    raw = path.read_bytes()
    if path.suffix == ".json":
        return json.loads(raw)
    from .datacache import cached

    return cached("data", (relative, raw), lambda: parse_yaml(raw.decode("utf-8")))


def parse_yaml(text: str):
    """YAML text as plain data (the C loader where PyYAML has it)."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(text, Loader=loader)
