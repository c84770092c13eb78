"""``dsadvise presets``: every LLaMA-Factory-style preset estimated on the given hardware, as a table."""

from __future__ import annotations

import argparse
import json

from .. import exit_codes
from . import flags


def register(sub) -> None:
    p = sub.add_parser("presets", help="estimate each preset (lora, qlora, full, z2-offload, z3, minimal) here",
                       description="Estimate each preset's per-GPU memory and speed on this hardware (the table such "
                                   "projects publish by hand). The mapping of each preset onto dsadvise settings "
                                   "is in docs/frameworks.md.")
    add = flags.add
    add(p.add_argument_group("model"), flags.MODEL_FLAGS, model={"required": True})
    add(p.add_argument_group("hardware"), flags.HARDWARE_FLAGS)
    add(p.add_argument_group("training"), ("--seq-len", "--micro-batch", "--global-batch", "--precision",
                                           "--optimizer", "--lora-rank", "--lora-targets", "--attention"))
    add(p, ("--json",))
    p.set_defaults(func=cmd_presets)


def cmd_presets(args: argparse.Namespace) -> int:
    from ..formatting import fmt_bytes
    from ..presets import preset_table

    kw = dict(gpus=args.gpus, nodes=args.nodes, vram=args.vram, gpu=args.gpu, cpu_ram=args.cpu_ram,
              nvme_path=args.nvme_path, nvme_size=args.nvme_size, seq_len=args.seq_len, micro_batch=args.micro_batch,
              global_batch=args.global_batch, precision=args.precision, optimizer=args.optimizer,
              lora_rank=args.lora_rank,
              lora_targets=tuple(t.strip() for t in args.lora_targets.split(",") if t.strip()),
              attention=args.attention)
    rows = preset_table(args.model, **kw)
    if args.json:
        print(json.dumps({"model": args.model, "presets": [r.to_json() for r in rows]}, indent=2))
        return exit_codes.OK
    head = ("preset", "backend", "per GPU", "fits", "tokens/s")
    table = []
    for r in rows:
        if r.error:
            table.append((r.preset, r.backend, "-", "no", "-"))
            continue
        speed = f"{r.tokens_per_second:,.0f}" if r.tokens_per_second is not None else "-"
        table.append((r.preset, r.backend + (" +offload" if r.settings["offload_optimizer"] != "none" else ""),
                      f"{fmt_bytes(r.per_gpu_bytes)} / {fmt_bytes(r.vram_bytes)}", "yes" if r.fits else "no", speed))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *table)]
    for line in (head, *table):
        print("  ".join(str(x).ljust(w) if i in (0, 1, 3) else str(x).rjust(w) for i, (x, w) in
                        enumerate(zip(line, widths))).rstrip())
    for r in rows:
        if r.error:
            print(f"{r.preset}: {r.error}")
    for r in rows:
        print(f"{r.preset}: {r.what}")
    for note in dict.fromkeys(n for r in rows for n in r.notes):
        print(f"assumed: {note}")
    return exit_codes.OK
