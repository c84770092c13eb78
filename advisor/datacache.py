"""A content-keyed cache of parsed (and validated) data files, so that a command does not pay for YAML
parsing and JSON Schema validation of unchanged files on every start.

An entry is a JSON file named by the SHA-256 of everything its value depends on (the file bytes, the schema
bytes, the code that validated it): an edited file, schema or validator is a new key,
so a cached value is always what a fresh parse and validation would give. Errors are never cached (the
build raises, nothing is written). Where: ``$DSADVISE_CACHE_DIR``, else ``$XDG_CACHE_HOME/dsadvise``, else
``~/.cache/dsadvise``; ``DSADVISE_CACHE_DIR=off`` turns it off. A folder that cannot be written only costs
the speed-up.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
FORMAT = "1"          # bump when the layout of cached values changes


def cache_dir() -> Path | None:
    """The cache folder, or None when caching is off."""
    env = os.environ.get("DSADVISE_CACHE_DIR")
    if env is not None:
        return None if env.strip().lower() in ("", "off", "0", "none") else Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dsadvise"


def cache_key(kind: str, parts: Iterable[bytes | str]) -> str:
    """SHA-256 (hex) of ``kind``, the cache format and ``parts``."""
    h = hashlib.sha256()
    for part in (kind, FORMAT, *parts):
        data = part.encode("utf-8") if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def _json_safe(value: object) -> bool:
    """True when ``value`` survives a JSON round trip unchanged (no int keys, tuples, dates, NaN...)."""
    try:
        return json.loads(json.dumps(value, allow_nan=False)) == value
    except (TypeError, ValueError):
        return False


def cached(kind: str, parts: Iterable[bytes | str], build: Callable[[], T]) -> T:
    """``build()``'s value, read from the cache when an entry for exactly these ``parts`` exists.

    ``build`` must return plain JSON data; a value that would not round-trip through JSON is returned but
    not cached. Whatever ``build`` raises propagates and nothing is written.
    """
    folder = cache_dir()
    if folder is None:
        return build()
    path = folder / f"{kind}-{cache_key(kind, parts)}.json"
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):      # no entry yet, unreadable, or torn: rebuild it
        pass
    value = build()
    if _json_safe(value):
        _write(folder, path, value)
    return value


def _write(folder: Path, path: Path, value: object) -> None:
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.stem}-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(value, f)
        os.replace(tmp, path)           # atomic: readers see no entry or the whole new one
    except OSError:                     # read-only or full disk: no cache, same answers
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
