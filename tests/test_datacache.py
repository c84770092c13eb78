"""advisor.datacache: a cached parse is exactly a fresh one, an edit is a miss, errors are never cached."""

from __future__ import annotations

import json
import os
import time

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


def _entry(name: str, cache, age_days: float, size: int = 10):
    path = cache / name
    path.write_text("0" * size)
    stamp = time.time() - age_days * 86400
    os.utime(path, (stamp, stamp))
    return path


def test_a_write_prunes_old_and_least_recently_used_entries(cache, monkeypatch):
    """The folder stays bounded: unused for MAX_AGE_DAYS is deleted (an older code version's entries), beyond
    MAX_ENTRIES the least recently used go (a hit counts as a use), interrupted writes' temporaries go, and
    nothing else in the folder is touched; once per process (a second write scans no more)."""
    cache.mkdir()
    monkeypatch.setattr(datacache, "MAX_ENTRIES", 3)
    monkeypatch.setattr(datacache, "_pruned", set())
    stale = _entry("allocator-old.json", cache, datacache.MAX_AGE_DAYS + 1)
    oldest, older, newer = (_entry(f"t-{i}.json", cache, age) for i, age in enumerate((3, 2, 1)))
    torn_tmp = _entry(".t-x-1.tmp", cache, 1)
    fresh_tmp = _entry(".t-y-2.tmp", cache, 0)
    other = _entry("notes.txt", cache, 400)
    assert datacache.cached("hit", (b"h",), lambda: 1) == 1            # a write: the first prune (nothing over)
    assert not stale.exists() and not torn_tmp.exists() and fresh_tmp.exists() and other.exists()
    hit = next(cache.glob("hit-*.json"))
    stamp = time.time() - 5 * 86400                                      # ... then long unused,
    os.utime(hit, (stamp, stamp))
    assert datacache.cached("hit", (b"h",), lambda: 2) == 1             # ... and read: used now
    monkeypatch.setattr(datacache, "_pruned", set())                    # a new process
    assert datacache.cached("new", (b"n",), lambda: 3) == 3
    left = {p.name for p in cache.glob("*.json")}
    assert left == {hit.name, newer.name, older.name, next(cache.glob("new-*.json")).name}
    assert not oldest.exists() and other.exists()
    _entry("t-9.json", cache, 0)
    datacache.cached("again", (b"a",), lambda: 4)                        # same process: no second scan
    assert len(list(cache.glob("*.json"))) == 6


def test_prune_keeps_the_most_recent_entries_within_the_byte_cap(cache, monkeypatch):
    cache.mkdir()
    monkeypatch.setattr(datacache, "MAX_BYTES", 250)
    old, mid, new = (_entry(f"t-{i}.json", cache, age, size=100) for i, age in enumerate((3, 2, 1)))
    assert datacache.prune(cache) == 1
    assert not old.exists() and mid.exists() and new.exists()


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


# ---------------------------------------------------------------- computed results (the allocator simulation)

def test_canonical_text_changes_with_every_field_and_refuses_unknown_types():
    from advisor.memory.allocator import StateLayout
    from advisor.specs import HardwareSpec

    hw = HardwareSpec(gpus_per_node=4, vram_bytes=24 << 30)
    assert datacache.canonical(hw) == datacache.canonical(HardwareSpec(gpus_per_node=4, vram_bytes=24 << 30))
    assert datacache.canonical(hw) != datacache.canonical(hw.model_copy(update={"gpus_per_node": 8}))
    layout = StateLayout(grads_layer=(1, 2))
    assert datacache.canonical(layout) != datacache.canonical(StateLayout(grads_layer=(2, 1)))
    assert datacache.canonical(layout) != datacache.canonical(StateLayout(lazy_layer=(1, 2)))
    assert datacache.canonical((1, "1")) != datacache.canonical((1, 1))
    with pytest.raises(TypeError):
        datacache.canonical(object())


def test_code_fingerprint_covers_every_source_and_data_file(cache, tmp_path, monkeypatch):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "b.py").write_text("y = 2\n")
    (pkg / "sub" / "c.yaml").write_text("k: 1\n")
    monkeypatch.setattr(datacache, "_PACKAGE", pkg)

    def fingerprint():
        datacache.code_fingerprint.cache_clear()
        return datacache.code_fingerprint()

    try:
        first = fingerprint()
        assert fingerprint() == first and any(cache.glob("code-*.json"))         # the stat-keyed entry
        (pkg / "sub" / "b.py").write_text("y = 22\n")
        second = fingerprint()
        assert second != first
        (pkg / "sub" / "c.yaml").write_text("k: 2\n")
        os.utime(pkg / "sub" / "c.yaml", ns=(1, 1))                    # same size, another mtime: a miss too
        third = fingerprint()
        assert third not in (first, second)
        monkeypatch.setenv("DSADVISE_CACHE_DIR", "off")                # the cached hash is the hash of the bytes
        assert fingerprint() == third
    finally:
        datacache.code_fingerprint.cache_clear()


