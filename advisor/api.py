"""The Python API: build validated specs from plain arguments and estimate memory in one call.

>>> from advisor import estimate
>>> est = estimate("7B", gpus=4, vram=24, strategy="zero3")
>>> est.per_gpu.total          # bytes
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ValidationError

from .cli.flags import SPEC_FIELD_FLAGS
from .catalog.models import ResolvedModel, resolve_model
from .errors import InputError, did_you_mean
from .layout import check_layout, data_parallel_size
from .estimate_result import Estimate
from .specs import STRATEGY_NAMES, GiB, HardwareSpec, LoraSpec, StrategySpec, TrainingSpec

# Spec field -> the CLI flag users know it by, so errors name what they typed (from the one flag table).
FLAG_NAMES = SPEC_FIELD_FLAGS


def input_error(exc: ValidationError) -> InputError:
    """Turn a pydantic error into one line naming the flag and the allowed values or range."""
    err = exc.errors()[0]
    loc = [str(x) for x in err.get("loc", ()) if not str(x).isdigit()]
    field = FLAG_NAMES.get(loc[-1], loc[-1]) if loc else None
    msg = err.get("msg", "invalid value")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    given = err.get("input")
    if loc and not isinstance(given, dict) and given is not None:
        if loc[-1].endswith("_bytes") and isinstance(given, (int, float)):
            given = f"{given / GiB:g} GiB"
        msg = f"{msg} (got {given!r})"
    return InputError(msg, field=field)


def _gib(value: float | None, flag: str) -> int | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"expected a number of GiB, got {value!r}", field=flag) from None
    if not v > 0 or v != v or v == float("inf"):
        raise InputError(f"must be a positive number of GiB (got {value!r})", field=flag)
    if v > 1024 * 1024:
        raise InputError(f"{v:g} GiB is not a plausible size", field=flag)
    return int(v * GiB)


def build_hardware(gpus: int = 1, nodes: int = 1, vram: float | None = None, gpu: str | None = None,
                   cpu_ram: float | None = None, nvme_path: str | None = None,
                   nvme_size: float | None = None) -> HardwareSpec:
    """HardwareSpec from CLI-style arguments: VRAM/CPU RAM/NVMe in GiB, or a GPU catalog name."""
    info = None
    if gpu:
        from .catalog.gpus import resolve_gpu   # here: a start given --vram alone imports no GPU catalog code
        info = resolve_gpu(gpu)
    vram_bytes = _gib(vram, "--vram")
    if vram_bytes is None:
        if info is None:
            raise InputError("give --vram (GiB per GPU) or --gpu (a catalog name, see `dsadvise gpus`)",
                             field="--vram")
        vram_bytes = info.memory_bytes
    try:
        return HardwareSpec(gpus_per_node=gpus, nodes=nodes, vram_bytes=vram_bytes, gpu=info,
                            cpu_ram_bytes=_gib(cpu_ram, "--cpu-ram"), nvme_path=nvme_path,
                            nvme_bytes=_gib(nvme_size, "--nvme-size"))
    except ValidationError as exc:
        raise input_error(exc) from None


DEFAULT_SEQ_LEN = 2048     # tokens: the default --seq-len, capped by the model's context


def resolve_seq_len(model: ResolvedModel, seq_len: int | None) -> tuple[int, str | None]:
    """(sequence length in tokens, the note saying it was assumed): ``seq_len`` when given, else the smaller of
    DEFAULT_SEQ_LEN and the model's context (max_position_embeddings)."""
    if seq_len is not None:
        return seq_len, None
    context = model.architecture.max_position_embeddings
    used = min(DEFAULT_SEQ_LEN, context)
    why = f"{model.name}'s context" if used < DEFAULT_SEQ_LEN else "the default"
    return used, (f"sequence length {used} tokens ({why}; --seq-len not given: the smaller of {DEFAULT_SEQ_LEN} "
                  f"and the model's context of {context})")


def hardware_notes(hw: HardwareSpec, vram: float | None) -> list[str]:
    """What the hardware flags imply but do not say: --vram replacing the --gpu catalog's memory."""
    if hw.gpu is not None and vram is not None and hw.vram_bytes != hw.gpu.memory_bytes:
        return [f"--vram {hw.vram_bytes / GiB:g} GiB per GPU replaces the {hw.gpu.name}'s "
                f"{hw.gpu.memory_bytes / GiB:g} GiB"]
    return []


