"""The tracer's disk cache (advisor/trace/cache.py): keyed by the tracer's code and the library versions, with no
version to bump by hand. Light: a stand-in build function, no torch."""

from __future__ import annotations

import shutil

import pytest

from advisor.trace import cache
from advisor.trace.result import TracedParameters, TraceSettings

COUNTS = dict(total=1000, trainable=1000, embedding=100, lm_head=100, per_layer=(400, 400), largest_module=400,
              active_per_token=1000)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("DSADVISE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _lookup(calls: list, cfg=None, settings=None) -> TracedParameters:
    def build():
        calls.append(1)
        return TracedParameters(**COUNTS)

    return cache.cached_trace("trace-params", cfg or {"model_type": "llama"}, settings or TraceSettings(seq_len=8),
                              TracedParameters, build)


def test_a_stored_trace_is_read_back_equal_and_any_input_is_a_new_key(folder):
    calls: list = []
    first = _lookup(calls)
    assert _lookup(calls) == first == TracedParameters(**COUNTS) and calls == [1]
    assert len(list(folder.glob("trace-params-*.json"))) == 1
    _lookup(calls, cfg={"model_type": "llama", "hidden_size": 64})
    _lookup(calls, settings=TraceSettings(seq_len=16))
    assert calls == [1, 1, 1]


def test_the_key_follows_library_versions_and_the_tracer_code(folder, monkeypatch, tmp_path):
    calls: list = []
    _lookup(calls)
    versions = cache.library_versions()
    assert set(versions) == {"torch", "transformers", "peft", "tracer"} and versions["tracer"] == cache.code_hash()[:16]
    monkeypatch.setattr(cache, "library_versions", lambda: {**versions, "transformers": "9.9.9"})
    _lookup(calls)
    assert calls == [1, 1]                                 # an upgraded library is a miss
    monkeypatch.undo()
    monkeypatch.setenv("DSADVISE_CACHE_DIR", str(folder))
    _lookup(calls)
    assert calls == [1, 1]                                 # back to the installed versions: the first entry again

    # an edit of any tracer module changes the code hash (hence every key)
    copy = tmp_path / "trace"
    shutil.copytree(cache._FOLDER, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache, "_FOLDER", copy)
    cache.code_hash.cache_clear()
    try:
        same = cache.code_hash()
        (copy / "tracer.py").write_text((copy / "tracer.py").read_text() + "\n# an edit\n")
        cache.code_hash.cache_clear()
        assert cache.code_hash() != same
    finally:
        cache.code_hash.cache_clear()


def test_off_means_no_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("DSADVISE_CACHE_DIR", "off")
    calls: list = []
    _lookup(calls)
    _lookup(calls)
    assert calls == [1, 1]