def test_a_cached_allocator_simulation_equals_a_fresh_one(cache):
    # The real search's simulation of a 7B model: the value read back from the cache file is the one the
    # simulation computes, and a different layout is a different entry.
    from dataclasses import replace

    from advisor.api import build_hardware, build_training
    from advisor.catalog.models import resolve_model
    from advisor.memory import allocator
    from advisor.memory.activations import allocation_key

    arch = resolve_model("llama-2-7b").architecture
    hw = build_hardware(gpus=1, vram=80)
    training = build_training(hw, seq_len=512, checkpointing="full")
    trace_training, ckpt = allocation_key(arch, training)
    layout = allocator.StateLayout(grads_layer=(1 << 20,) * 4, grads_end=(1 << 24,))
    args = (arch, trace_training, "autocast-bf16", ckpt, arch.num_layers, layout, False)
    fresh = allocator._churn_stats.__wrapped__.uncached(*args)
    allocator._churn_stats.cache_clear()
    assert allocator._churn_stats(*args) == fresh                  # computed, written
    assert len(list(cache.glob("allocator-*.json"))) == 1
    allocator._churn_stats.cache_clear()
    assert allocator._churn_stats(*args) == fresh                  # read back from the file
    other = replace(layout, grads_end=(1 << 25,))
    allocator._churn_stats.cache_clear()
    assert allocator._churn_stats(*args[:5], other, False) == allocator._churn_stats.__wrapped__.uncached(
        *args[:5], other, False)
    assert len(list(cache.glob("allocator-*.json"))) == 2


def test_a_cached_activation_replay_equals_a_fresh_one(cache):
    from advisor.api import build_hardware, build_training
    from advisor.catalog.models import resolve_model
    from advisor.memory import activations

    arch = resolve_model("llama-2-7b").architecture
    training = activations._trace_key(build_training(build_hardware(gpus=1, vram=80), seq_len=256))
    args = (arch, training, "autocast-bf16", "none")
    fresh = activations._traced.__wrapped__.uncached(*args)
    for _ in range(2):                                             # computed and written, then read back
        activations._traced.cache_clear()
        assert activations._traced(*args) == fresh and fresh["per_layer"] > 0
    assert len(list(cache.glob("replay-*.json"))) == 1


def test_the_cached_catalog_equals_a_fresh_build(cache):
    # Every catalog model read back from the cache equals the one built from models.yaml through the
    # family registry, including the architecture's source (excluded from its JSON dump).
    from advisor.catalog import models

    fresh = models._catalog.__wrapped__.uncached()
    try:
        for _ in range(2):                                         # built and written, then read back
            models._catalog.cache_clear()
            cached = models._catalog()
            assert cached == fresh and len(cached) >= 60
            assert [m.architecture.source_config for m in cached] == [m.architecture.source_config for m in fresh]
        assert len(list(cache.glob("catalog-*.json"))) == 1
    finally:
        models._catalog.cache_clear()


@pytest.mark.parametrize("strategy", ["zero2", "fsdp-full"])
def test_an_estimate_through_the_cache_equals_one_without_it(cache, monkeypatch, strategy):
    # End to end: the allocator simulations (DeepSpeed's churn, FSDP's pool) and the replay read back from
    # the cache files give the estimate computed with the cache off.
    from advisor.api import estimate
    from advisor.catalog import models
    from advisor.memory import activations, allocator

    def fresh_estimate():
        for fn in (allocator._churn_stats, allocator._fsdp_default_pool_stats, activations._traced, models._catalog):
            fn.cache_clear()
        return estimate("qwen2.5-0.5b", gpus=2, vram=80, strategy=strategy, seq_len=512).to_json_dict()

    monkeypatch.setenv("DSADVISE_CACHE_DIR", "off")
    off = fresh_estimate()
    monkeypatch.setenv("DSADVISE_CACHE_DIR", str(cache))
    assert fresh_estimate() == off                                  # computed and written
    assert any(cache.glob("allocator-*.json")) and any(cache.glob("replay-*.json"))
    assert fresh_estimate() == off                                  # read back
    assert off["per_gpu"]["reserved"] > off["per_gpu"]["allocated"] > 0
    simulated = allocator._fsdp_default_pool_stats if strategy == "fsdp-full" else allocator._churn_stats
    assert simulated.cache_info().currsize > 0                     # the path under test was taken


def test_prune_bounds_the_clis_compiled_code_files_too(cache):
    """The CLI's compiled-code files (advisor/cli/codecache.py) age out like entries: one of a Python no longer
    used goes after MAX_AGE_DAYS, a recent one stays; other files in the folder are not touched."""
    cache.mkdir()
    old = _entry("pycode-estimate-cpython-39-3.9.18-O0.marshal", cache, datacache.MAX_AGE_DAYS + 1)
    recent = _entry("pycode-estimate-cpython-311-3.11.9-O0.marshal", cache, 2)
    foreign = _entry("notes.marshal", cache, 400)
    assert datacache.prune(cache) == 1
    assert not old.exists() and recent.exists() and foreign.exists()
