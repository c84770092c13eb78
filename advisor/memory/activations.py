"""TEMPORARY textbook activation estimate; replaced by the per-architecture accounting (issue 3)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from ..architecture import Architecture
from ..specs import TrainingSpec

ComputeMode = Literal["fp32", "autocast-fp16", "autocast-bf16", "half-fp16", "half-bf16"]


class ActivationEstimate(BaseModel):
    model_config = ConfigDict(frozen=True)
    activations: int
    temporaries: int
    breakdown: dict[str, int]


def compute_mode(precision: str, backend: str) -> ComputeMode:
    if precision == "fp32":
        return "fp32"
    if precision == "pure-bf16":
        return "half-bf16"
    kind = "half" if backend == "deepspeed" else "autocast"
    return f"{kind}-{precision}"  # type: ignore[return-value]


def activation_memory(arch: Architecture, training: TrainingSpec, mode: ComputeMode) -> ActivationEstimate:
    s, b, h, a = training.seq_len, training.micro_batch_size, arch.hidden_size, arch.num_attention_heads
    scale = 2 if mode == "fp32" else 1
    # Korthikanti et al. 2022 eq. (1): s*b*h*(34 + 5*a*s/h) bytes per layer in 16-bit.
    per_layer = s * b * h * (34 + 5 * a * s / h) * scale
    if training.activation_checkpointing == "full":
        per_layer_kept = 2 * s * b * h * scale
    else:
        per_layer_kept = per_layer
    logits = s * b * arch.vocab_size * (2 * scale + 4)
    layers = int(per_layer_kept * arch.num_layers)
    return ActivationEstimate(activations=layers + logits, temporaries=int(per_layer) + logits,
                              breakdown={"layers": layers, "logits_and_loss": logits})
