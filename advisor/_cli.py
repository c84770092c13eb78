"""The ``dsadvise`` command line: a thin shell over :mod:`advisor.api`.

Nothing imported at module level pulls torch, deepspeed or transformers; commands that need the real
engines import them inside their handlers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from . import exit_codes
from .errors import AdvisorError

PRECISIONS = ("fp32", "fp16", "bf16", "pure-bf16")
OPTIMIZERS = ("adamw", "adamw-8bit", "adafactor", "sgd", "lion", "lamb")
METHODS = ("full", "lora", "qlora", "freeze")
STRATEGIES = ("single", "ddp", "zero0", "zero1", "zero2", "zero3", "fsdp-full", "fsdp-grad-op", "fsdp-hybrid",
              "fsdp-no-shard")
OFFLOAD = ("none", "cpu", "nvme")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit code 2; no abbreviated flags."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        self.exit(exit_codes.BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _gib(text: str) -> float:
    try:
        value = float(text.lower().removesuffix("gib").removesuffix("gb").removesuffix("g"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size in GiB such as 24 or 80, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive size in GiB, got {text!r}")
    return value


def add_problem_flags(p: argparse.ArgumentParser, *, with_strategy: bool) -> None:
    """Flags describing model, hardware and training, shared by estimate and recommend."""
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True,
                   help="a size (7B, 1.5b, 350M), a catalog name (see `dsadvise models`) or a config.json path")
    g = p.add_argument_group("hardware")
    g.add_argument("--gpus", type=_positive_int, default=1, help="GPUs per node (default 1)")
    g.add_argument("--nodes", type=_positive_int, default=1, help="number of nodes (default 1)")
    g.add_argument("--vram", type=_gib, help="memory per GPU in GiB (default: from --gpu)")
    g.add_argument("--gpu", help="GPU catalog name, e.g. a100-80g, rtx4090 (see `dsadvise gpus`)")
    g.add_argument("--cpu-ram", type=_gib, help="CPU RAM per node in GiB (checked for offload)")
    g.add_argument("--nvme-path", help="NVMe mount for ZeRO-Infinity offload")
    g.add_argument("--nvme-size", type=_gib, help="free NVMe space per node in GiB")
    g = p.add_argument_group("training")
    g.add_argument("--task", choices=("train", "infer"), default="train")
    g.add_argument("--seq-len", type=_positive_int, default=2048, help="tokens per sample (default 2048)")
    g.add_argument("--micro-batch", type=_positive_int, default=1, help="samples per GPU per step (default 1)")
    g.add_argument("--global-batch", type=_positive_int, help="samples per optimizer step across all GPUs")
    g.add_argument("--precision", choices=PRECISIONS,
                   help="mixed fp16/bf16, pure-bf16 or fp32 (default: bf16 where the GPU has it, else fp16)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw")
    g.add_argument("--method", choices=METHODS + (("auto",) if not with_strategy else ()), default="full")
    g.add_argument("--lora-rank", type=_positive_int, default=16)
    g.add_argument("--lora-targets", default="all-linear",
                   help="comma-separated modules for LoRA (q_proj,v_proj,...) or all-linear")
    g.add_argument("--freeze-layers", type=_positive_int, default=2,
                   help="--method freeze: how many last layers train (default 2)")
    g.add_argument("--checkpointing", choices=("none", "full", "selective"),
                   default="none" if with_strategy else None, help="activation checkpointing")
    g.add_argument("--attention", choices=("eager", "sdpa", "flash"), default="sdpa")
    if with_strategy:
        g = p.add_argument_group("strategy")
        g.add_argument("--strategy", choices=STRATEGIES, help="default: single on 1 GPU, ddp on more")
        g.add_argument("--offload-optimizer", choices=OFFLOAD, default="none")
        g.add_argument("--offload-param", choices=OFFLOAD, default="none")
        g.add_argument("--bucket-sizes", choices=("auto", "default"), default="auto",
                       help="DeepSpeed buckets: HF 'auto' sizes from hidden size, or DeepSpeed defaults")
    p.add_argument("--profile", metavar="PATH",
                   help="use the rates `dsadvise calibrate` measured (a profile YAML) for step times")
    p.add_argument("--json", action="store_true", help="print one JSON object (sizes in bytes)")


def _profile(args: argparse.Namespace):
    """The --profile machine profile, or None."""
    if not getattr(args, "profile", None):
        return None
    from .profile import load_profile

    return load_profile(args.profile)


def _problem_kwargs(args: argparse.Namespace) -> dict:
    return dict(gpus=args.gpus, nodes=args.nodes, vram=args.vram, gpu=args.gpu, cpu_ram=args.cpu_ram,
                nvme_path=args.nvme_path, nvme_size=args.nvme_size, task=args.task, seq_len=args.seq_len,
                micro_batch=args.micro_batch, global_batch=args.global_batch, precision=args.precision,
                optimizer=args.optimizer, method=args.method, lora_rank=args.lora_rank,
                lora_targets=tuple(t.strip() for t in args.lora_targets.split(",") if t.strip()),
                attention=args.attention, freeze_layers=args.freeze_layers)


def cmd_estimate(args: argparse.Namespace) -> int:
    from .api import estimate
    from .report import render_estimate

    est = estimate(args.model, checkpointing=args.checkpointing, strategy=args.strategy,
                   offload_optimizer=args.offload_optimizer, offload_param=args.offload_param,
                   bucket_sizes=args.bucket_sizes, profile=_profile(args), **_problem_kwargs(args))
    print(json.dumps(est.to_json_dict(), indent=2) if args.json else render_estimate(est))
    return exit_codes.OK


def cmd_recommend(args: argparse.Namespace) -> int:
    from .recommend.cli import run_recommend

    return run_recommend(args, _problem_kwargs(args), profile=_profile(args))


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .calibrate import calibrate, summary, write_profile

    prof = calibrate(quick=args.quick, device=args.device, collectives=not args.no_collectives,
                     deepspeed_adam=not args.no_deepspeed_adam)
    path = write_profile(prof, args.out, force=args.force)
    print("\n".join(summary(prof)))
    print(f"profile written to {path}; use it with --profile {path}")
    return exit_codes.OK


def cmd_models(args: argparse.Namespace) -> int:
    from .catalog.models import list_models
    from .report import fmt_count

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
    from .catalog.gpus import list_gpus
    from .specs import GiB

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


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="dsadvise", description="Estimate GPU memory, recommend and render accelerate / "
                                                  "DeepSpeed configs for training large models.")
    parser.add_argument("--version", action="version", version=f"dsadvise {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("estimate", help="per-GPU and per-node memory of one configuration")
    add_problem_flags(p, with_strategy=True)
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser("recommend", help="the fastest configuration that fits, explained")
    add_problem_flags(p, with_strategy=False)
    p.add_argument("--margin", type=float, default=None,
                   help="safety margin as a fraction of VRAM kept free (default from rules)")
    p.add_argument("--max-micro-batch", type=_positive_int, default=None,
                   help="largest micro-batch searched; --micro-batch is the smallest (default: global batch / "
                        "GPUs, else the rules' const.max_micro_batch)")
    p.add_argument("--rules", action="append", metavar="PATH",
                   help="extra rule file or folder, on top of the bundled rules/ (repeatable)")
    p.set_defaults(func=cmd_recommend)
    from .render.cli import register as _register_render; _register_render(sub)

    p = sub.add_parser("calibrate", help="measure this machine (matmul, collectives, host copies, CPU Adam) and "
                                         "write a profile for --profile")
    p.add_argument("--out", metavar="PATH", help="profile file to write (default: ~/.config/dsadvise/profile.yaml)")
    p.add_argument("--force", action="store_true", help="overwrite an existing profile")
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats (seconds, less stable)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="what the matmuls run on (default: CUDA where torch sees it, else the CPU)")
    p.add_argument("--no-collectives", action="store_true", help="skip the all-reduce / all-gather measurement")
    p.add_argument("--no-deepspeed-adam", action="store_true",
                   help="skip DeepSpeedCPUAdam (its first use JIT-compiles an op for minutes)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("models", help="list the model catalog")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("gpus", help="list the GPU catalog")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_gpus)
    from .tui.cli import register as _register_tui; _register_tui(sub)  # noqa: E702  (wizard; Textual only when run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dsadvise`` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return exit_codes.BAD_INPUT
    try:
        return args.func(args)
    except AdvisorError as exc:
        print(f"dsadvise: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("dsadvise: interrupted", file=sys.stderr)
        return exit_codes.INTERRUPTED
    except BrokenPipeError:
        return exit_codes.OK
    except Exception as exc:  # an internal bug: one line, the traceback only on request
        if os.environ.get("DSADVISE_DEBUG"):
            raise
        print(f"dsadvise: internal error: {type(exc).__name__}: {exc} (set DSADVISE_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return exit_codes.FAILED


if __name__ == "__main__":
    sys.exit(main())
