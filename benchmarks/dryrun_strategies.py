"""Dry-run every strategy: generate its configs, then `dsadvise dry-run` them on this machine (CPU by default).

Run: python benchmarks/dryrun_strategies.py [--gpu] [--model qwen2.5-0.5b] [--only zero2,fsdp-full] [--json OUT]
Prints a table: strategy | launch status | load s | launch s | detail (skip reasons, failures).
Each run takes ~20-40 s on 2 CPU cores; optimizer offload builds DeepSpeed's cpu_adam op once (minutes).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CASES = {
    "single": ["--gpus", "1", "--strategy", "single"],
    "ddp": ["--strategy", "ddp"],
    "ddp-fp16": ["--strategy", "ddp", "--precision", "fp16"],
    "zero0": ["--strategy", "zero0"],
    "zero1": ["--strategy", "zero1"],
    "zero2": ["--strategy", "zero2"],
    "zero2-fp16": ["--strategy", "zero2", "--precision", "fp16"],
    "zero2+opt:cpu": ["--strategy", "zero2", "--offload-optimizer", "cpu"],
    "zero3": ["--strategy", "zero3"],
    "zero3+opt:cpu+param:cpu": ["--strategy", "zero3", "--offload-optimizer", "cpu", "--offload-param", "cpu"],
    "zero3+nvme": ["--strategy", "zero3", "--offload-optimizer", "nvme", "--offload-param", "nvme",
                   "--nvme-path", "/tmp/dsadvise-nvme"],
    "zero3-hf-trainer": ["--strategy", "zero3", "--hf-trainer"],
    "zero3-2-nodes": ["--strategy", "zero3", "--nodes", "2", "--main-process-ip", "10.0.0.1"],
    "fsdp-full": ["--strategy", "fsdp-full"],
    "fsdp-grad-op": ["--strategy", "fsdp-grad-op"],
    "fsdp-hybrid": ["--strategy", "fsdp-hybrid"],
    "fsdp-no-shard": ["--strategy", "fsdp-no-shard"],
    "fsdp-full+offload": ["--strategy", "fsdp-full", "--offload-optimizer", "cpu", "--offload-param", "cpu"],
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-0.5b")
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--only", help="comma-separated case names")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    from advisor.cli import main as cli
    from advisor.render.dryrun import dry_run

    cases = {k: v for k, v in CASES.items() if not args.only or k in args.only.split(",")}
    rows = []
    root = Path(tempfile.mkdtemp(prefix="dsadvise-bench-"))
    try:
        for name, flags in cases.items():
            out = root / name.replace(":", "_").replace("+", "_")
            argv = ["generate", "--model", args.model, "--gpus", "4", "--vram", "80", *flags, "--out", str(out),
                    "--no-engine-check"]
            if "--gpus" in flags:
                argv = ["generate", "--model", args.model, "--vram", "80", *flags, "--out", str(out),
                        "--no-engine-check"]
            if cli(argv) != 0:
                rows.append({"case": name, "status": "generate failed"})
                continue
            t0 = time.perf_counter()
            report = dry_run(out, timeout=args.timeout, gpu=args.gpu)
            total = time.perf_counter() - t0
            launch = next((s for s in report.steps if s.name.startswith("launch")), None)
            load = sum(s.seconds for s in report.steps if not s.name.startswith("launch"))
            detail = launch.detail if launch else ""
            if launch and launch.findings:
                detail = "; ".join(f.line() for f in launch.findings[:2])
            rows.append({"case": name, "status": launch.status if launch else "?", "load_s": round(load, 1),
                         "launch_s": round(launch.seconds, 1) if launch else None, "total_s": round(total, 1),
                         "passed": report.passed, "overrides": report.overrides, "detail": detail})
            print(f"{name:<26}{rows[-1]['status']:<6}{load:>7.1f}{(launch.seconds if launch else 0):>9.1f}  "
                  f"{detail[:160]}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0 if all(r.get("passed") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
