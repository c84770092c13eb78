"""Running a kind's worker in 2 CPU processes under torchrun (gloo) and reading rank 0's result line; running a
script's own worker as the 2 ranks of a gloo world and reading the JSON file it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
_MARK = "RESULT "


def report(result: dict[str, Any]) -> None:
    """Rank 0: hand ``result`` to the launching process (one line on stdout)."""
    print(_MARK + json.dumps(result), flush=True)


def launch(module: str, args: list[str], *, port_base: int, timeout: int, nproc: int = 2,
           env: dict[str, str] | None = None) -> dict[str, Any]:
    """``torchrun --nproc_per_node nproc -m module args`` (one OpenMP thread each, the repository importable);
    the last result line :func:`report` printed. Raises RuntimeError with stderr's tail when none came."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1",
                "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
                **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
           str(port_base + os.getpid() % 1000), "-m", module, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_MARK)]
    if proc.returncode or not lines:
        raise RuntimeError(f"torchrun failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(_MARK):])


def run_ranks(script: str, args: list[str], *, port: int, timeout: int, what: str) -> dict[str, Any]:
    """``python script --worker *args OUT`` as ranks 0 and 1 of a world of 2 (``env://`` on 127.0.0.1:``port``, one
    OpenMP thread each); the JSON the workers wrote to OUT (a temporary file). Exits with one line naming ``what``
    when a worker fails or the two outlast ``timeout`` seconds (then both are killed)."""
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "result.json")
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", OMP_NUM_THREADS="1")
        procs = [subprocess.Popen([sys.executable, script, "--worker", *args, out],
                                  env=dict(env, RANK=str(r), LOCAL_RANK=str(r))) for r in range(2)]
        try:
            rcs = [p.wait(timeout=timeout) for p in procs]
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise SystemExit(f"the {what} did not finish in {timeout // 60} minutes (a worker failed and the other "
                             "waits?)")
        if any(rcs):
            raise SystemExit(f"workers failed: {rcs}")
        return json.loads(Path(out).read_text())
