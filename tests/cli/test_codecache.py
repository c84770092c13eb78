"""The CLI's start-up speed-ups keep behaviour: the compiled-code cache (advisor/cli/codecache.py) gives the code
``compile`` gives, and the parser's width is the one shutil would find."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import typing

import pytest

from advisor.cli import codecache
from advisor.cli.boundary import terminal_columns


def _point_class():
    @dataclasses.dataclass(frozen=True)
    class Point:
        x: int
        label: str = "p"
        tags: tuple = ()
    return Point


def test_cached_code_is_the_code_compile_gives(tmp_path, monkeypatch):
    monkeypatch.setenv("DSADVISE_CACHE_DIR", str(tmp_path))
    plain = _point_class()
    plain_fwd = typing.ForwardRef("dict[str, list[int]]")
    assert codecache.install("test")
    try:
        assert dataclasses.exec is not exec and typing.compile is not compile
        first = _point_class()                   # compiled, then kept
        again = _point_class()                   # from the dict
        fwd = typing.ForwardRef("dict[str, list[int]]")
        with pytest.raises(SyntaxError):
            typing.ForwardRef("1 +")
        assert codecache.save()
    finally:
        codecache.uninstall()
    assert "exec" not in vars(dataclasses) and "compile" not in vars(typing)
    for cls in (first, again):
        for name in ("__init__", "__repr__", "__eq__", "__setattr__", "__delattr__", "__hash__"):
            assert getattr(cls, name).__code__ == getattr(plain, name).__code__, name
        p = cls(1, tags=(2,))
        assert repr(p).endswith("Point(x=1, label='p', tags=(2,))") and p == cls(1, "p", (2,))
        with pytest.raises(dataclasses.FrozenInstanceError):
            p.x = 2
    assert fwd.__forward_code__ == plain_fwd.__forward_code__ and fwd == plain_fwd
    [written] = list(tmp_path.iterdir())
    assert written.name == os.path.basename(codecache.cache_file(tmp_path, "test"))


def test_a_second_run_reads_the_code_and_answers_the_same(tmp_path):
    env = {**os.environ, "DSADVISE_CACHE_DIR": str(tmp_path)}
    argv = [sys.executable, "-m", "advisor", "estimate", "--model", "7B", "--gpus", "4", "--vram", "24", "--json"]
    first = subprocess.run(argv, capture_output=True, text=True, env=env)
    path = codecache.cache_file(tmp_path, "estimate")
    assert first.returncode == 0 and os.path.exists(path), first.stderr
    written = os.stat(path).st_mtime_ns
    second = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert second.returncode == 0 and second.stdout == first.stdout
    assert os.stat(path).st_mtime_ns == written          # every text found: nothing new to write


def test_an_unreadable_cache_file_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("DSADVISE_CACHE_DIR", str(tmp_path))
    with open(codecache.cache_file(tmp_path, "test"), "wb") as f:
        f.write(b"not marshal data")
    assert codecache.install("test")
    try:
        assert _point_class()(3).x == 3
    finally:
        codecache.uninstall()


@pytest.mark.parametrize("columns", [None, "", "0", "-5", "abc", "37", "200"])
def test_parser_width_is_shutils(monkeypatch, columns):
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    assert terminal_columns() == shutil.get_terminal_size().columns


def test_reading_an_old_file_marks_it_used(tmp_path, monkeypatch):
    """A file read more than a day after it was written gets a fresh time, so datacache.prune (which deletes
    files unused for MAX_AGE_DAYS) keeps the file of the interpreter in use."""
    import time

    monkeypatch.setenv("DSADVISE_CACHE_DIR", str(tmp_path))
    path = codecache.cache_file(tmp_path, "test")
    with open(path, "wb") as f:
        f.write(codecache.marshal.dumps({}))
    stamp = time.time() - 3 * 86400
    os.utime(path, (stamp, stamp))
    assert codecache.install("test")
    codecache.uninstall()
    assert os.stat(path).st_mtime > time.time() - 3600
