"""The problem the command-line flags describe, resolved once for the commands that search
(``recommend``, ``generate --task infer``). Kept out of :mod:`flags`, which :mod:`advisor.api` imports."""

from __future__ import annotations

import argparse

from ..api import build_hardware, resolve_seq_len
from ..catalog.models import resolve_model
from . import flags


def resolved_problem(args: argparse.Namespace):
    """The problem the flags describe, resolved once for ``recommend`` and ``generate --task infer``:
    ``(model, hw, method, precision, kw, seq_note)`` where ``kw`` holds the remaining
    :func:`problem_kwargs` (training keywords) with the sequence length the model allows."""
    kw = flags.problem_kwargs(args)
    hw = build_hardware(kw.pop("gpus"), kw.pop("nodes"), kw.pop("vram"), kw.pop("gpu"), kw.pop("cpu_ram"),
                        kw.pop("nvme_path"), kw.pop("nvme_size"))
    method = kw.pop("method")
    precision = kw.pop("precision")
    model = resolve_model(args.model)
    kw["seq_len"], seq_note = resolve_seq_len(model, kw["seq_len"])
    return model, hw, method, precision, kw, seq_note
