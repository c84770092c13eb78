"""Sweep `generate --framework` over strategies x methods x precisions x checkpointing x loss and parse every
rendered file with the framework's own parser (LLaMA-Factory and axolotl where installed, else their documented
keys). Prints one row per framework: rendered and accepted, refused by dsadvise (one line, expected for what a
framework cannot express), rendered but refused by the parser (a bug). Run: python benchmarks/framework_parsers.py
"""

from __future__ import annotations

import itertools
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STRATEGIES = ["single", "ddp", "zero2", "zero3", "zero3 --offload-optimizer cpu", "zero2 --offload-optimizer cpu",
              "fsdp-full", "fsdp-grad-op", "fsdp-full --offload-optimizer cpu --offload-param cpu"]
METHODS = ["full", "lora", "qlora", "freeze", "lora --lora-targets q_proj,v_proj"]
PRECISIONS = ["bf16", "fp16", "fp32", "pure-bf16"]
EXTRAS = ["--checkpointing full", "--checkpointing none --loss fused-linear", "--attention flash --micro-batch 2"]
FRAMEWORKS = ["llamafactory", "hf-trainer", "trl", "axolotl"]


def main() -> None:
    from advisor.cli import build_parser
    from advisor.cli.configs import plan
    from advisor.errors import InputError
    from advisor.render.frameworks import render_framework
    from advisor.render.frameworks.validate import importable, validate_framework_files
    from advisor.render.render import render_files

    rows = {fw: Counter() for fw in FRAMEWORKS}
    bugs = []
    t0 = time.perf_counter()
    for strategy, method, precision, extra in itertools.product(STRATEGIES, METHODS, PRECISIONS, EXTRAS):
        gpus = 1 if strategy == "single" else 4
        argv = f"--model llama-2-7b --gpus {gpus} --gpu a100-80g --strategy {strategy} --method {method} " \
               f"--precision {precision} {extra}"
        args = build_parser().parse_args(["generate", *shlex.split(argv), "--out", "/x"])
        try:
            model, hw, training, strat, gas, _ = plan(args)
            base = render_files(model, hw, training, strat, gradient_accumulation_steps=gas, hf_trainer=True)
        except InputError:
            continue                          # not a configuration dsadvise renders at all
        for fw in FRAMEWORKS:
            try:
                files = render_framework(model, hw, training, strat, fw, gradient_accumulation_steps=gas)
            except InputError:
                rows[fw]["refused by dsadvise"] += 1
                continue
            (step,) = validate_framework_files({**base, **files}, fw)
            if step.status.value == "pass":
                rows[fw]["accepted by the parser"] += 1
            else:
                rows[fw]["rendered, parser refuses (bug)"] += 1
                bugs.append((fw, argv, step.findings[0].line()))
    print(f"{'framework':<13} {'parser':<24} {'accepted':>8} {'refused by dsadvise':>20} {'parser refuses':>15}")
    for fw, c in rows.items():
        how = "documented keys" if importable(fw) else "own parser"
        print(f"{fw:<13} {how:<24} {c['accepted by the parser']:>8} {c['refused by dsadvise']:>20} "
              f"{c['rendered, parser refuses (bug)']:>15}")
    for fw, argv, line in bugs[:20]:
        print(f"BUG {fw}: {argv}\n    {line}")
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
