"""Startup benchmark: how long `dsadvise` commands take in a fresh interpreter, as a ratio to a bare
`python -c pass` on the same machine, and proof that no heavy module loads.

Run: python benchmarks/startup.py [--runs 10]

Prints one row per command: wall time (median and min, ms), CPU time of the process (user + system, median
ms), both as a ratio to bare Python (the median of bare runs interleaved with that row's runs), and the heavy
modules the command imported. The targets (issue 11):
`estimate` under 10x bare Python, `recommend --model 7B --gpus 4 --vram 24` under 0.4 s wall, the wizard's
first paint under 0.5 s. On a machine shared with other jobs the wall time includes waiting for a CPU; the
CPU-time column is the steadier measure there. The first row is the floor any command that validates
its input with pydantic pays (import and first model); the rest of a command is what dsadvise adds.

Each command runs once untimed first, so that the content-keyed data cache (advisor/datacache.py: parsed
catalogs and rules, and the caching-allocator simulations a search ran), the compiled code of generated
dataclass methods and forward references (advisor/cli/codecache.py) and Python's bytecode caches are warm,
as they are for a user from the second run on. The commands run with bytecode writing allowed
(PYTHONDONTWRITEBYTECODE is dropped from their environment) because an installed package has its .pyc files.
The "cold" row runs `recommend` with DSADVISE_CACHE_DIR=off: the first run on a machine (nothing cached);
set DSADVISE_CACHE_DIR=off for the whole script to measure every row that way.

Then a breakdown of one `estimate`'s CPU time (inside a fresh interpreter): the interpreter's start and exit,
pydantic's import and first model (the floor), the imports the command adds (with the time spent building
pydantic model classes and dataclasses counted apart), the parser, computation and printing, and the rest (the
exit of an interpreter holding ~40k more objects). On this project's 2-core machine (2026-11-30, load 1.5-2.5
from other jobs: ratios of CPU time) the floor is ~6.7x bare python, the imports ~2.3x (22 pydantic model
classes the command validates ~1.1x, 18 dataclasses of the memory and step-time models ~0.2x), computation and
printing ~0.5x, the exit ~0.5x: `estimate` at ~9.9-10.4x (12.2-12.6x before the compiled-code cache and the
lazy imports; both trees' runs interleaved, 21 each, at load 0.8-2.4), i.e. at the target, not below it with
room: the floor alone is ~7.5x. Under valgrind --tool=cachegrind (instructions, steady where CPU
time is not): bare python 43M, `estimate` 516M (701M before the code cache and the lazy imports of issue 11's
last pass). The floor and the validated model classes are ~8x of that; pydantic's import alone is mostly
unmarshalling its modules and building pydantic_core's ~90 TypedDicts, which no setting of ours avoids.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

HEAVY = ("torch", "deepspeed", "transformers", "accelerate", "textual", "jsonschema", "yaml", "jinja2")
COMMANDS = {
    "dsadvise --help": ["--help"],
    "dsadvise estimate --model 7B --gpus 4 --vram 24":
        ["estimate", "--model", "7B", "--gpus", "4", "--vram", "24"],
    "dsadvise estimate --model llama-2-70b --gpus 8 --gpu a100-80g --strategy zero3 --json":
        ["estimate", "--model", "llama-2-70b", "--gpus", "8", "--gpu", "a100-80g", "--strategy", "zero3", "--json"],
    "dsadvise recommend --model 7B --gpus 4 --vram 24":
        ["recommend", "--model", "7B", "--gpus", "4", "--vram", "24"],
}
ESTIMATE = "dsadvise estimate --model 7B --gpus 4 --vram 24"
RECOMMEND = "dsadvise recommend --model 7B --gpus 4 --vram 24"
FLOOR = "(floor) python -c 'import pydantic; one BaseModel' (the CLI's process settings: advisor/cli/__init__.py)"
# As the console script runs it: import advisor.cli, call main() on the command line (no runpy, unlike
# `python -m advisor`).
PROBE = ("import sys\n"
         "from advisor.cli import main\n"
         "try:\n    main()\nexcept SystemExit:\n    pass\n"
         "sys.stdout.flush()\n"
         "print('HEAVY=' + ','.join(m for m in %r if m in sys.modules), file=sys.stderr)" % (HEAVY,))
PYDANTIC_FLOOR = ("import gc, os; os.environ['PYDANTIC_DISABLE_PLUGINS'] = '__all__'\n"
                  "from advisor.cli.pydantic_plugins import skip_discovery; skip_discovery()\n"
                  "gc.set_threshold(50_000, *gc.get_threshold()[1:])\n"
                  "from advisor.cli import codecache; codecache.install('floor')\n"
                  "from pydantic import BaseModel\nclass A(BaseModel):\n    x: int\nA(x=1)\ncodecache.save()\ngc.freeze()")
# Where one `estimate` spends its time, measured inside one fresh interpreter (CPU time of the process,
# time.process_time, steadier than the wall clock on a shared machine): pydantic's import
# and first model (the floor), then the command as main() runs it, split into the time inside imports (module
# code: of which building pydantic model classes and dataclasses is counted apart) and the rest (parser, the
# estimate's computation, printing).
BREAKDOWN_PROBE = r"""
import time
t0 = time.process_time()
import builtins, dataclasses, importlib, io, contextlib, os, sys
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
from advisor.cli.pydantic_plugins import skip_discovery
skip_discovery()
from advisor.cli import codecache
codecache.install(sys.argv[1])   # as main() does before the command's imports (main's own call finds it done)
from pydantic import BaseModel
class _A(BaseModel):
    x: int
