"""The committed case lists and the registry of measurement kinds."""

from __future__ import annotations

from benchmarks.harness import cases
from benchmarks.harness.kinds import kind, names


def test_every_kind_has_its_cases_split_and_labelled():
    assert names() == ["saved", "transient", "step", "ddp", "zero"]
    for name in names():
        mod = kind(name)
        assert mod.UNIT in ("GiB", "MiB")
        loaded = cases.load(name)
        groups = {c.group for c in loaded}
        assert groups == {"calibration", "held-out"}, name
        assert any(c.quick for c in loaded), name
        labels = [c.label for c in loaded]
        assert len(set(labels)) == len(labels)
        for c in loaded:
            assert c.config()["model_type"], c.label


def test_unknown_top_level_key_is_refused(tmp_path, monkeypatch):
    (tmp_path / "saved.yaml").write_text("calibrations: []\n")
    monkeypatch.setattr(cases, "CASES_DIR", tmp_path)
    try:
        cases.load("saved")
    except ValueError as exc:
        assert "calibrations" in str(exc)
    else:
        raise AssertionError("a misspelt group was accepted")
