"""dry-run owns what it starts: Ctrl+C or SIGTERM ends the whole process group (accelerate launch, its workers,
an op compile); the op cache is per environment; a build lock another process may own is never deleted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from advisor.render import dryrun


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_ctrl_c_while_waiting_ends_the_whole_process_group():
    # a launcher with a worker of its own, like accelerate launch and its ranks
    proc = subprocess.Popen(["bash", "-c", "sleep 300 & sleep 300; wait"], start_new_session=True)
    time.sleep(0.3)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        dryrun.wait_owned(proc, timeout=60)
    timer.cancel()
    deadline = time.time() + 10
    while _alive(proc.pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(proc.pid)


def test_sigterm_during_a_dry_run_unwinds_like_ctrl_c():
    code = ("import os, signal, threading, subprocess; from advisor.render import dryrun\n"
            "p = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
            "threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()\n"
            "try:\n"
            "    with dryrun._terminate_as_interrupt():\n"
            "        dryrun.wait_owned(p, 60)\n"
            "except KeyboardInterrupt:\n"
            "    print('interrupted', p.pid)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout.split()
    assert out[0] == "interrupted"
    time.sleep(0.2)
    assert not _alive(int(out[1]))


def test_the_op_cache_is_per_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    here = dryrun.extensions_dir()
    assert str(here).startswith(str(tmp_path / "dsadvise" / "torch_extensions"))
    monkeypatch.setattr(sys, "prefix", "/some/other/venv")
    assert dryrun.extensions_dir() != here
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "mine"))
    assert dryrun.extensions_dir() == tmp_path / "mine"


def test_a_build_lock_in_a_folder_the_user_chose_is_never_deleted(monkeypatch, tmp_path):
    """torch's FileBaton lock may belong to a build running right now in another process."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    lock = tmp_path / "cpu_adam" / "lock"
    lock.parent.mkdir()
    lock.write_text("")
    monkeypatch.setattr(dryrun, "BUILD_TIMEOUT", 0)       # give up at the first progress tick
    monkeypatch.setattr(dryrun, "PROGRESS_EVERY", 1)
    step = dryrun._build_cpu_adam(gpu=False, progress=lambda msg: None)
    assert lock.exists()
    assert step.status in ("fail", "pass", "skip")


def test_a_lock_left_by_a_killed_dsadvise_build_in_its_own_cache_is_removed(monkeypatch, tmp_path):
    """Holding the flock, no dsadvise build can own a lock in dsadvise's own folder: it is a killed build's."""
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    lock = dryrun.extensions_dir() / "cpu_adam" / "lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    monkeypatch.setattr(dryrun, "BUILD_TIMEOUT", 0)
    monkeypatch.setattr(dryrun, "PROGRESS_EVERY", 1)
    said = []
    dryrun._build_cpu_adam(gpu=False, progress=said.append)
    assert any("removed" in m and "interrupted dsadvise build" in m for m in said), said
    assert any("building DeepSpeed's cpu_adam op" in m for m in said), said
