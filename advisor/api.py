"""The Python API: build validated specs from plain arguments and estimate memory in one call.

>>> from advisor import estimate
>>> est = estimate("7B", gpus=4, vram=24, strategy="zero3")
>>> est.per_gpu.total          # bytes
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ValidationError

from .catalog.gpus import resolve_gpu
from .cli.flags import SPEC_FIELD_FLAGS
from .catalog.models import ResolvedModel, resolve_model
from .errors import InputError, did_you_mean
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
    info = resolve_gpu(gpu) if gpu else None
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


def build_training(hw: HardwareSpec, *, task: str = "train", seq_len: int = 2048, micro_batch: int = 1,
                   global_batch: int | None = None, precision: str | None = None, optimizer: str = "adamw",
                   method: str = "full", lora_rank: int = 16, lora_targets: Sequence[str] = ("all-linear",),
                   lora_dropout: float = 0.0, checkpointing: str = "none", attention: str = "sdpa",
                   freeze_layers: int = 2, loss: str = "plain", loss_chunks: int = 8,
                   offload_activations: bool = False, expandable_segments: bool = False,
                   double_quant: bool = True) -> TrainingSpec:
    """TrainingSpec; precision defaults to bf16 where the GPU supports it, else fp16."""
    if precision is None:
        precision = "bf16" if hw.bf16_supported else "fp16"
    try:
        return TrainingSpec(task=task, seq_len=seq_len, micro_batch_size=micro_batch,
                            global_batch_size=global_batch, precision=precision, optimizer=optimizer,
                            method=method, lora=LoraSpec(rank=lora_rank, target_modules=tuple(lora_targets),
                                                                     dropout=lora_dropout),
                            activation_checkpointing=checkpointing, attention=attention,
                            freeze_trainable_layers=freeze_layers, loss=loss, loss_chunks=loss_chunks,
                            offload_activations=offload_activations, expandable_segments=expandable_segments,
                            double_quant=double_quant)
    except ValidationError as exc:
        raise input_error(exc) from None


def build_strategy(hw: HardwareSpec, strategy: str | None = None, offload_optimizer: str = "none",
                   offload_param: str = "none", bucket_sizes: str = "auto") -> StrategySpec:
    """StrategySpec from a CLI name; the default is ``single`` on one GPU and ``ddp`` on more."""
    name = strategy or ("single" if hw.world_size == 1 else "ddp")
    if name not in STRATEGY_NAMES:
        raise InputError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGY_NAMES)}"
                         f"{did_you_mean(name, STRATEGY_NAMES)}", field="--strategy")
    try:
        return StrategySpec.from_name(name, offload_optimizer, offload_param, bucket_sizes=bucket_sizes)
    except ValidationError as exc:
        raise input_error(exc) from None


def estimate(model: str | ResolvedModel, *, gpus: int = 1, nodes: int = 1, vram: float | None = None,
             gpu: str | None = None, cpu_ram: float | None = None, nvme_path: str | None = None,
             nvme_size: float | None = None, task: str = "train", seq_len: int = 2048, micro_batch: int = 1,
             global_batch: int | None = None, precision: str | None = None, optimizer: str = "adamw",
             method: str = "full", lora_rank: int = 16, lora_targets: Sequence[str] = ("all-linear",),
             lora_dropout: float = 0.0, checkpointing: str = "none", attention: str = "sdpa", strategy: str | None = None,
             offload_optimizer: str = "none", offload_param: str = "none", bucket_sizes: str = "auto",
             freeze_layers: int = 2, loss: str = "plain", loss_chunks: int = 8, offload_activations: bool = False,
             expandable_segments: bool = False, double_quant: bool = True) -> Estimate:
    """Per-GPU and per-node-CPU memory (bytes) of training or inference; raises InputError on bad input."""
    from .batching import gradient_accumulation
    from .memory.core import estimate_memory

    resolved = model if isinstance(model, ResolvedModel) else resolve_model(str(model))
    hw = build_hardware(gpus, nodes, vram, gpu, cpu_ram, nvme_path, nvme_size)
    training = build_training(hw, task=task, seq_len=seq_len, micro_batch=micro_batch, global_batch=global_batch,
                              precision=precision, optimizer=optimizer, method=method, lora_rank=lora_rank, lora_dropout=lora_dropout,
                              lora_targets=lora_targets, checkpointing=checkpointing, attention=attention,
                              freeze_layers=freeze_layers, loss=loss, loss_chunks=loss_chunks,
                              offload_activations=offload_activations, expandable_segments=expandable_segments,
                              double_quant=double_quant)
    strat = build_strategy(hw, strategy, offload_optimizer, offload_param, bucket_sizes)
    if training.task == "train":   # the one batch rule, checked before any estimate (advisor.batching)
        gradient_accumulation(training.global_batch_size, training.micro_batch_size, hw.world_size)
    return estimate_memory(resolved, hw, training, strat)
