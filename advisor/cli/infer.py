"""``dsadvise generate --task infer``: the inference recommendation -> the layouts that fit -> files.

Writes ``infer_device_map.py`` / ``launch_device_map.sh`` (one process, ``device_map="auto"``) and
``infer_replicas.py`` / ``launch_replicas.sh`` (one replica per GPU, ``accelerate launch``) for the layouts that
fit, a README.md with the memory of each and the pitfalls, and dsadvise.json for ``dsadvise dry-run``.
"""

from __future__ import annotations

import argparse
import json
import sys

from .. import exit_codes
from ..errors import NothingFits
from . import flags


def plan_infer(args: argparse.Namespace):
    """(model, hw, plan) from the generate flags with --task infer; raises NothingFits when no layout fits."""
    from ..api import build_training, check_against_model, hardware_notes
    from .problem import resolved_problem
    from ..errors import InputError
    from ..recommend import recommend
    from ..render.infer_plan import plan_inference

    if getattr(args, "strategy", None) is not None:
        raise InputError("--strategy is for training; --task infer picks its layouts (device_map=\"auto\" and one "
                         "replica per GPU) itself", field="--strategy")
    model, hw, method, precision, kw, seq_note = resolved_problem(args)
    kw["prompt_len"] = getattr(args, "prompt_len", None)
    if kw["prompt_len"] is not None and kw["prompt_len"] >= kw["seq_len"]:
        raise InputError(f"--prompt-len {kw['prompt_len']} leaves no room to generate in --seq-len {kw['seq_len']}",
                         field="--prompt-len")
    template = build_training(hw, method=method, precision=precision, checkpointing="none", **kw)
    check_against_model(model, template)
    rec = recommend(model, hw, template, method=method, precision=precision or "auto", checkpointing="none")
    said = ([seq_note] if seq_note else []) + hardware_notes(hw, args.vram)
    framework = getattr(args, "framework", None)
    if framework not in (None, "accelerate"):
        said.append(f"--framework {framework} renders training configs; for inference the launch scripts carry "
                    "LLaMA-Factory's chat and predict lines beside the transformers / accelerate ones")
    if said:
        rec = rec.model_copy(update={"assumptions": said + list(rec.assumptions)})
    if not rec.found or rec.recommendation is None:
        why = "; ".join(rec.reasons[-2:])
        why = why[len("nothing fits: "):] if why.startswith("nothing fits: ") else why
        hints = "; ".join(s.change for s in rec.suggestions[:3]) if rec.suggestions else ""
        raise NothingFits("no inference layout fits, so there is nothing to generate: " + why
                          + (f" (what would: {hints})" if hints else ""))
    return model, hw, plan_inference(model, args.model, hw, template, rec)


def cmd_generate_infer(args: argparse.Namespace) -> int:
    """Render, check and write the inference files; print what was written (or JSON)."""
    from ..formatting import fmt_bytes
    from ..render.infer_render import render_infer_files, validate_infer_files
    from ..render.write import write_files

    model, hw, plan = plan_infer(args)
    files = render_infer_files(plan, model, hw, model_arg=args.model, main_process_port=args.main_process_port)
    problems = validate_infer_files(files)
    if problems:   # a bug of ours: never write files that do not parse
        print("dsadvise: internal error: the rendered files do not parse: " + problems[0], file=sys.stderr)
        return exit_codes.FAILED
    written = write_files(files, args.out, force=args.force)
    if args.json:
        print(json.dumps({"out": str(args.out), "files": [p.name for p in written], "task": "infer",
                          "layouts": [x.model_dump(mode="json") for x in plan.layouts],
                          "not_fitting": list(plan.not_fitting), "assumptions": list(plan.assumptions)}, indent=2))
        return exit_codes.OK
    print(f"wrote {len(written)} files to {args.out}: {', '.join(p.name for p in written)}")
    for lay in plan.layouts:
        extra = (f", max_memory {fmt_bytes(lay.max_memory_bytes)} of weights per GPU"
                 if lay.max_memory_bytes is not None else "")
        print(f"{model.name}: {lay.layout}{' (recommended)' if lay.recommended else ''}: batch {lay.batch_size} x "
              f"{plan.seq_len} tokens, {lay.processes} process(es) per node; estimate {fmt_bytes(lay.total)} of "
              f"{fmt_bytes(hw.vram_bytes)} per GPU{extra}")
    for line in plan.not_fitting:
        print(f"not written: {line}")
    for note in plan.assumptions:
        print(f"assumed: {note}")
    print("checked: Python files compile, shell scripts parse (bash -n), dsadvise.json is JSON")
    return exit_codes.OK
