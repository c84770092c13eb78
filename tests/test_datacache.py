"""advisor.datacache: a cached parse is exactly a fresh one, an edit is a miss, errors are never cached."""

from __future__ import annotations

import json

import pytest

from advisor import datacache
from advisor.datafiles import DATA_DIR, parse_yaml


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("DSADVISE_CACHE_DIR", str(folder))
    return folder


def test_a_hit_returns_what_the_build_returned_and_does_not_build_again(cache):
    calls = []

    def build():
        calls.append(1)
        return {"a": [1, 2.5, "x", None, True]}

    first = datacache.cached("t", (b"content",), build)
    second = datacache.cached("t", (b"content",), build)
    assert first == second == {"a": [1, 2.5, "x", None, True]} and calls == [1]
    assert len(list(cache.glob("t-*.json"))) == 1


def test_changed_content_is_a_new_key(cache):
    assert datacache.cached("t", (b"v1",), lambda: 1) == 1
    assert datacache.cached("t", (b"v2",), lambda: 2) == 2
    assert datacache.cached("t", (b"v1",), lambda: 3) == 1


def test_a_failing_build_writes_nothing(cache):
    def bad():
        raise ValueError("invalid")

    with pytest.raises(ValueError):
        datacache.cached("t", (b"x",), bad)
    assert not cache.exists() or not list(cache.glob("t-*"))


def test_a_torn_entry_is_rebuilt(cache):
    datacache.cached("t", (b"x",), lambda: {"k": 1})
    (entry,) = cache.glob("t-*.json")
    entry.write_text('{"k": ', encoding="utf-8")
    assert datacache.cached("t", (b"x",), lambda: {"k": 2}) == {"k": 2}
    assert json.loads(entry.read_text(encoding="utf-8")) == {"k": 2}


def test_values_json_would_change_are_not_cached(cache):
    assert datacache.cached("t", (b"x",), lambda: {1: "int key"}) == {1: "int key"}
    assert not cache.exists() or not list(cache.glob("t-*.json"))


def test_off_and_unwritable(tmp_path, monkeypatch):
    monkeypatch.setenv("DSADVISE_CACHE_DIR", "off")
    assert datacache.cache_dir() is None and datacache.cached("t", (b"x",), lambda: 5) == 5
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("DSADVISE_CACHE_DIR", str(blocker / "sub"))
    assert datacache.cached("t", (b"x",), lambda: 6) == 6


@pytest.mark.parametrize("name", ["models.yaml", "gpus.yaml", "overhead.yaml"])
def test_catalogs_read_through_the_cache_equal_a_fresh_yaml_parse(cache, name):
    from advisor.datafiles import load_data

    load_data.cache_clear()
    fresh = parse_yaml((DATA_DIR / name).read_text(encoding="utf-8"))
    assert load_data(name) == fresh            # first read: parsed, written
    load_data.cache_clear()
    assert load_data(name) == fresh            # second read: from the cache file
    assert any(cache.glob("data-*.json"))


def test_rules_from_the_cache_equal_fresh_rules_and_a_bad_file_still_fails(cache, tmp_path):
    from advisor.datafiles import bundled_dir
    from advisor.recommend.facts import CATALOG, DOMAINS
    from advisor.ruleengine import RuleError, load_rules

    root = bundled_dir("rules")
    fresh = load_rules([root], catalog=CATALOG, domains=DOMAINS, bundled_root=root)
    again = load_rules([root], catalog=CATALOG, domains=DOMAINS, bundled_root=root)   # from the cache
    assert [(r.id, r.file, r.effect, r.priority) for r in again.rules] == \
        [(r.id, r.file, r.effect, r.priority) for r in fresh.rules]
    assert again.constants == fresh.constants
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - id: x\n    when: hardware.gpus_per_node > 1\n    rejekt: nope\n")
    for _ in range(2):                         # the error is not cached: it is raised both times
        with pytest.raises(RuleError, match="bad.yaml"):
            load_rules([root, bad], catalog=CATALOG, domains=DOMAINS, bundled_root=root)