def check_against_model(model: ResolvedModel, training: TrainingSpec) -> None:
    """Refuse training settings the model cannot have: freezing more layers than it has (InputError)."""
    layers = model.architecture.num_layers
    if training.method == "freeze" and training.freeze_trainable_layers > layers:
        raise InputError(f"{training.freeze_trainable_layers} trainable layers, but {model.name} has {layers}",
                         field="--freeze-layers")


def build_training(hw: HardwareSpec, *, task: str = "train", seq_len: int = 2048, micro_batch: int = 1,
                   global_batch: int | None = None, precision: str | None = None, optimizer: str = "adamw",
                   method: str = "full", lora_rank: int = 16, lora_targets: Sequence[str] = ("all-linear",),
                   lora_dropout: float = 0.0, checkpointing: str = "none", attention: str = "sdpa",
                   freeze_layers: int = 2, prompt_len: int | None = None, loss: str | None = None,
                   loss_chunks: int = 8, offload_activations: bool = False,
                   expandable_segments: bool = False, double_quant: bool = True,
                   tiled_mlp: bool = False, torch_version: str | None = None,
                   transformers_version: str | None = None,
                   base_dtype: str = "16-bit", qlora_quantizer: str = "transformers",
                   sync_each_batch: bool = False, model_code: str = "transformers",
                   checkpoint_save: str = "auto", deepspeed_version: str | None = None,
                   batch_lengths: str = "fixed") -> TrainingSpec:
    """TrainingSpec; precision defaults to bf16 where the GPU supports it, else fp16; ``loss`` None: ``plain``, or
    ``legacy-inline`` under a ``transformers_version`` that computed the loss inline (advisor/stacks.py)."""
    if loss is None:   # issue 17 (helper T): the loss the stated transformers computes
        from .stacks import default_loss

        try:
            loss = default_loss(transformers_version)
        except ValueError as exc:
            raise InputError(str(exc), field="--transformers-version") from None
    if precision is None:
        precision = "bf16" if hw.bf16_supported else "fp16"
    if attention == "flash" and hw.gpu is not None and hw.gpu.vendor == "nvidia" and not hw.gpu.bf16:
        # FlashAttention-2 runs on Ampere (sm80) or newer (github.com/Dao-AILab/flash-attention README); on NVIDIA
        # bf16 support marks the same generations (Ampere+), which the GPU catalog records.
        raise InputError(f"flash attention needs an Ampere (sm80) or newer GPU; the {hw.gpu.name} is older: use "
                         "sdpa or eager", field="--attention")
    try:
        return TrainingSpec(task=task, seq_len=seq_len, micro_batch_size=micro_batch,
                            global_batch_size=global_batch, precision=precision, optimizer=optimizer,
                            method=method, lora=LoraSpec(rank=lora_rank, target_modules=tuple(lora_targets),
                                                                     dropout=lora_dropout),
                            activation_checkpointing=checkpointing, attention=attention,
                            freeze_trainable_layers=freeze_layers, prompt_len=prompt_len, loss=loss,
                            loss_chunks=loss_chunks, offload_activations=offload_activations,
                            expandable_segments=expandable_segments, double_quant=double_quant,
                            tiled_mlp=tiled_mlp, torch_version=torch_version,
                            transformers_version=transformers_version,
                            base_dtype=base_dtype, qlora_quantizer=qlora_quantizer,
                            sync_each_batch=sync_each_batch, model_code=model_code,
                            checkpoint_save=checkpoint_save,
                            deepspeed_version=deepspeed_version,   # session 10 (helper R)
                            batch_lengths=batch_lengths)   # issue 17 (helper L)
    except ValidationError as exc:
        raise input_error(exc) from None


def build_strategy(hw: HardwareSpec, strategy: str | None = None, offload_optimizer: str = "none",
                   offload_param: str = "none", bucket_sizes: str = "auto", **layout) -> StrategySpec:
    """StrategySpec from a CLI name; the default is ``single`` on one GPU and ``ddp`` on more. ``layout``: the
    issue-15 fields (tp_size, sp_size, cp_size, dp_replicate_size, fsdp_version, allow_cross_node_tp)."""
    name = strategy or ("single" if hw.world_size == 1 else "ddp")
    if name not in STRATEGY_NAMES:
        raise InputError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGY_NAMES)}"
                         f"{did_you_mean(name, STRATEGY_NAMES)}", field="--strategy")
    layout = {k: v for k, v in layout.items() if v is not None}
    try:
        return StrategySpec.from_name(name, offload_optimizer, offload_param, bucket_sizes=bucket_sizes, **layout)
    except ValidationError as exc:
        raise input_error(exc) from None


