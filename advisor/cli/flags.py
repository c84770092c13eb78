"""The one table of ``dsadvise`` flags: argparse spelling, type, choices, default, help, the spec field it
fills, the wizard field that shows it and the name errors use.

Choices come from the specs' ``Literal`` types (:func:`typing.get_args`), so a value added to a spec is a
value every command and the wizard accept. Every command builds its parser from this table; the wizard's
form (:mod:`advisor.tui.form`) reads its choices, parsers and field <-> flag map from it; the API names
flags in errors through :data:`SPEC_FIELD_FLAGS`. Nothing here imports pydantic, torch or Textual (the
``Literal`` types live in :mod:`advisor.choices`, which :mod:`advisor.specs` uses).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, get_args

from .. import choices

AUTO = "auto"
RECOMMENDED = "recommended"

PRECISIONS: tuple[str, ...] = get_args(choices.Precision)
OPTIMIZERS: tuple[str, ...] = get_args(choices.Optimizer)
METHODS: tuple[str, ...] = get_args(choices.Method)
CHECKPOINTING: tuple[str, ...] = get_args(choices.Checkpointing)
ATTENTION: tuple[str, ...] = get_args(choices.Attention)
LOSSES: tuple[str, ...] = get_args(choices.Loss)
BASE_DTYPES: tuple[str, ...] = get_args(choices.BaseDtype)   # issue 17
TASKS: tuple[str, ...] = get_args(choices.Task)
OFFLOAD: tuple[str, ...] = get_args(choices.OffloadTarget)
STRATEGIES: tuple[str, ...] = get_args(choices.StrategyName)
BUCKET_SIZES: tuple[str, ...] = get_args(choices.BucketSizes)
FSDP_VERSIONS: tuple[int, ...] = get_args(choices.FsdpVersion)    # issue 15
FRAMEWORKS: tuple[str, ...] = get_args(choices.Framework)     # issue 16 (helper F)
PRESETS: tuple[str, ...] = get_args(choices.Preset)           # issue 16 (helper F)
QLORA_QUANTIZERS: tuple[str, ...] = get_args(choices.QloraQuantizer)   # issue 17 (helper L)
MODEL_CODES: tuple[str, ...] = get_args(choices.ModelCode)   # issue 17 (helper G)
CHECKPOINT_SAVES: tuple[str, ...] = get_args(choices.CheckpointSave)   # issue 17
BATCH_LENGTHS: tuple[str, ...] = get_args(choices.BatchLengths)   # issue 17 (helper L)


# ---------------------------------------------------------------- argument types (shared with the wizard)

def positive_int(text: str) -> int:
    """A whole number >= 1 (argparse type; raises ArgumentTypeError with the words users see)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def gib(text: str) -> float:
    """A size in GiB such as ``24``, ``80GiB`` or ``40g`` (a float; bytes are made in :mod:`advisor.api`)."""
    try:
        value = float(text.lower().removesuffix("gib").removesuffix("gb").removesuffix("g"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size in GiB such as 24 or 80, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive size in GiB, got {text!r}")
    return value


def port(text: str) -> int:
    """A TCP port 1-65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 1-65535, got {value}")
    return value


def seconds(text: str) -> float:
    """A duration in seconds between 10 and 86400."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 10 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"must be between 10 and 86400 seconds, got {text!r}")
    return value


# ---------------------------------------------------------------- the table

class Flag(NamedTuple):
    """One command-line flag and everything that refers to it (a NamedTuple: ``dsadvise --help`` does not
    pay for importing dataclasses)."""

    flag: str                                   # argparse spelling, also the name errors use
    help: str = ""
    type: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    default: Any = None
    spec_fields: tuple[str, ...] = ()           # the pydantic fields it fills (errors on them name this flag)
    wizard_field: str | None = None             # its hand-made wizard field (errors land there); None: the wizard
                                                # generates one in an Advanced section (advisor/tui/form.py)
    action: str | None = None
    metavar: str | None = None
    estimate_only: str | None = None            # what a non-default value runs that only `estimate` models
                                                # (recommend, generate and the wizard's configs refuse it)

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def add(self, parser, **overrides) -> None:
        """Add this flag to ``parser`` (a parser or argument group); ``overrides`` replace table entries."""
        kw: dict[str, Any] = {"help": self.help}
        if self.action:
            kw.update(action=self.action, metavar=self.metavar if self.action == "append" else None)
        else:
            kw.update(type=self.type, choices=self.choices, default=self.default, metavar=self.metavar)
        kw.update(overrides)
        parser.add_argument(self.flag, **{k: v for k, v in kw.items() if v is not None or k == "default"})


def _flags(*items: Flag) -> dict[str, Flag]:
    return {f.flag: f for f in items}


FLAGS: dict[str, Flag] = _flags(
    Flag("--model", "a size (7B, 1.5b, 350M), a catalog name (see `dsadvise models`) or a config.json path",
         wizard_field="model"),
    Flag("--gpus", "GPUs per node (default 1)", positive_int, default=1, spec_fields=("gpus_per_node",),
         wizard_field="gpus"),
    Flag("--nodes", "number of nodes (default 1)", positive_int, default=1, spec_fields=("nodes",),
         wizard_field="nodes"),
    Flag("--vram", "memory per GPU in GiB (default: from --gpu)", gib, spec_fields=("vram_bytes",),
         wizard_field="vram"),
    Flag("--gpu", "GPU catalog name, e.g. a100-80g, rtx4090 (see `dsadvise gpus`)", wizard_field="gpu"),
    Flag("--cpu-ram", "CPU RAM per node in GiB (checked for offload)", gib, spec_fields=("cpu_ram_bytes",),
         wizard_field="cpu_ram"),
    Flag("--nvme-path", "NVMe mount for ZeRO-Infinity offload", spec_fields=("nvme_path",)),
    Flag("--nvme-size", "free NVMe space per node in GiB", gib, spec_fields=("nvme_bytes",)),
    Flag("--task", "", choices=TASKS, default="train", spec_fields=("task",), wizard_field="task"),
    Flag("--seq-len", "tokens per sample (default: the smaller of 2048 and the model's context)", positive_int,
         default=None, spec_fields=("seq_len",),
         wizard_field="seq_len"),
    Flag("--micro-batch", "samples per GPU per step (default 1)", positive_int, default=1,
         spec_fields=("micro_batch_size",), wizard_field="micro_batch"),
    Flag("--global-batch", "samples per optimizer step across all GPUs", positive_int,
         spec_fields=("global_batch_size",), wizard_field="global_batch"),
    Flag("--precision", "mixed fp16/bf16, pure-bf16 or fp32 (default: bf16 where the GPU has it, else fp16)",
         choices=PRECISIONS, spec_fields=("precision",), wizard_field="precision"),
    Flag("--optimizer", "", choices=OPTIMIZERS, default="adamw", spec_fields=("optimizer",),
         wizard_field="optimizer"),
    Flag("--method", "", choices=METHODS, default="full", spec_fields=("method",), wizard_field="method"),
    Flag("--lora-rank", "", positive_int, default=16, spec_fields=("rank",), wizard_field="lora_rank"),
    Flag("--lora-dropout", "LoRA dropout probability (PEFT default 0: no mask is saved)", float, default=0.0,
         spec_fields=("dropout",)),
    Flag("--lora-targets", "comma-separated modules for LoRA (q_proj,v_proj,...) or all-linear (every decoder "
         "linear, not the output layer, as PEFT); add lm_head to adapt the output layer too (PEFT "
         "target_modules=[..., 'lm_head'], litgpt lora_head: true; not with --loss fused-linear)",
         default="all-linear", spec_fields=("target_modules",), wizard_field="lora_targets"),
    Flag("--freeze-layers", "--method freeze: how many last layers train (default 2)", positive_int, default=2,
         spec_fields=("freeze_trainable_layers",)),
    Flag("--checkpointing", "activation checkpointing", choices=CHECKPOINTING, default="none",
         spec_fields=("activation_checkpointing",), wizard_field="checkpointing"),
    Flag("--attention", "", choices=ATTENTION, default="sdpa", spec_fields=("attention",), wizard_field="attention"),
    Flag("--loss", "cross-entropy kernel: plain (transformers), chunked (torchtune chunked output), fused-linear "
         "(Liger / Cut Cross-Entropy: no logits), legacy-inline (transformers <= 4.45's in-model loss on fp32 logits), "
         "trl-head (TRL >= 1.16 SFTTrainer's own tiled fused LM head; generate --framework trl's default; "
         "default: plain, legacy-inline with --transformers-version < 4.46)",
         choices=LOSSES, default=None, spec_fields=("loss",), wizard_field="loss"),
    Flag("--loss-chunks", "--loss chunked: sequence chunks (torchtune default 8)", positive_int, default=8,
         spec_fields=("loss_chunks",)),
    Flag("--offload-activations", "keep saved activations in pinned CPU memory (save_on_cpu, torchtune "
         "offloading, DeepSpeed cpu_checkpointing)", action="store_true", spec_fields=("offload_activations",)),
    Flag("--expandable-segments", "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True", action="store_true",
         spec_fields=("expandable_segments",)),
    # issue 15 (helper T): ALST tiled MLP (advisor/memory/tiling.py)
    Flag("--tiled-mlp", "DeepSpeed ALST TiledMLP (ulysses_sp.py) around each layer's MLP: estimate with its "
         "sequence-sharded recompute (DeepSpeed strategies or one GPU)", action="store_true",
         spec_fields=("tiled_mlp",)),
    Flag("--no-double-quant", "QLoRA without bitsandbytes double quantization", action="store_true",
         spec_fields=("double_quant",), wizard_field="double_quant"),
    # issue 17 (helper T): the software stack a run uses (advisor/data/stacks.yaml)
    Flag("--torch-version", "torch the run uses, e.g. 2.2: NCCL's NVLS buffers follow its wheels' NCCL (default: "
         "the smallest over versions)", spec_fields=("torch_version",), metavar="X.Y"),
    Flag("--transformers-version", "transformers the run uses, e.g. 4.39: counts what that version's models hold "
         "(per-layer rotary caches before 4.41/4.42, the inline fp32 loss before 4.46; default: current)",
         spec_fields=("transformers_version",), metavar="X.Y"),
    # session 10 (helper R): the DeepSpeed a run uses (ZeRO-3's parameter coordinator, advisor/data/stacks.yaml)
    Flag("--deepspeed-version", "DeepSpeed the run uses, e.g. 0.15: ZeRO-3's gathered parameters as that version's "
         "coordinator holds them (before 0.16 each step prefetches past stage3_max_live_parameters by what step() "
         "released; default: the larger of the two behaviours)", spec_fields=("deepspeed_version",), metavar="X.Y"),
    # issue 17: the LoRA base's dtype (a loading choice in the user's script)
    Flag("--base-dtype", "--method lora: the frozen base as your script loads it: 16-bit (torch_dtype=bfloat16/"
         "float16, the default) or fp32 (transformers v4 from_pretrained without torch_dtype), under autocast; "
         "--method qlora: the non-quantized weights (embeddings, norms, lm_head), fp32 after PEFT's "
         "prepare_model_for_kbit_training (one GPU / DDP)",
         choices=BASE_DTYPES, default="16-bit", spec_fields=("base_dtype",)),
    # issue 17 (helper L): litgpt's QLoRA quantizes the lm_head too
    Flag("--qlora-quantizer", "QLoRA: transformers (BitsAndBytesConfig: lm_head 16-bit; PEFT, TRL, axolotl, "
         "LLaMA-Factory) or lightning (litgpt --quantize bnb.nf4: every Linear NF4, lm_head included, dequantized "
         "from fp16 per call; one GPU, pure-bf16/fp32)", choices=QLORA_QUANTIZERS, default="transformers",
         spec_fields=("qlora_quantizer",), estimate_only="litgpt's QLoRA, lightning BitsandbytesPrecision"),
    # issue 17 (helper G): litgpt runs its own model code, not transformers'
    Flag("--model-code", "whose model code runs the forward: transformers (modeling files + PEFT LoRA) or litgpt "
         "(litgpt finetune lora/full: its GPT, fused qkv LoRA, 16-bit adapters, fp32 RMSNorm, lm_head per 128-token "
         "chunk; QLoRA quantized by lightning with bitsandbytes 0.42)", choices=MODEL_CODES, default="transformers",
         spec_fields=("model_code",), estimate_only="litgpt's own model code and finetune scripts"),
    # issue 17 (helper L): accelerate's GradientAccumulationPlugin(sync_each_batch=True)
    Flag("--sync-each-batch", "FSDP with gradient accumulation: reduce-scatter the gradients every micro-batch "
         "(accelerate GradientAccumulationPlugin(sync_each_batch=True), HF Trainer accelerator_config "
         "gradient_accumulation_kwargs) instead of keeping unsharded gradients under no_sync: less memory, one "
         "gradient reduce-scatter per micro-batch", action="store_true", spec_fields=("sync_each_batch",)),
    # issue 17: how checkpoints are saved (rank 0's CPU RAM at save time)
    Flag("--checkpoint-save", "auto (as dsadvise renders: ZeRO-3 consolidates a 16-bit model, FSDP saves shards), "
         "sharded (every rank its shard), or consolidated (ZeRO-3 stage3_gather_16bit_weights_on_model_save; FSDP "
         "FULL_STATE_DICT, accelerate's FSDP1 default: model and optimizer state gathered into rank 0's CPU RAM)",
         choices=CHECKPOINT_SAVES, default="auto", spec_fields=("checkpoint_save",)),
    # issue 17 (helper L): variable-length batches (advisor/memory/batch_lengths.py)
    Flag("--batch-lengths", "fixed: every batch is --seq-len tokens (packing, or padding to the maximum length; "
         "the default); variable: each batch padded to its own longest sample (dynamic padding without packing: "
         "HF Trainer/TRL, LLaMA-Factory, axolotl without sample packing), --seq-len the longest: memory is the "
         "largest over padded lengths up to --seq-len (the allocator's reserved is not monotonic in the length)",
         choices=BATCH_LENGTHS, default="fixed", spec_fields=("batch_lengths",)),
    Flag("--strategy", "default: single on 1 GPU, ddp on more", choices=STRATEGIES,
         spec_fields=("zero_stage", "fsdp_sharding", "backend"), wizard_field="strategy"),
    Flag("--offload-optimizer", "", choices=OFFLOAD, default="none", spec_fields=("offload_optimizer",)),
    Flag("--offload-param", "", choices=OFFLOAD, default="none", spec_fields=("offload_param",)),
    Flag("--bucket-sizes", "DeepSpeed buckets: HF 'auto' sizes from hidden size, or DeepSpeed defaults",
         choices=BUCKET_SIZES, default="auto", spec_fields=("bucket_sizes",)),
    # issue 15: tensor / sequence / context parallel layouts (advisor/layout.py checks them)
    Flag("--tp", "tensor-parallel degree: DeepSpeed AutoTP or FSDP2 + TP (within a node; default 1)", positive_int,
         default=1, spec_fields=("tp_size",)),
    Flag("--sp", "Ulysses/ALST sequence-parallel degree (DeepSpeed --strategy zero*; default 1)", positive_int,
         default=1, spec_fields=("sp_size",)),
    Flag("--cp", "context-parallel degree, ring attention (FSDP2: --strategy fsdp-* --fsdp-version 2; default 1)",
         positive_int, default=1, spec_fields=("cp_size",)),
    Flag("--dp-replicate", "HSDP replicas of the FSDP2 shard group (default 1)", positive_int, default=1,
         spec_fields=("dp_replicate_size",)),
    Flag("--fsdp-version", "FSDP generation for --strategy fsdp-* (2 = fully_shard, needed by --cp/--tp with FSDP; "
         "default 1)", int, choices=FSDP_VERSIONS, default=1, spec_fields=("fsdp_version",)),
    Flag("--allow-cross-node-tp", "let --tp exceed the GPUs of one node (all-reduces over the network)",
         action="store_true", spec_fields=("allow_cross_node_tp",)),
    Flag("--json", "print one JSON object (sizes in bytes)", action="store_true"),
    Flag("--profile", "use the rates `dsadvise calibrate` measured (a profile YAML) for step times and speeds",
         metavar="PATH"),
    # estimate
    Flag("--prompt-len", "--task infer: prompt tokens of --seq-len (sliding-window KV cache; default: all)",
         positive_int, spec_fields=("prompt_len",), wizard_field="prompt_len"),
    Flag("--sub-group-size", "DeepSpeed ZeRO-3 sub_group_size in elements (default 1e9)", positive_int,
         spec_fields=("sub_group_size",)),
    # recommend
    Flag("--margin", "safety margin as a fraction of VRAM kept free (default from rules)", float),
    Flag("--max-micro-batch", "largest micro-batch searched; --micro-batch is the smallest (default: global "
         "batch / GPUs, else the rules' const.max_micro_batch)", positive_int),
    Flag("--rules", "extra rule file or folder, on top of the bundled rules/ (repeatable)", action="append",
         metavar="PATH"),
    # generate / check / dry-run / wizard
    Flag("--out", "folder to write (must be empty unless --force)", metavar="DIR"),
    Flag("--force", "overwrite the files in a non-empty DIR", action="store_true"),
    Flag("--hf-trainer", "DeepSpeed batch sizes and clipping as \"auto\", filled by the HF Trainer",
         action="store_true"),
    Flag("--main-process-ip", "multi-node: hostname or IP of node 0 (default 127.0.0.1)", default="127.0.0.1"),
    Flag("--main-process-port", "rendezvous port (default 29500)", port, default=29500),
    Flag("--no-engine-check", "skip loading the rendered files in accelerate and DeepSpeed before writing",
         action="store_true"),
    Flag("--strict", "exit 1 on warnings too (for CI)", action="store_true"),
    Flag("--script", "the training script (check: a custom loop around deepspeed.initialize cannot take \"auto\")",
         metavar="PY"),
    Flag("--timeout", "seconds for the whole dry-run (default 300)", seconds, default=300),
    Flag("--keep-logs", "copy the launch log and per-rank results here", metavar="LOGDIR"),
    # calibrate
    Flag("--quick", "small sizes and few repeats (seconds, less stable figures)", action="store_true"),
    Flag("--device", "what the matmuls run on (default: CUDA where torch sees it, else the CPU)",
         choices=("auto", "cuda", "cpu"), default="auto"),
    Flag("--no-collectives", "skip the all-reduce / all-gather measurement", action="store_true"),
    Flag("--no-deepspeed-adam", "skip DeepSpeedCPUAdam (its first use JIT-compiles an op for minutes)",
         action="store_true"),
    # issue 16 (helper F): training frameworks and presets
    Flag("--framework", "also write that framework's own config (LLaMA-Factory YAML, HF Trainer / TRL arguments, "
         "axolotl YAML) carrying the estimated settings (default accelerate: no extra file)", choices=FRAMEWORKS,
         default="accelerate", spec_fields=("framework",), wizard_field="framework"),
    Flag("--preset", "LLaMA-Factory-style preset: sets method, strategy, offload and checkpointing unless given "
         "(see docs/frameworks.md)", choices=PRESETS),
)

# Spec field -> the flag users know it by, so that API errors name what they typed.
SPEC_FIELD_FLAGS: dict[str, str] = {s: f.flag for f in FLAGS.values() for s in f.spec_fields}
# Wizard field -> the flag it stands for (first flag naming it), and flag -> wizard field.
WIZARD_FIELD_FLAGS: dict[str, str] = {}
for _f in FLAGS.values():
    if _f.wizard_field and _f.wizard_field not in WIZARD_FIELD_FLAGS:
        WIZARD_FIELD_FLAGS[_f.wizard_field] = _f.flag
FLAG_WIZARD_FIELDS: dict[str, str] = {f.flag: f.wizard_field for f in FLAGS.values() if f.wizard_field}


def add(parser, names: Iterable[str], **overrides: dict) -> None:
    """Add the table's ``names`` to ``parser``; ``overrides`` maps a flag's dest to argparse overrides."""
    for name in names:
        flag = FLAGS[name]
        flag.add(parser, **overrides.get(flag.dest, {}))


MODEL_FLAGS = ("--model",)
HARDWARE_FLAGS = ("--gpus", "--nodes", "--vram", "--gpu", "--cpu-ram", "--nvme-path", "--nvme-size")
TRAINING_FLAGS = ("--task", "--seq-len", "--micro-batch", "--global-batch", "--precision", "--optimizer",
                  "--method", "--lora-rank", "--lora-dropout", "--lora-targets", "--freeze-layers", "--checkpointing", "--attention",
                  "--loss", "--loss-chunks", "--offload-activations", "--expandable-segments", "--no-double-quant",
                  "--tiled-mlp", "--torch-version", "--transformers-version",
                  "--base-dtype", "--qlora-quantizer", "--sync-each-batch", "--model-code",   # issue 17
                  "--checkpoint-save",   # issue 17
                  "--deepspeed-version",   # session 10 (helper R)
                  "--batch-lengths")   # issue 17 (helper L)
STRATEGY_FLAGS = ("--strategy", "--offload-optimizer", "--offload-param", "--bucket-sizes")
LAYOUT_FLAGS = ("--tp", "--sp", "--cp", "--dp-replicate", "--fsdp-version", "--allow-cross-node-tp")   # issue 15
# the flags `estimate` and `recommend` add to the problem flags (the wizard places each group on its step)
ESTIMATE_FLAGS = ("--profile", "--prompt-len", "--sub-group-size", "--preset")
RECOMMEND_FLAGS = ("--margin", "--max-micro-batch", "--rules", "--profile")
# Flags of estimate / recommend with no wizard field, and why (CLI-only switches); every other one has a field
# (hand-made: wizard_field above; else generated in an Advanced section, advisor/tui/form.py)
CLI_ONLY: dict[str, str] = {
    "--json": "an output format: the wizard shows the result on screen",
    "--profile": "a file given once, at start: `dsadvise wizard --profile PATH`",
    "--rules": "extra rule files for the recommender's search: a command-line option",
    "--preset": "a shortcut that fills the method, strategy, offload and checkpointing fields the wizard shows",
}


def add_problem_flags(p: argparse.ArgumentParser, *, with_strategy: bool) -> None:
    """Flags describing model, hardware and training (and strategy), shared by estimate, recommend, generate.

    Without a strategy (``recommend``), ``--method`` also takes ``auto`` and ``--checkpointing`` has no
    default (the search decides).
    """
    add(p.add_argument_group("model"), MODEL_FLAGS, model={"required": True})
    add(p.add_argument_group("hardware"), HARDWARE_FLAGS)
    training_overrides = {} if with_strategy else {"method": {"choices": METHODS + (AUTO,)},
                                                   "checkpointing": {"default": None}}
    add(p.add_argument_group("training"), TRAINING_FLAGS, **training_overrides)
    if with_strategy:
        add(p.add_argument_group("strategy"), STRATEGY_FLAGS)
        add(p.add_argument_group("parallel layout"), LAYOUT_FLAGS)
    add(p, ("--json",))


def profile(args: argparse.Namespace):
    """The machine profile ``--profile`` names (:class:`advisor.profile.MachineProfile`), or None."""
    path = getattr(args, "profile", None)
    if not path:
        return None
    from ..profile import load_profile      # pydantic only when a profile is given

    return load_profile(path)


def problem_kwargs(args: argparse.Namespace) -> dict:
    """The keyword arguments of :func:`advisor.api.estimate` that the problem flags give (no strategy)."""
    return dict(gpus=args.gpus, nodes=args.nodes, vram=args.vram, gpu=args.gpu, cpu_ram=args.cpu_ram,
                nvme_path=args.nvme_path, nvme_size=args.nvme_size, task=args.task, seq_len=args.seq_len,
                micro_batch=args.micro_batch, global_batch=args.global_batch, precision=args.precision,
                optimizer=args.optimizer, method=args.method, lora_rank=args.lora_rank, lora_dropout=args.lora_dropout,
                lora_targets=tuple(t.strip() for t in args.lora_targets.split(",") if t.strip()),
                attention=args.attention, freeze_layers=args.freeze_layers, loss=args.loss,
                loss_chunks=args.loss_chunks, offload_activations=args.offload_activations,
                expandable_segments=args.expandable_segments, double_quant=not args.no_double_quant,
                tiled_mlp=getattr(args, "tiled_mlp", False),
                torch_version=getattr(args, "torch_version", None),                 # issue 17 (helper T)
                transformers_version=getattr(args, "transformers_version", None),
                base_dtype=getattr(args, "base_dtype", "16-bit"),
                qlora_quantizer=getattr(args, "qlora_quantizer", "transformers"),   # issue 17 (helper L)
                model_code=getattr(args, "model_code", "transformers"),   # issue 17 (helper G)
                sync_each_batch=getattr(args, "sync_each_batch", False),
                checkpoint_save=getattr(args, "checkpoint_save", "auto"),   # issue 17
                deepspeed_version=getattr(args, "deepspeed_version", None),   # session 10 (helper R)
                batch_lengths=getattr(args, "batch_lengths", "fixed"))   # issue 17 (helper L)


def layout_kwargs(args: argparse.Namespace) -> dict:
    """The keyword arguments of :func:`advisor.api.estimate` the layout flags give (issue 15; defaults when a
    command has no such flags)."""
    return dict(tp=getattr(args, "tp", 1), sp=getattr(args, "sp", 1), cp=getattr(args, "cp", 1),
                dp_replicate=getattr(args, "dp_replicate", 1), fsdp_version=getattr(args, "fsdp_version", 1),
                allow_cross_node_tp=getattr(args, "allow_cross_node_tp", False))


def refuse_estimate_only(kw: dict[str, Any], command: str) -> None:
    """Raise InputError (one line, naming the flag) when ``kw`` (flag dests -> values) sets a flag whose
    non-default value only ``dsadvise estimate`` models (the table's ``estimate_only``); ``command`` says what
    refuses it and why, e.g. "recommend searches transformers/PEFT setups"."""
    for f in FLAGS.values():
        if f.estimate_only is None or kw.get(f.dest, f.default) == f.default:
            continue
        from ..errors import InputError

        raise InputError(f"{kw[f.dest]} ({f.estimate_only}) is for `dsadvise estimate` only: {command}; "
                         "drop it, or estimate with it", field=f.flag)
