"""``dsadvise recommend``: parse-level inputs -> :func:`advisor.recommend.recommend` -> report or JSON.

Exit codes: 0 a configuration fits, 3 nothing fits (with suggestions), 2 bad input or a bad rule file.
Nothing here imports torch, deepspeed or transformers.
"""

from __future__ import annotations

import argparse
import json

from .. import exit_codes


def run_recommend(args: argparse.Namespace, problem_kwargs: dict, profile=None) -> int:
    """Run the sub-command; ``problem_kwargs`` are :func:`advisor.api.estimate`'s keyword arguments."""
    from ..api import build_hardware, build_training
    from ..catalog.models import resolve_model
    from . import recommend
    from .report import render_recommendation

    kw = dict(problem_kwargs)
    hw = build_hardware(kw.pop("gpus"), kw.pop("nodes"), kw.pop("vram"), kw.pop("gpu"), kw.pop("cpu_ram"),
                        kw.pop("nvme_path"), kw.pop("nvme_size"))
    method = kw.pop("method")
    precision = kw.pop("precision")
    model = resolve_model(args.model)
    template = build_training(hw, method="full" if method == "auto" else method, precision=precision,
                              checkpointing=getattr(args, "checkpointing", None) or "none", **kw)
    rec = recommend(model, hw, template, margin=getattr(args, "margin", None), method=method,
                    precision=precision or "auto", checkpointing=getattr(args, "checkpointing", None) or "auto",
                    max_micro_batch=getattr(args, "max_micro_batch", None), rules=getattr(args, "rules", None) or (),
                    profile=profile)
    if args.json:
        print(json.dumps(rec.to_json_dict(), indent=2))
    else:
        print(render_recommendation(rec))
    return exit_codes.OK if rec.found else exit_codes.NOTHING_FITS
