"""Running a kind's worker in 2 CPU processes under torchrun (gloo) and reading rank 0's result line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
