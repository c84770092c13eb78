"""``dsadvise models`` and ``dsadvise gpus``: the catalogs as tables or JSON."""

from __future__ import annotations

import argparse
import json

from .. import exit_codes
from . import flags


def register(sub) -> None:
    p = sub.add_parser("models", help="list the model catalog")
    flags.add(p, ("--json",), json={"help": None})
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("gpus", help="list the GPU catalog")
    flags.add(p, ("--json",), json={"help": None})
    p.set_defaults(func=cmd_gpus)


def cmd_models(args: argparse.Namespace) -> int:
    from ..catalog.models import list_models
    from ..formatting import fmt_count

    models = list_models()
    if args.json:
        print(json.dumps([{"name": m.name, "hf_id": m.hf_id, "parameters": m.parameters,
                           "family": m.architecture.family, "aliases": list(m.aliases)} for m in models], indent=2))
        return exit_codes.OK
    print(f"{'name':<22}{'params':>9}  {'family':<10}{'layers':>7}{'hidden':>7}{'heads':>6}{'kv':>4}"
          f"{'vocab':>8}  hf id")
    for m in models:
        a = m.architecture
        print(f"{m.name:<22}{fmt_count(m.parameters):>9}  {a.family:<10}{a.num_layers:>7}{a.hidden_size:>7}"
              f"{a.num_attention_heads:>6}{a.num_key_value_heads:>4}{a.vocab_size:>8}  {m.hf_id}")
    return exit_codes.OK


def cmd_gpus(args: argparse.Namespace) -> int:
    from ..catalog.gpus import list_gpus
    from ..specs import GiB

    gpus = list_gpus()
    if args.json:
        print(json.dumps([g.model_dump(mode="json") for g in gpus], indent=2))
        return exit_codes.OK
    print(f"{'name':<14}{'memory':>9}  {'bf16':<5}{'fp16 TFLOPS':>12}{'HBM GB/s':>10}  {'link':<16}"
          f"{'intra GB/s':>11}{'inter GB/s':>11}")
    for g in gpus:
        print(f"{g.name:<14}{g.memory_bytes / GiB:>6.0f}GiB  {'yes' if g.bf16 else 'no':<5}{g.fp16_tflops:>12.0f}"
              f"{g.hbm_bandwidth_gbps:>10.0f}  {g.intra_node_link:<16}{g.intra_node_bandwidth_gbps:>11.0f}"
              f"{g.inter_node_bandwidth_gbps:>11.1f}")
    return exit_codes.OK
