"""Bytes per parameter of each model state, by precision, optimizer, method and backend.

Every number is bytes per element. The split follows ZeRO (Rajbhandari et al. 2020, §3.1): mixed
precision Adam keeps 2Ψ fp16/bf16 weights + 2Ψ fp16/bf16 gradients + KΨ optimizer states, K = 12
(fp32 master weights 4 + momentum 4 + variance 4).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..specs import StrategySpec, TrainingSpec

# QLoRA NF4 with double quantization: 4 bits + 8-bit absmax per 64 weights + fp32 absmax per 256 blocks
# = 4 + 8/64 + 32/(64*256) bits = 4.127 bits/param (Dettmers et al. 2023, QLoRA §3 "Double Quantization").
NF4_DOUBLE_QUANT_BYTES = (4 + 8 / 64 + 32 / (64 * 256)) / 8
# QLoRA without double quant: 4 + 32/64 bits.
NF4_BYTES = (4 + 32 / 64) / 8


@dataclass(frozen=True)
class StateBytes:
    """Per-element bytes of each state for one configuration."""

    weight: float            # resident trainable weights as the model holds them
    frozen_weight: float     # frozen (non-trainable) base weights (LoRA/QLoRA/freeze)
    gradient: float          # gradient of each trainable parameter, in the weight's dtype
    master: float            # fp32 master copy kept by the optimizer wrapper (DeepSpeed fp16/bf16)
    optimizer: float         # optimizer moments per trainable element (Adafactor: 0, counted by shape)
    step_gradient: float     # fp32 gradient copy the optimizer step materializes (DeepSpeed mixed precision)
    compute_dtype_bytes: int  # bytes of the dtype activations are computed in


def is_half_model(training: TrainingSpec, strategy: StrategySpec) -> bool:
    """True when the model's own weights are 16-bit: DeepSpeed fp16/bf16 (it casts the module) or pure bf16."""
    if training.precision == "pure-bf16":
        return True
    return strategy.backend == "deepspeed" and training.precision in ("fp16", "bf16")


def fp32_lora_base(training: TrainingSpec, strategy: StrategySpec) -> bool:
    """True when a LoRA base is held in fp32 under fp16/bf16 autocast (``--base-dtype fp32``: transformers v4's
    ``from_pretrained`` without ``torch_dtype``). DeepSpeed fp16/bf16 casts the module to 16 bit anyway
    (engine.py ``_configure_distributed_model``), so there it stays 16-bit."""
    return (training.base_dtype == "fp32" and training.method == "lora"
            and training.precision in ("fp16", "bf16") and strategy.backend != "deepspeed")


def zero3_keeps_fp32_lora_adapters(training: TrainingSpec) -> bool:
    """True when DeepSpeed ZeRO-3 holds LoRA adapters in fp32 under 16-bit training: PEFT >= 0.12 builds them fp32
    (``autocast_adapter_dtype``) on a base built under ``zero.Init`` (``from_pretrained`` under a ZeRO-3 config; a
    QLoRA base is not), and DeepSpeed >= 0.19.2 casts no parameter of a zero.Init'ed model (engine.py
    ``_cast_module_mixed_precision``, deepspeedai/DeepSpeed#8066; earlier releases ``module.bfloat16()``): 4-byte
    parameter partitions and ``param.grad`` (measured on 0.19.8: tests/memory/test_checkpoint_save_engine.py); the
    reduce bucket and the gradient partitions keep the communication / accumulation dtype, 16-bit (stage3.py
    ``ipg_buckets`` by ``communication_data_type``, ``grad_partitions_flat_buffer`` by
    ``gradient_accumulation_dtype``). No ``--deepspeed-version``: True (the larger)."""
    from ..stacks import lora_adapters_in_base_dtype, zero_init_keeps_fp32_adapters

    return (training.method == "lora" and training.precision in ("fp16", "bf16", "pure-bf16")
            and not lora_adapters_in_base_dtype(training.transformers_version)
            and zero_init_keeps_fp32_adapters(training.deepspeed_version))


