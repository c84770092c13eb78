"""``dsadvise estimate``: per-GPU and per-node memory of one configuration."""

from __future__ import annotations

import argparse
import json

from .. import exit_codes
from . import flags


def register(sub) -> None:
    p = sub.add_parser("estimate", help="per-GPU and per-node memory and the step time of one configuration")
    flags.add_problem_flags(p, with_strategy=True)
    flags.add(p, flags.ESTIMATE_FLAGS)
    p.set_defaults(func=cmd_estimate)


def cmd_estimate(args: argparse.Namespace) -> int:
    from ..api import estimate
    from ..estimate_report import render_estimate
    from ..render.frameworks.cli import apply_preset   # issue 16 (helper F)

    apply_preset(args)
    est = estimate(args.model, checkpointing=args.checkpointing, strategy=args.strategy,
                   offload_optimizer=args.offload_optimizer, offload_param=args.offload_param,
                   bucket_sizes=args.bucket_sizes, prompt_len=args.prompt_len,
                   sub_group_size=args.sub_group_size, profile=flags.profile(args), **flags.problem_kwargs(args),
                   **flags.layout_kwargs(args))
    print(json.dumps(est.to_json_dict(), indent=2) if args.json else render_estimate(est))
    return exit_codes.OK
