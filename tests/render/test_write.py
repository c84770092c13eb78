"""Writes are atomic (temp file in the same folder + os.replace) and never clobber a non-empty folder
without --force."""

from __future__ import annotations

import os
import stat

import pytest

from advisor.cli import main
from advisor.render import write as write_mod
from advisor.render.write import OutputExistsError, write_files

GEN = ["generate", "--model", "gpt2", "--gpus", "2", "--vram", "24", "--strategy", "zero2", "--no-engine-check"]


def test_refuses_non_empty_dir_without_force(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    rc = main(GEN + ["--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "not empty" in err and "--force" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


def test_writes_into_empty_or_new_dir_and_force_overwrites(tmp_path, capsys):
    out = tmp_path / "new" / "deeper"
    assert main(GEN + ["--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"accelerate_config.yaml", "ds_config.json", "launch_accelerate.sh", "README.md"} <= names
    assert os.stat(out / "launch_accelerate.sh").st_mode & stat.S_IXUSR
    assert not os.stat(out / "ds_config.json").st_mode & stat.S_IXUSR
    (out / "mine.txt").write_text("keep me")
    # Re-render as FSDP with --force: the stale ds_config.json / launch_deepspeed.sh go, user files stay.
    fsdp = [a if a != "zero2" else "fsdp-full" for a in GEN]
    assert main(fsdp + ["--out", str(out), "--force"]) == 0
    names = {p.name for p in out.iterdir()}
    assert "ds_config.json" not in names and "launch_deepspeed.sh" not in names
    assert (out / "mine.txt").read_text() == "keep me"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]   # no temp files left


def test_out_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(GEN + ["--out", str(f)]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_atomic_replace_failure_leaves_old_files_and_no_temps(tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_files({"a.txt": "old a", "b.txt": "old b"}, out)
    calls = []
    real = os.replace

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(write_mod.os, "replace", flaky)
    with pytest.raises(OutputExistsError, match="No space left"):
        write_files({"a.txt": "new a", "b.txt": "new b"}, out, force=True)
    # Every file is either the old or the new version, never partial; no temp files remain.
    assert (out / "a.txt").read_text() in ("old a", "new a")
    assert (out / "b.txt").read_text() == "old b"
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "b.txt"]


def test_write_goes_through_a_temp_file_in_the_same_folder(tmp_path, monkeypatch):
    seen = []
    real = os.replace

    def spy(src, dst):
        seen.append((os.path.dirname(src), os.path.basename(src), dst))
        assert os.path.getsize(src) == len("content")        # complete before it gets its final name
        return real(src, dst)

    monkeypatch.setattr(write_mod.os, "replace", spy)
    write_files({"x.json": "content"}, tmp_path / "o")
    (folder, base, dst), = seen
    assert folder == str(tmp_path / "o") and base.startswith(".x.json.") and str(dst).endswith("x.json")


@pytest.mark.parametrize("bad", ["../x", "a/b", ".hidden", ""])
def test_unsafe_names_refused(tmp_path, bad):
    with pytest.raises(ValueError):
        write_files({bad: "x"}, tmp_path / "o")