def check_sync_each_batch(training: TrainingSpec, strategy: StrategySpec, gas: int) -> list[str]:
    """issue 17 (helper L): refuse ``--sync-each-batch`` where it is no FSDP accumulation setting (InputError); the
    note an estimate shows with it. accelerate 1.15 ``Accelerator.accumulate`` skips ``no_sync`` when
    ``sync_each_batch`` in distributed runs only; ``no_sync`` is DDP's ``model.no_sync`` (nothing kept beyond the
    ``param.grad`` DDP always holds: it only delays the all-reduce), FSDP's (unsharded gradients kept), and for
    DeepSpeed ZeRO-2/3 a null context (DeepSpeed accumulates itself, gradient_accumulation_steps)."""
    if not training.sync_each_batch:
        return []
    why = {"single": "one GPU synchronizes nothing (accelerate applies it to distributed runs only)",
           "ddp": "DDP's no_sync keeps no more memory (gradients accumulate in the param.grad DDP always holds), "
                  "sync_each_batch would only all-reduce every micro-batch",
           "deepspeed": "DeepSpeed accumulates gradients itself (ds_config gradient_accumulation_steps)"}
    if training.task != "train":
        raise InputError("a training setting (gradient accumulation), not for --task infer", field="--sync-each-batch")
    if strategy.backend != "fsdp":
        raise InputError(f"an FSDP setting (--strategy fsdp-*), not for {strategy.name}: {why[strategy.backend]}",
                         field="--sync-each-batch")
    if gas <= 1:
        return ["--sync-each-batch has no effect here: no gradient accumulation (one micro-batch per optimizer step)"]
    return [f"--sync-each-batch (accelerate GradientAccumulationPlugin sync_each_batch): each of the {gas} "
            "micro-batches reduce-scatters its gradients, no unsharded gradients are kept under no_sync"]


def layout_fields(tp: int = 1, sp: int = 1, cp: int = 1, dp_replicate: int = 1, fsdp_version: int = 1,
                  allow_cross_node_tp: bool = False) -> dict:
    """The StrategySpec fields of the parallel-layout flags (--tp, --sp, --cp, --dp-replicate, --fsdp-version)."""
    return dict(tp_size=tp, sp_size=sp, cp_size=cp, dp_replicate_size=dp_replicate, fsdp_version=fsdp_version,
                allow_cross_node_tp=allow_cross_node_tp)