_A(x=1)
t1 = time.process_time()
acc = {"import": 0.0, "models": 0.0, "dataclasses": 0.0, "n_models": 0, "n_dataclasses": 0}
depth = [0]
def timed(fn, key, count=None):
    def wrapper(*a, **k):
        if depth[0] and key == "import":
            return fn(*a, **k)
        depth[0] += key == "import"
        t = time.process_time()
        try:
            return fn(*a, **k)
        finally:
            acc[key] += time.process_time() - t
            depth[0] -= key == "import"
            if count:
                acc[count] += 1
    return wrapper
builtins.__import__ = timed(builtins.__import__, "import")
importlib.import_module = timed(importlib.import_module, "import")
meta = type(BaseModel)
meta.__new__ = timed(meta.__new__, "models", "n_models")
dataclasses._process_class = timed(dataclasses._process_class, "dataclasses", "n_dataclasses")
from advisor.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    main()
t2 = time.process_time()
n = sum(1 for m in sys.modules if m.startswith("advisor"))
print("BREAKDOWN=%.2f,%.2f,%.2f,%.2f,%.2f,%d,%d,%d" % (1000 * (t1 - t0), 1000 * (t2 - t1), 1000 * acc["import"],
      1000 * acc["models"], 1000 * acc["dataclasses"], acc["n_models"], acc["n_dataclasses"], n), file=sys.stderr)
"""
WIZARD_PROBE = r"""
import sys, time
t0 = time.perf_counter()
from advisor.cli import codecache
codecache.install("wizard")      # as main() does for `dsadvise wizard` before the command runs
from advisor.tui.app import WizardApp

class Probe(WizardApp):
    def on_ready(self):          # posted once the first screen has been painted
        self.painted = time.perf_counter() - t0
        self.exit()

app = Probe()
app.run(headless=True, size=(120, 40))
codecache.save()
print(f"PAINT={app.painted}", file=sys.stderr)
print('HEAVY=' + ','.join(m for m in %r if m in sys.modules if m != "textual"), file=sys.stderr)
""" % (HEAVY,)


# A user's installed package has its bytecode; without it every start recompiles the package's sources.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
COLD_ENV = {**ENV, "DSADVISE_CACHE_DIR": "off"}


def run(argv: list[str], env: dict | None = None) -> tuple[float, float, str, str]:
    """(wall s, CPU s, heavy modules, stderr) of one fresh interpreter running ``argv``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env or ENV)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    heavy = [line[6:] for line in proc.stderr.splitlines() if line.startswith("HEAVY=")]
    return wall, cpu, heavy[0] if heavy else "-", proc.stderr


def measure(argv: list[str], n: int, env: dict | None = None,
            bare: tuple[list[float], list[float]] | None = None) -> tuple[list[float], list[float], str, str]:
    """``n`` timed runs of ``argv`` after one untimed; with ``bare``, a bare ``python -c pass`` runs before each,
    its (wall, CPU) appended there: the ratio's reference taken at the same moments (on a shared machine the
    load drifts within a minute)."""
    run(argv, env)                              # warm the caches
    walls, cpus, heavy, err = [], [], "", ""
    for _ in range(n):
        if bare is not None:
            w, c, _, _ = run(["-c", "pass"])
            bare[0].append(w)
            bare[1].append(c)
        wall, cpu, heavy, err = run(argv, env)
        walls.append(wall)
        cpus.append(cpu)
    return walls, cpus, heavy, err


