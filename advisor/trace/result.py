"""What a trace of a real transformers model yields (pure data: no torch here, so the rest of dsadvise can
read a cached trace without importing torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

TraceMethod = Literal["full", "lora", "freeze"]


class TraceSettings(BaseModel):
    """The settings a trace is taken under (part of its cache key)."""

    model_config = ConfigDict(frozen=True)

    seq_len: int = Field(ge=1)
    batch: int = Field(1, ge=1)
    mode: Literal["fp32", "autocast-bf16", "autocast-fp16", "autocast16-bf16", "autocast16-fp16", "half-bf16",
                  "half-fp16"] = "fp32"
    attention: Literal["sdpa", "eager"] = "sdpa"
    checkpointing: Literal["none", "full"] = "none"
    method: TraceMethod = "full"
    lora_rank: int = Field(16, ge=1)
    lora_targets: tuple[str, ...] = ("all-linear",)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)   # issue 17 (L): PEFT's lora_dropout (nn.Dropout before lora_A)
    freeze_trainable_layers: int = Field(2, ge=1)


class TracedParameters(BaseModel):
    """Parameter element counts of the full-depth model, from its meta-device build (tied weights once)."""

    model_config = ConfigDict(frozen=True)

    total: int
    trainable: int
    embedding: int            # parameters outside the decoder layers, lm_head excluded
    lm_head: int              # 0 when tied
    per_layer: tuple[int, ...]  # every decoder layer, in order
    largest_module: int       # largest set of one module's own parameters
    active_per_token: int     # total minus the experts a token does not reach (= total when dense)


class TraceEvent(BaseModel):
    """One allocation (+bytes) or free (−bytes) of a tensor storage, in program order."""

    model_config = ConfigDict(frozen=True)

    phase: Literal["forward", "backward"]
    delta: int
    op: str               # the aten op whose output allocated it (for a free: the op after which it was seen gone)
    storage: int          # storage id: an allocation and its free share it


class TraceResult(BaseModel):
    """Bytes autograd saves for backward (activations) and the backward transient, extrapolated to full depth.

    ``saved_fixed + sum(saved_per_layer)`` = ``activations``; ``saved_per_layer[i]`` is layer i's share,
    taken from the traced prefix by layer kind (module docstring of :mod:`advisor.trace.tracer`)."""

    model_config = ConfigDict(frozen=True)

    model_type: str
    architecture_class: str
    settings: TraceSettings
    attention: str                            # the implementation traced (eager where the class has no SDPA path)
    num_layers: int
    layer_kinds: tuple[str, ...]              # kind of each decoder layer (signature of its shapes/type)
    traced_prefix: int                       # layers of the model actually traced (largest prefix)
    parameters: TracedParameters
    activations: int                          # saved-for-backward bytes, parameters and weight copies excluded
    saved_fixed: int
    saved_per_layer: tuple[int, ...]
    weight_copies: int                        # autocast's low-precision weight copies saved (full depth)
    logits_held: int                          # the logits tensor the model returns
    temporaries: int                          # backward peak above the end-of-forward level (prefix trace)
    events: tuple[TraceEvent, ...] = ()       # allocation/free sequence of the largest prefix trace
    seconds: float = 0.0
    library_versions: dict[str, str] = {}