def estimate(model: str | ResolvedModel, *, gpus: int = 1, nodes: int = 1, vram: float | None = None,
             gpu: str | None = None, cpu_ram: float | None = None, nvme_path: str | None = None,
             nvme_size: float | None = None, task: str = "train", seq_len: int | None = None, micro_batch: int = 1,
             global_batch: int | None = None, precision: str | None = None, optimizer: str = "adamw",
             method: str = "full", lora_rank: int = 16, lora_targets: Sequence[str] = ("all-linear",),
             lora_dropout: float = 0.0, checkpointing: str = "none", attention: str = "sdpa", strategy: str | None = None,
             offload_optimizer: str = "none", offload_param: str = "none", bucket_sizes: str = "auto",
             freeze_layers: int = 2, prompt_len: int | None = None, sub_group_size: int | None = None,
             loss: str | None = None, loss_chunks: int = 8, offload_activations: bool = False,
             expandable_segments: bool = False, double_quant: bool = True, profile=None,
             tp: int = 1, sp: int = 1, cp: int = 1, dp_replicate: int = 1, fsdp_version: int = 1,
             allow_cross_node_tp: bool = False, tiled_mlp: bool = False, torch_version: str | None = None,
             transformers_version: str | None = None,
             base_dtype: str = "16-bit", qlora_quantizer: str = "transformers",
             sync_each_batch: bool = False, model_code: str = "transformers",
             checkpoint_save: str = "auto", deepspeed_version: str | None = None,
             batch_lengths: str = "fixed") -> Estimate:
    """Per-GPU and per-node-CPU memory (bytes) of training or inference, and its speed: the step time of one
    optimizer step (training) or prefill/decode tokens/s per layout (inference); raises InputError on bad
    input. ``seq_len`` None: the smaller of 2048 and the model's context, said in the estimate's notes.
    ``profile``: a path to, or a :class:`advisor.profile.MachineProfile` from, ``dsadvise calibrate``.
    ``torch_version`` / ``transformers_version``: the stack the run uses (major.minor, advisor/data/stacks.yaml);
    None keeps dsadvise's default behaviour. ``loss`` None: see :func:`build_training`. ``batch_lengths``
    "variable": each batch padded to its own longest sample, ``seq_len`` the longest (the worst of a grid of padded
    lengths, advisor/memory/batch_lengths.py)."""
    from .batching import gradient_accumulation
    from .memory.core import estimate_memory
    from .recommend.speed import with_speed

    resolved = model if isinstance(model, ResolvedModel) else resolve_model(str(model))
    hw = build_hardware(gpus, nodes, vram, gpu, cpu_ram, nvme_path, nvme_size)
    seq_len, seq_note = resolve_seq_len(resolved, seq_len)
    training = build_training(hw, task=task, seq_len=seq_len, micro_batch=micro_batch, global_batch=global_batch,
                              precision=precision, optimizer=optimizer, method=method, lora_rank=lora_rank, lora_dropout=lora_dropout,
                              lora_targets=lora_targets, checkpointing=checkpointing, attention=attention,
                              freeze_layers=freeze_layers, prompt_len=prompt_len, loss=loss,
                              loss_chunks=loss_chunks, offload_activations=offload_activations,
                              expandable_segments=expandable_segments, double_quant=double_quant,
                              tiled_mlp=tiled_mlp, torch_version=torch_version,
                              transformers_version=transformers_version,
                              base_dtype=base_dtype, qlora_quantizer=qlora_quantizer,
                              sync_each_batch=sync_each_batch, model_code=model_code,
                              checkpoint_save=checkpoint_save,   # issue 17
                              deepspeed_version=deepspeed_version,   # session 10 (helper R)
                              batch_lengths=batch_lengths)   # issue 17 (helper L)
    check_against_model(resolved, training)
    strat = build_strategy(hw, strategy, offload_optimizer, offload_param, bucket_sizes,
                           **layout_fields(tp, sp, cp, dp_replicate, fsdp_version, allow_cross_node_tp))
    check_layout(resolved.architecture, hw, training, strat)   # issue 15: one line naming the flag
    if tiled_mlp and strat.backend not in ("deepspeed", "single"):   # issue 15 (helper T): ALST TiledMLP
        raise InputError("needs --strategy zero* (DeepSpeed) or one GPU: TiledMLP's backward tells "
                         "only ZeRO to wait for the last shard (ulysses_sp.py), DDP/FSDP hooks fire per shard",
                         field="--tiled-mlp")
    if sub_group_size is not None:
        strat = strat.model_copy(update={"sub_group_size": sub_group_size})
    gas = 1
    if training.task == "train":   # the one batch rule, checked before any estimate (advisor.batching)
        gas = gradient_accumulation(training.global_batch_size, training.micro_batch_size,
                                    data_parallel_size(hw, strat))   # tp/sp/cp ranks share one batch (advisor/layout.py)
    sync_notes = check_sync_each_batch(training, strat, gas)   # issue 17 (helper L)
    if isinstance(profile, (str, bytes)) or hasattr(profile, "__fspath__"):
        from .profile import load_profile

        profile = load_profile(profile)
    est = with_speed(estimate_memory(resolved, hw, training, strat), resolved, hw, training, strat, profile)
    notes = ([seq_note] if seq_note else []) + hardware_notes(hw, vram) + sync_notes
    if loss is None and training.loss != "plain":   # issue 17 (helper T): implied by --transformers-version
        notes.append(f"--loss {training.loss}: transformers {training.transformers_version} computes the loss inside "
                     f"the model on fp32 logits (--loss not given; advisor/data/stacks.yaml)")
    return est.model_copy(update={"notes": notes + list(est.notes)}) if notes else est