def breakdown(bare_cpu: float, n: int = 7) -> None:
    """Where ``estimate``'s CPU time goes, per part (median of ``n`` fresh interpreters, ms and x bare python)."""
    rows = []
    for _ in range(n + 1):
        _, cpu, _, err = run(["-c", BREAKDOWN_PROBE, *COMMANDS[ESTIMATE]])
        line = [x for x in err.splitlines() if x.startswith("BREAKDOWN=")]
        if not line:
            print(f"breakdown probe failed: {err.strip()[-300:]}")
            return
        rows.append([float(v) for v in line[0][10:].split(",")] + [cpu * 1000])
    floor, command, imports, models, dcs, n_models, n_dcs, n_mods, cpu = (statistics.median(c) for c in zip(*rows[1:]))
    b = bare_cpu * 1000
    parts = [("interpreter start and exit (bare python -c pass)", b),
             ("pydantic import + its first model (the floor; plugin discovery skipped, compiled code cached)",
              floor),
             (f"imports the command adds (stdlib + {n_mods:.0f} advisor modules' code)", imports),
             (f"  of which building {n_models:.0f} pydantic model classes (specs, catalog, results)", models),
             (f"  of which building {n_dcs:.0f} dataclasses", dcs),
             ("parser, the estimate's computation (caches warm) and printing", command - imports),
             ("the rest: the exit of a bigger interpreter (the process's CPU time minus the parts above)",
              cpu - b - floor - command)]
    print(f"where `{ESTIMATE}` spends its CPU time (time.process_time inside the process, median of {n}; the "
          "probe's own import timers add a little to the imports):")
    for label, ms in parts:
        print(f"  {label:<86}{ms:>7.1f} ms {ms / b:>5.1f}x")
    print(f"  {'total (CPU time of the probe process)':<86}{cpu:>7.1f} ms {cpu / b:>5.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--no-wizard", action="store_true", help="skip the wizard's first-paint probe")
    n = ap.parse_args().runs
    bare_wall, bare_cpu, _, _ = measure(["-c", "pass"], n)
    bw, bc = statistics.median(bare_wall), statistics.median(bare_cpu)
    print(f"bare python -c pass: wall median {bw * 1000:.0f} ms, CPU median {bc * 1000:.0f} ms "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    print(f"{'command':<90}{'wall ms':>8}{'min':>6}{'x bare':>8}{'CPU ms':>8}{'x bare':>8}  heavy imports")
    # The floor every command that validates input pays: pydantic's import and its first model.
    rows = [(FLOOR, ["-c", PYDANTIC_FLOOR], None)]
    rows += [(label, ["-c", PROBE, *args], None) for label, args in COMMANDS.items()]
    rows.append(("(cold: DSADVISE_CACHE_DIR=off) " + RECOMMEND, ["-c", PROBE, *COMMANDS[RECOMMEND]], COLD_ENV))
    result = {}
    for label, argv, env in rows:
        ref = ([], [])                          # bare runs interleaved with this row's: its own reference
        walls, cpus, heavy, _ = measure(argv, n, env, ref)
        w, c = statistics.median(walls), statistics.median(cpus)
        rw, rc = statistics.median(ref[0]), max(statistics.median(ref[1]), 1e-3)
        result[label] = (w, c / rc)
        print(f"{label:<90}{w * 1000:>8.0f}{min(walls) * 1000:>6.0f}{w / rw:>8.1f}{c * 1000:>8.0f}"
              f"{c / rc:>8.1f}  {heavy or 'none'}")
    paint = []
    if not ap.parse_args().no_wizard:
        ref = ([], [])
        walls, cpus, heavy, err = measure(["-c", WIZARD_PROBE], max(3, n // 3), None, ref)
        rw, rc = statistics.median(ref[0]), max(statistics.median(ref[1]), 1e-3)
        paint = [float(line[6:]) for line in err.splitlines() if line.startswith("PAINT=")]
        print(f"{'dsadvise wizard: first paint ' + (f'{paint[0] * 1000:.0f} ms after start' if paint else '?'):<90}"
              f"{statistics.median(walls) * 1000:>8.0f}{min(walls) * 1000:>6.0f}{statistics.median(walls) / rw:>8.1f}"
              f"{statistics.median(cpus) * 1000:>8.0f}{statistics.median(cpus) / rc:>8.1f}  "
              f"{heavy or 'none'}")

    breakdown(bc)
    print(f"targets (issue 11): estimate CPU {result[ESTIMATE][1]:.1f}x bare (target < 10; the pydantic floor "
          f"alone is {result[FLOOR][1]:.1f}x); recommend wall {result[RECOMMEND][0]:.2f} s (target < 0.4 s; "
          f"cold {result['(cold: DSADVISE_CACHE_DIR=off) ' + RECOMMEND][0]:.2f} s)"
          + (f"; wizard first paint {paint[0]:.2f} s (target < 0.5 s)" if paint else ""))


if __name__ == "__main__":
    main()
