"""Dry-run each parallel layout of issue 15 for real on this machine's CPU: generate its files from the golden
scenarios (tests/render/conftest.py LAYOUT_SCENARIOS, plus ZeRO-3 + AutoTP), then `dsadvise dry-run` them
(accelerate launch, gloo, 2-4 processes at degree 2 per dimension) and print what the run asserted inside itself.

Run: python benchmarks/parallel_dryrun.py [--only sp,autotp] [--json OUT]
Prints: layout | status | processes | launch s | what the run checked (DTensor placements, shard shapes, sequence
split, groups) | what this machine cannot run and why. About 1 minute per layout on 2 busy CPU cores.
CI runs one of them (tests/render/test_parallel.py::test_ulysses_sp_runs_on_cpu_and_splits_the_sequence).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CASES = {
    "sp-zero3": "--model llama-3.2-1b --gpus 8 --gpu h100-sxm --strategy zero3 --sp 8 "
                                      "--seq-len 4096 --attention flash",
    "autotp-zero1": "--model llama-3.2-1b --gpus 8 --gpu h100-sxm --strategy zero1 --tp 2",
    "autotp-zero3": "--model llama-3.2-1b --gpus 8 --gpu h100-sxm --strategy zero3 --tp 2",
    "fsdp2": "--model llama-3.2-1b --gpus 8 --gpu h100-sxm --strategy fsdp-full --fsdp-version 2",
    "fsdp2-tp": "--model llama-3.2-1b --gpus 8 --gpu h100-sxm --strategy fsdp-full --fsdp-version 2 --tp 2",
    "fsdp2-cp": "--model llama-3.2-1b --gpus 8 --gpu h100-sxm --strategy fsdp-full --fsdp-version 2 --cp 2 "
                  "--seq-len 4096 --attention sdpa",
    "hsdp-fsdp2": "--model llama-3.2-1b --nodes 2 --gpus 4 --gpu h100-sxm --strategy fsdp-full "
                                  "--fsdp-version 2 --dp-replicate 2",
}
SHOWN = ("accelerate device mesh", "tensor-parallel shards", "rows of q_proj", "autotp_size in effect",
         "AutoTP column shard", "AutoTP row shard", "Ulysses sequence-parallel group", "sequence split",
         "context parallel: tokens", "HSDP", "FSDP2: sharded", "FSDP2 mesh", "DeepSpeed data-parallel world size")


def run_case(name: str, argv: str, root: Path) -> dict:
    from advisor.cli.configs import plan
    from advisor.render.dryrun import dry_run
    from advisor.render.render import render_files
    from tests.render.conftest import parse_generate

    args = parse_generate(argv)
    model, hw, training, strategy, gas, rec = plan(args)
    files = render_files(model, hw, training, strategy, gradient_accumulation_steps=gas,
                         main_process_ip=args.main_process_ip, main_process_port=args.main_process_port)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for fname, text in files.items():
        (folder / fname).write_text(text, encoding="utf-8")
    keep = folder / "run"
    t0 = time.perf_counter()
    report = dry_run(folder, keep=str(keep))
    wall = time.perf_counter() - t0
    launch = next((s for s in report.steps if s.name.startswith("launch")), None)
    checks, skipped = [], []
    r0 = keep / "rank0.json"
    if r0.is_file():
        data = json.loads(r0.read_text())
        for c in data["checks"]:
            if c.get("skipped"):
                skipped.append(f"{c['check']}: {c['skipped']}")
            elif any(c["check"].startswith(s) or s in c["check"] for s in SHOWN):
                checks.append(f"{c['check']} = {c['got']}" + ("" if c["ok"] else f" (expected {c['expected']})"))
        if data.get("error"):
            skipped.append("error: " + data["error"][:300])
    procs = launch.detail.split(" process")[0] if launch and launch.detail else "?"
    return {"layout": name, "status": str(launch.status) if launch else "not launched", "processes": procs,
            "seconds": round(launch.seconds if launch else wall, 1), "checked": checks, "not_run": skipped,
            "findings": [f.line() for s in report.steps for f in s.findings], "overrides": report.overrides}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", help="comma-separated layout names: " + ", ".join(CASES))
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    cases = {k: v for k, v in CASES.items()
             if not args.only or k in args.only.split(",")}
    rows = []
    with tempfile.TemporaryDirectory(prefix="dsadvise-parallel-") as tmp:
        for name, flags in cases.items():
            row = run_case(name, flags, Path(tmp))
            rows.append(row)
            print(f"{row['layout']:<14} {row['status']:<5} {row['processes']:>3} proc  {row['seconds']:>6.1f} s",
                  flush=True)
            for c in row["checked"]:
                print(f"    checked: {c}")
            for c in row["not_run"]:
                print(f"    not run here: {c}")
            for f in row["findings"]:
                print(f"    {f}")
            print(f"    flags: {shlex.join(flags.split())}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
