"""dsadvise's side of a comparison: the estimator's inputs built from a case (never part of a cache key)."""

from __future__ import annotations

from typing import Any

from advisor.architecture import Architecture
from advisor.hf_config import architecture_from_hf_config
from advisor.specs import LoraSpec, TrainingSpec

from benchmarks.harness.cases import Case

LORA_RANK = 16  # the rank the harness's LoRA stand-in uses and the estimate is asked for

# compute mode of the harness -> dsadvise's --precision (single GPU / DDP: autocast; DeepSpeed: half)
PRECISION = {"fp32": "fp32", "autocast-bf16": "bf16", "autocast-fp16": "fp16", "half-bf16": "bf16",
             "half-fp16": "fp16"}


def architecture(case: Case, num_layers: int | None = None) -> Architecture:
    """The architecture dsadvise reads from the case's resolved config (``num_layers`` overrides depth)."""
    arch = architecture_from_hf_config(case.config(), source=case.model)
    return arch if num_layers is None else arch.model_copy(update={"num_layers": num_layers})


def training_spec(case: Case) -> TrainingSpec:
    """The training settings of a model case as dsadvise's spec."""
    s = case.settings
    return TrainingSpec(seq_len=s["seq"], micro_batch_size=s["batch"], method=s.get("method", "full"),
                        activation_checkpointing=s.get("ckpt", "none"), attention=s["attn"],
                        lora=LoraSpec(rank=LORA_RANK, target_modules=("all-linear",)))


def estimate_for(case: Case, *, gpus: int, strategy: str, num_layers: int | None = None, vram: float = 1024,
                 **kw: Any):
    """``advisor.api.estimate`` for the case (AdamW; ``vram`` GiB per GPU, large so nothing is refused)."""
    from advisor.api import estimate
    from advisor.catalog.models import ResolvedModel

    model = ResolvedModel(name=case.model, architecture=architecture(case, num_layers), source="config", note="")
    tr = training_spec(case)
    return estimate(model, gpus=gpus, vram=vram, seq_len=tr.seq_len, micro_batch=tr.micro_batch_size,
                    precision=PRECISION[case.settings["mode"]], optimizer="adamw", method=tr.method,
                    lora_rank=tr.lora.rank, lora_targets=tr.lora.target_modules,
                    checkpointing=tr.activation_checkpointing, attention=tr.attention, strategy=strategy, **kw)


def layers_that_save(num_layers: int, case: Case) -> int:
    """Decoder layers whose saved tensors the full model holds (frozen layers in front save nothing)."""
    tr = training_spec(case)
    if tr.method == "freeze" and tr.activation_checkpointing != "full":
        return min(tr.freeze_trainable_layers, num_layers)
    return num_layers