def zero3_fp32_lora_adapters(training: TrainingSpec, strategy: StrategySpec) -> bool:
    """:func:`zero3_keeps_fp32_lora_adapters` on a DeepSpeed ZeRO-3 strategy."""
    return strategy.backend == "deepspeed" and strategy.zero_stage == 3 and zero3_keeps_fp32_lora_adapters(training)


def fp32_qlora_rest(training: TrainingSpec, strategy: StrategySpec) -> bool:
    """True when a QLoRA model's non-quantized weights (embeddings, norms, an untied lm_head) are fp32 under
    fp16/bf16 autocast (``--method qlora --base-dtype fp32``: PEFT's ``prepare_model_for_kbit_training`` casts every
    non-INT8/non-Params4bit 16-bit parameter to fp32, peft/utils/other.py; or ``from_pretrained`` with
    ``dtype=float32`` and a BitsAndBytesConfig). One GPU or DDP only (core.check_compatible refuses the rest)."""
    return (training.base_dtype == "fp32" and training.method == "qlora"
            and training.precision in ("fp16", "bf16") and strategy.backend in ("single", "ddp"))


def optimizer_state_bytes(optimizer: str, state_bytes: int) -> float:
    """Per-element bytes of optimizer moments; ``state_bytes`` is 4 (fp32 states) or 2 (pure bf16)."""
    return {
        "adamw": 2 * state_bytes,      # exp_avg + exp_avg_sq (torch.optim.AdamW / DeepSpeed FusedAdam)
        "lamb": 2 * state_bytes,       # LAMB keeps Adam's two moments (You et al. 2019, Alg. 2)
        "lion": state_bytes,           # Lion keeps one momentum (Chen et al. 2023, Alg. 1)
        "sgd": state_bytes,            # momentum_buffer (torch.optim.SGD with momentum)
        # bitsandbytes AdamW8bit: two uint8 moments + one fp32 absmax per 2048-element block each
        # (Dettmers et al. 2022, 8-bit Optimizers via Block-wise Quantization).
        "adamw-8bit": 2 * (1 + 4 / 2048),
        "adafactor": 0.0,              # factored second moment: counted per matrix shape, see model_states
    }[optimizer]


def state_bytes(training: TrainingSpec, strategy: StrategySpec) -> StateBytes:
    """Bytes per element of weights, gradients, master copy and optimizer moments for this setup."""
    p = training.precision
    half = is_half_model(training, strategy)
    deepspeed_mixed = strategy.backend == "deepspeed" and p in ("fp16", "bf16")
    # Activations' dtype: 16-bit for fp16/bf16 (autocast or half model), fp32 otherwise.
    compute = 4 if p == "fp32" else 2
    opt_state = 2 if p == "pure-bf16" else 4

    if training.method in ("lora", "qlora"):
        # PEFT keeps adapter weights in fp32 under autocast (peft `autocast_adapter_dtype=True`), so the
        # trainable part is fp32 with fp32 grads; DeepSpeed half models hold them at 2 bytes plus fp32 master.
        weight = 2 if half else 4
        nf4 = NF4_DOUBLE_QUANT_BYTES if getattr(training, "double_quant", True) else NF4_BYTES
        frozen = nf4 if training.method == "qlora" else (4 if p == "fp32" or fp32_lora_base(training, strategy) else 2)
    else:
        weight = 2 if half else 4
        frozen = weight
    return StateBytes(
        weight=weight,
        frozen_weight=frozen,
        gradient=weight,
        # DeepSpeed fp16/bf16 optimizer wrappers keep fp32 master weights (FP16_Optimizer, ZeRO stage_1_and_2).
        master=4 if deepspeed_mixed else 0,
        optimizer=optimizer_state_bytes(training.optimizer, opt_state),
        # ZeRO stage_1_and_2.step() and stage3._prepare_fp32_grad_for_sub_group() cast the 16-bit gradient
        # partition to fp32 for the optimizer; DeepSpeed's estimators count these 4 bytes as a model state.
        step_gradient=4 if deepspeed_mixed else 0,
        compute_dtype_bytes=compute,
    )
