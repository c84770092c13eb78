"""Startup benchmark: wall time of `dsadvise estimate` and `--help`, and proof that no heavy module loads.

Run: python benchmarks/startup.py [--runs 10]
Prints a table: command | median ms | min ms | heavy modules imported.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

HEAVY = ("torch", "deepspeed", "transformers", "accelerate", "textual")
COMMANDS = {
    "dsadvise --help": ["--help"],
    "dsadvise estimate --model 7B --gpus 4 --vram 24 --strategy zero3":
        ["estimate", "--model", "7B", "--gpus", "4", "--vram", "24", "--strategy", "zero3"],
    "dsadvise estimate --model llama-2-70b --gpus 8 --gpu a100-80g --strategy zero3 --json":
        ["estimate", "--model", "llama-2-70b", "--gpus", "8", "--gpu", "a100-80g", "--strategy", "zero3", "--json"],
}
PROBE = ("import sys, runpy; sys.argv = ['dsadvise'] + sys.argv[1:]\n"
         "from advisor.cli import main\n"
         "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
         "print('HEAVY=' + ','.join(m for m in %r if m in sys.modules), file=sys.stderr)" % (HEAVY,))


def run(args: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    heavy = [line[6:] for line in proc.stderr.splitlines() if line.startswith("HEAVY=")]
    return elapsed, heavy[0] if heavy else "?"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    n = ap.parse_args().runs
    print(f"{'command':<92}{'median ms':>10}{'min ms':>8}  heavy imports")
    for label, args in COMMANDS.items():
        times, heavy = [], ""
        for _ in range(n):
            t, heavy = run(args)
            times.append(t * 1000)
        print(f"{label:<92}{statistics.median(times):>10.0f}{min(times):>8.0f}  {heavy or 'none'}")


if __name__ == "__main__":
    main()
