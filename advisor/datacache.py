"""A content-keyed cache of parsed (and validated) data files, so that a command does not pay for YAML
parsing and JSON Schema validation of unchanged files on every start; and of pure computed results
(:func:`computed`: the caching-allocator simulation), keyed by their arguments and the package's code.

An entry is a JSON file named by the SHA-256 of everything its value depends on (the file bytes, the schema
bytes, the code that validated it): an edited file, schema or validator is a new key,
so a cached value is always what a fresh parse and validation would give. Errors are never cached (the
build raises, nothing is written). Where: ``$DSADVISE_CACHE_DIR``, else ``$XDG_CACHE_HOME/dsadvise``, else
``~/.cache/dsadvise``; ``DSADVISE_CACHE_DIR=off`` turns it off. A folder that cannot be written only costs
the speed-up.

The folder is bounded (:func:`prune`): a process that writes an entry first deletes the entries unused for
MAX_AGE_DAYS (those of an older code or data version are never read again) and, beyond MAX_ENTRIES files or
MAX_BYTES, the least recently used ones (a hit refreshes an entry's modification time).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
FORMAT = "1"          # bump when the layout of cached values changes
MAX_ENTRIES = 5000                # files kept; beyond, the least recently used go (a trace is ~0.1-1 MB, the rest KB)
MAX_BYTES = 512 * 1024**2         # bytes kept; beyond, the least recently used go
MAX_AGE_DAYS = 30                 # an entry unused this long is deleted
_pruned: set[Path] = set()        # folders this process has pruned (once each: a scan is a stat per entry)


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
            value = json.load(f)
    except (OSError, ValueError):      # no entry yet, unreadable, or torn: rebuild it
        pass
    else:
        _touch(path)
        return value
    value = build()
    if _json_safe(value):
        if folder not in _pruned:
            _pruned.add(folder)
            prune(folder)
        _write(folder, path, value)
    return value


def _touch(path: Path) -> None:
    """Mark an entry used now (its modification time is what :func:`prune` keeps the newest of)."""
    try:
        os.utime(path)
    except OSError:                     # a read-only cache: nothing is pruned there either
        pass


def prune(folder: Path, now: float | None = None) -> int:
    """Delete the entries of ``folder`` unused for MAX_AGE_DAYS, then the least recently used beyond MAX_ENTRIES
    files or MAX_BYTES, and temporary files an interrupted write left (older than an hour); returns how many
    files were deleted. Only the cache's own files (``*.json``, the CLI's compiled-code files ``pycode-*.marshal``
    (advisor/cli/codecache.py), ``.*.tmp``) directly in ``folder``."""
    import time

    now = time.time() if now is None else now
    entries, removed = [], 0
    try:
        with os.scandir(folder) as it:
            for e in it:
                if not e.is_file(follow_symlinks=False):
                    continue
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if e.name.endswith(".json") or (e.name.startswith("pycode-") and e.name.endswith(".marshal")):
                    entries.append((st.st_mtime, st.st_size, e.path))
                elif e.name.startswith(".") and e.name.endswith(".tmp") and st.st_mtime < now - 3600:
                    removed += _unlink(e.path)
    except OSError:
        return removed
    entries.sort(reverse=True)                     # most recently used first
    kept = kept_bytes = 0
    for mtime, size, path in entries:
        if mtime >= now - MAX_AGE_DAYS * 86400 and kept < MAX_ENTRIES and kept_bytes + size <= MAX_BYTES:
            kept, kept_bytes = kept + 1, kept_bytes + size
        else:
            removed += _unlink(path)
    return removed


def _unlink(path: str) -> int:
    try:
        os.unlink(path)
        return 1
    except OSError:
        return 0


def _write(folder: Path, path: Path, value: object) -> None:
    import tempfile     # here, not at the top: it imports shutil, bz2, lzma (a start that only reads pays none)

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


# ---------------------------------------------------------------- computed results

_PACKAGE = Path(__file__).resolve().parent
_CODE_SUFFIXES = frozenset({".py", ".yaml", ".yml", ".json"})


def _package_files(folder: Path, rel: str = "") -> list[tuple[str, os.stat_result]]:
    """(relative path, stat) of the package's sources and data files, sorted; os.scandir, not pathlib."""
    out = []
    with os.scandir(folder) as entries:
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                if e.name != "__pycache__":
                    out += _package_files(Path(e.path), f"{rel}{e.name}/")
            elif os.path.splitext(e.name)[1] in _CODE_SUFFIXES:
                out.append((rel + e.name, e.stat()))
    return sorted(out)


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """SHA-256 (hex) of every Python source and data file of the ``advisor`` package (relative path and
    bytes), once per process: part of the key of every computed result, so that any edit is a miss.

    The hash of the contents is itself cached, keyed by every file's path, size and mtime (the check
    Python's own bytecode cache makes of a source), so a start reads the files only after one changed."""
    files = _package_files(_PACKAGE)
    stats = "\n".join(f"{rel} {st.st_size} {st.st_mtime_ns}" for rel, st in files)
    return cached("code", (stats,), lambda: cache_key("code", (
        part for rel, _ in files for part in (rel, (_PACKAGE / rel).read_bytes()))))


def canonical(value: object) -> str:
    """A deterministic text of ``value`` that differs whenever any field differs: pydantic models (every field
    in ``__dict__``, excluded ones too), dataclasses, enums, tuples/lists/dicts of those, and scalars.
    Any other type raises TypeError (it could not be keyed safely)."""
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return repr(value)
    if isinstance(value, enum.Enum):
        return f"{type(value).__qualname__}.{value.name}={value.value!r}"
    if isinstance(value, (tuple, list)):
        inner = ",".join(canonical(v) for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{canonical(k)}:{canonical(v)}" for k, v in sorted(value.items(), key=repr)) + "}"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = ",".join(f"{f.name}={canonical(getattr(value, f.name))}" for f in dataclasses.fields(value))
        return f"{type(value).__module__}.{type(value).__qualname__}({fields})"
    if hasattr(type(value), "model_fields") and hasattr(value, "__dict__"):      # a pydantic model
        extra = getattr(value, "__pydantic_extra__", None) or {}
        fields = ",".join(f"{k}={canonical(v)}" for k, v in (*value.__dict__.items(), *sorted(extra.items())))
        return f"{type(value).__module__}.{type(value).__qualname__}({fields})"
    raise TypeError(f"cannot key a cached result on a {type(value).__qualname__}")


def computed(kind: str, encode: Callable[[T], object], decode: Callable[[object], T]):
    """Decorator: keep a pure function's results in the cache, keyed by :func:`canonical` of its arguments
    and :func:`code_fingerprint`. ``encode`` turns a result into plain JSON data, ``decode`` back; a
    decoded hit equals what the call would return (``tests/test_datacache.py``)."""
    def wrap(fn: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(fn)
        def call(*args, **kwargs):
            if cache_dir() is None:
                return fn(*args, **kwargs)
            parts = (code_fingerprint(), fn.__module__, fn.__qualname__,
                     *(canonical(a) for a in args), *(f"{k}={canonical(v)}" for k, v in sorted(kwargs.items())))
            return decode(cached(kind, parts, lambda: encode(fn(*args, **kwargs))))

        call.uncached = fn
        return call

    return wrap
