"""The result cache: what its key depends on, and the report's refusal of stale or missing measurements."""

from __future__ import annotations

import shutil

import pytest

from benchmarks.harness import cache, cases, cli
from benchmarks.harness.cases import Case


def _copy_harness(tmp_path, monkeypatch):
    src = cache.HARNESS_DIR
    dst = tmp_path / "harness"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache, "HARNESS_DIR", dst)
    return dst


def _edit(path, old, new):
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))
    cache._harness_hash.cache_clear()   # the hash is computed once per process; these edits stand for a new one


def test_key_follows_the_measuring_code_only(tmp_path, monkeypatch):
    h = _copy_harness(tmp_path, monkeypatch)
    before = {k: cache.harness_hash(k) for k in ("saved", "step", "zero")}
    # comments, docstrings, the docs writer and a kind's presentation/estimator side change no key
    _edit(h / "semantics.py", "# CUDA's lower-precision ops", "# (edited comment) CUDA's lower-precision ops")
    _edit(h / "semantics.py", '"""The innermost', '"""(edited docstring) The innermost')
    _edit(h / "tables.py", "LOW, HIGH = -0.03, 0.10", "LOW, HIGH = -0.05, 0.10")
    _edit(h / "kinds" / "saved.py", 'TITLE = "Saved activations"', 'TITLE = "Saved bytes"')
    _edit(h / "kinds" / "saved.py", "    arch = architecture(case)\n", "    arch = architecture(case)  # edited\n    _ = 1\n")
    assert {k: cache.harness_hash(k) for k in before} == before
    # code a measurement runs: every kind that uses it gets a new key
    _edit(h / "semantics.py", "_LOW = (torch.bfloat16, torch.float16)", "_LOW = (torch.float16, torch.bfloat16)")
    after = {k: cache.harness_hash(k) for k in before}
    assert all(after[k] != before[k] for k in before)
    # a kind's own measuring code: only that kind
    _edit(h / "kinds" / "saved.py", "input_ids = torch.randint(0, vocab, (batch, seq_len), generator=g)",
          "input_ids = torch.randint(0, vocab, (batch, seq_len), generator=g) + 0")
    again = {k: cache.harness_hash(k) for k in before}
    assert again["saved"] != after["saved"] and again["step"] == after["step"] and again["zero"] == after["zero"]


def test_key_follows_library_versions_and_the_case(monkeypatch):
    case = cases.load("saved")[0]
    parts = cache.key_parts(case)
    key = cache.key_of(parts)
    assert set(parts["versions"]) == {"torch", "transformers", "deepspeed", "accelerate"}
    entry = {"key": key, **parts}
    assert cache.status(case, {case.label: entry}).state == "fresh"
    for lib in ("torch", "transformers", "deepspeed", "accelerate"):
        real = cache.versions()
        monkeypatch.setattr(cache, "versions", lambda lib=lib, real=real: {**real, lib: "0.0.1"})
        assert cache.key_of(cache.key_parts(case)) != key
        st = cache.status(case, {case.label: entry})
        assert st.state == "stale" and f"{lib} {real[lib]} -> 0.0.1" in st.why
        monkeypatch.undo()
    other = Case(case.kind, case.group, {**case.settings, "overrides": {"vocab_size": 1000}})
    assert cache.key_of(cache.key_parts(other)) != key
    # the resolved config is part of the identity: a catalog config change is a case change
    changed = {**parts, "case": {**parts["case"], "config": {**parts["case"]["config"], "hidden_size": 1}}}
    st = cache.status(case, {case.label: {**entry, "key": cache.key_of(changed), **changed}})
    assert st.state == "stale" and "config: hidden_size" in st.why
    # moving a case between groups is not a new measurement
    assert cache.key_of(cache.key_parts(Case(case.kind, "held-out", case.settings))) == key


def _stored(case: Case, results, **measured) -> dict:
    """A cache entry for ``case`` under the current key, holding ``measured`` (these tests exercise the
    cache and the report, not a measurement)."""
    entries = cache.load(case.kind, results)
    entry = cache.measure_into(case, entries, lambda c: {**measured, "cuda_semantics": {"patches": []}})
    cache.save(case.kind, entries, results)
    return entry


def test_report_refuses_stale_and_missing_cases(tmp_path, capsys):
    fresh, stale = cases.load("saved")[:2]
    _stored(fresh, tmp_path, fixed=111_111_111, per_layer=22_222_222, logits_held=0, weight_copies=0)
    entry = _stored(stale, tmp_path, fixed=999_999_999, per_layer=77_777_777, logits_held=0, weight_copies=0)
    entries = cache.load("saved", tmp_path)
    entries[stale.label] = {**entry, "key": "0" * 16, "versions": {**entry["versions"], "torch": "1.0.0"}}
    cache.save("saved", entries, tmp_path)

    assert cli.main(["--results", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"stale   saved: {stale.label} (torch 1.0.0 -> " in err
    assert f"missing saved: {cases.load('saved')[2].label} (not in the cache)" in err
    assert f"saved: {fresh.label}" not in err

    doc = tmp_path / "accuracy.md"
    assert cli.main(["--results", str(tmp_path), "--partial", "--write", str(doc)]) == 0
    text = doc.read_text()
    row = next(line for line in text.splitlines() if line.startswith(f"| {fresh.label} |"))
    layers = 32  # llama-2-7b
    assert f"| {(111_111_111 + layers * 22_222_222) / 2**30:.3f} |" in row
    assert f"| {stale.label} |" not in text                       # no number for a stale case
    assert f"* calibration: {stale.label} (torch 1.0.0 -> " in text
    assert "**1 of " in text


def test_an_entry_without_semantics_record_is_refused(tmp_path):
    case = cases.load("saved")[0]
    with pytest.raises(RuntimeError, match="no cuda_semantics record"):
        cache.measure_into(case, {}, lambda c: {"fixed": 1, "per_layer": 1})
