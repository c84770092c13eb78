"""``dsadvise recommend``: parse-level inputs -> :func:`advisor.recommend.recommend` -> report or JSON.

Exit codes: 0 a configuration fits, 3 nothing fits (with suggestions), 2 bad input or a bad rule file.
Nothing here imports torch, deepspeed or transformers.
"""

from __future__ import annotations

import argparse
import json

from .. import exit_codes
from . import flags


def register(sub) -> None:
    p = sub.add_parser("recommend", help="the fastest configuration that fits, explained")
    flags.add_problem_flags(p, with_strategy=False)
    flags.add(p, flags.RECOMMEND_FLAGS)
    p.set_defaults(func=cmd_recommend)


def cmd_recommend(args: argparse.Namespace) -> int:
    """Run the sub-command: the recommendation as text or JSON; exit 3 when nothing fits."""
    from ..api import build_training, check_against_model, hardware_notes
    from .problem import resolved_problem
    from ..recommend import recommend
    from ..recommend.recommendation_report import render_recommendation

    model, hw, method, precision, kw, seq_note = resolved_problem(args)
    flags.refuse_estimate_only(kw, "recommend searches transformers/PEFT setups (accelerate, DeepSpeed, FSDP)")
    template = build_training(hw, method="full" if method == "auto" else method, precision=precision,
                              checkpointing=args.checkpointing or "none", **kw)
    check_against_model(model, template)
    rec = recommend(model, hw, template, margin=args.margin, method=method, precision=precision or "auto",
                    checkpointing=args.checkpointing or "auto", max_micro_batch=args.max_micro_batch,
                    rules=args.rules or (), profile=flags.profile(args))
    said = ([seq_note] if seq_note else []) + hardware_notes(hw, args.vram)
    if said:
        rec = rec.model_copy(update={"assumptions": said + list(rec.assumptions)})
    if args.json:
        print(json.dumps(rec.to_json_dict(), indent=2))
    else:
        print(render_recommendation(rec))
    return exit_codes.OK if rec.found else exit_codes.NOTHING_FITS
