"""Compiled code that every ``dsadvise`` start would compile again: the methods :mod:`dataclasses` generates
and the forward references :mod:`typing` compiles, kept between runs of a command (one file per command).

For each dataclass, ``dataclasses`` writes the source of ``__init__``, ``__repr__``, ``__eq__`` ... and runs
``exec`` on it (CPython 3.11: one ``exec`` per method); ``typing.ForwardRef`` compiles each annotation given as
a string. An ``estimate`` creates ~70 dataclasses (~50 of them pydantic's and annotated_types' at import, the
memory and step-time models' the rest: ~300 generated methods) and ~750 forward references (pydantic_core's
core-schema TypedDicts). Compiling them is a quarter of the work of an ``estimate`` (2026-11-30, valgrind
--tool=cachegrind, instructions: 693M without this cache, 516M with it; bare ``python -c pass`` 43M) and took it
from ~11-12.6x to ~9.9x the CPU time of bare python on this project's shared 2-core machine
(benchmarks/startup.py and runs of both trees interleaved, medians of 15).

:func:`install` (the CLI does it for the command it runs, never when the package is imported) points those two
call sites, ``dataclasses.exec`` and ``typing.compile`` (module globals that shadow the builtins), at a dict from
(mode, filename, source text) to the code object ``compile`` returns for exactly that text. The code is the
same: an entry is what ``compile(source, filename, mode)`` gives without inherited ``__future__`` flags (neither
module has any), per interpreter version and optimization level (the file's name holds both); a text not in the
dict is compiled as before and added; a syntax error is raised as before and not kept. :func:`save` writes the
dict when the run added entries (atomically: readers see the old file or the new one), in the data cache's
folder (:func:`advisor.datacache.cache_dir`; ``DSADVISE_CACHE_DIR=off``: no file, nothing installed). A file that
cannot be read, is not such a dict or is owned by another user is ignored (its code objects would run as the
command's own, as a ``__pycache__`` file's would); one that cannot be written only costs the speed-up. The files
are bounded with the data cache's entries (:func:`advisor.datacache.prune`: a file unused for its MAX_AGE_DAYS,
e.g. that of a Python no longer installed, is deleted); a read refreshes the file's time at most once a day.
"""

import builtins
import marshal
import os
import sys
import time

MAX_ENTRIES = 20_000       # beyond, a save keeps only the entries this run used (texts of older code versions go)

_code: dict = {}           # (mode, filename, source) -> code object
_used: set = set()         # keys this run looked up
_state = {"path": None, "dirty": False, "installed": False}


def _compiled(source: str, filename: str, mode: str):
    """The code object ``compile(source, filename, mode)`` gives (no inherited future flags), from the dict."""
    key = (mode, filename, source)
    _used.add(key)
    code = _code.get(key)
    if code is None:
        code = _code[key] = builtins.compile(source, filename, mode, dont_inherit=True)
        _state["dirty"] = True
    return code


def _exec(source, globals=None, locals=None, /, **kwargs):
    """``exec`` as ``dataclasses`` calls it, with the compiled text taken from the dict."""
    if globals is None:                      # exec's own defaults: the caller's namespaces
        frame = sys._getframe(1)
        globals = frame.f_globals
        if locals is None:
            locals = frame.f_locals
    if isinstance(source, str) and not kwargs:
        source = _compiled(source, "<string>", "exec")
    return builtins.exec(source, globals, locals, **kwargs)


def _compile(source, filename, mode, flags=0, dont_inherit=False, optimize=-1, **kwargs):
    """``compile`` as ``typing`` calls it (no flags: typing.py has no ``__future__`` import to inherit)."""
    if isinstance(source, str) and isinstance(filename, str) and flags == 0 and optimize == -1 and not kwargs:
        return _compiled(source, filename, mode)
    return builtins.compile(source, filename, mode, flags, True, optimize, **kwargs)


def cache_file(folder, command: str) -> str:
    """The file of ``command`` (one per command: a start reads only what its own command compiles; the wizard's
    Textual adds thousands) for this interpreter version and optimization level in ``folder``."""
    tag = f"{sys.implementation.cache_tag}-{'.'.join(map(str, sys.version_info[:3]))}-O{sys.flags.optimize}"
    return os.path.join(folder, f"pycode-{command}-{tag}.marshal")


def install(command: str) -> bool:
    """Load ``command``'s file and route ``dataclasses``' and ``typing``'s compiling through it; False (nothing
    done) when the data cache is off."""
    import dataclasses
    import typing

    from ..datacache import cache_dir

    folder = cache_dir()
    if folder is None:
        return False
    path = cache_file(folder, command)
    if _state["installed"] and _state["path"] == path:
        return True
    try:
        with open(path, "rb") as f:
            # code is run from this file as from a __pycache__ file: only from one this user owns
            st = os.fstat(f.fileno())
            mine = not hasattr(os, "getuid") or st.st_uid == os.getuid()
            loaded = marshal.loads(f.read()) if mine else None
        if loaded is not None and st.st_mtime < time.time() - 86400:
            os.utime(path)        # used: datacache.prune keeps it (refreshed at most daily, not every start)
    except (OSError, ValueError, EOFError, TypeError):
        loaded = None
    if isinstance(loaded, dict):
        _code.update(loaded)
    _state["path"] = path
    dataclasses.exec = _exec
    typing.compile = _compile
    _state["installed"] = True
    return True


def uninstall() -> None:
    """Give ``dataclasses`` and ``typing`` the builtins back (tests)."""
    import dataclasses
    import typing

    for module, name, hook in ((dataclasses, "exec", _exec), (typing, "compile", _compile)):
        if module.__dict__.get(name) is hook:
            delattr(module, name)
    _state["installed"] = False


def save() -> bool:
    """Write the dict to the file when this run added entries; True when written."""
    path = _state["path"]
    if path is None or not _state["dirty"]:
        return False
    keep = _code if len(_code) <= MAX_ENTRIES else {k: v for k, v in _code.items() if k in _used}
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}-{os.getpid()}.tmp")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(marshal.dumps(keep))
        os.replace(tmp, path)             # atomic: a reader sees the old file or the new one
    except (OSError, ValueError):         # read-only or full disk; a code object marshal cannot write
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return False
    _state["dirty"] = False
    return True
