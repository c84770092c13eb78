"""The tracer's disk cache: traces and parameter counts kept in the dsadvise cache folder
(:mod:`advisor.datacache`: ``$DSADVISE_CACHE_DIR``, ``off`` to disable; pruned there, least recently used
first), keyed by the HF config, the settings, the installed torch / transformers / peft and a hash of the
tracer's own source files (every module of ``advisor/trace/``). An edit of the tracer or an upgrade of a
library is a miss: there is no version to bump by hand. Importing this module is light; the library
versions are read (importlib.metadata) only when a trace is looked up.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from advisor import datacache

M = TypeVar("M", bound=BaseModel)
_FOLDER = Path(__file__).resolve().parent
LIBRARIES = ("torch", "transformers", "peft")       # the libraries whose code a trace runs


@functools.lru_cache(maxsize=1)
def code_hash() -> str:
    """SHA-256 (hex) of the tracer's sources: every ``.py`` file of ``advisor/trace/`` (name and bytes)."""
    files = sorted(_FOLDER.glob("*.py"))
    return datacache.cache_key("tracer-code", (part for f in files for part in (f.name, f.read_bytes())))


def installed_version(pkg: str) -> str:
    """The installed version of distribution ``pkg``, or ``absent``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return "absent"


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    """What a trace depends on besides its inputs: the libraries' versions and the tracer's code hash (16 hex)."""
    return {p: installed_version(p) for p in LIBRARIES} | {"tracer": code_hash()[:16]}


def cached_trace(kind: str, cfg: dict, settings: BaseModel, model: type[M], build: Callable[[], M],
                 use_cache: bool = True) -> M:
    """``build()``'s result, read from the cache when one was stored for this ``kind``, config, settings,
    library versions and tracer code (validated back into ``model``); stored after a miss."""
    if not use_cache:
        return build()
    parts = (json.dumps(library_versions(), sort_keys=True), json.dumps(cfg, sort_keys=True, default=str),
             settings.model_dump_json())
    return model.model_validate(datacache.cached(kind, parts, lambda: build().model_dump(mode="json")))
