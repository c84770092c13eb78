"""The allowed values of the spec fields, as ``Literal`` types (no pydantic here, so that the flag table and
the wizard's form can read them with :func:`typing.get_args` without loading pydantic)."""

from __future__ import annotations

from typing import Literal

Precision = Literal["fp32", "fp16", "bf16", "pure-bf16"]
Optimizer = Literal["adamw", "adamw-8bit", "adafactor", "sgd", "lion", "lamb"]
Method = Literal["full", "lora", "qlora", "freeze"]
Checkpointing = Literal["none", "full", "selective"]
Attention = Literal["eager", "sdpa", "flash"]
Task = Literal["train", "infer"]
OffloadTarget = Literal["none", "cpu", "nvme"]
Backend = Literal["single", "ddp", "deepspeed", "fsdp"]
FsdpSharding = Literal["FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD"]
StrategyName = Literal["single", "ddp", "zero0", "zero1", "zero2", "zero3",
                       "fsdp-full", "fsdp-grad-op", "fsdp-hybrid", "fsdp-no-shard"]
BucketSizes = Literal["auto", "default"]
Loss = Literal["plain", "chunked", "fused-linear",
               "legacy-inline",   # issue 17 (G3): transformers <= 4.45's inline causal-LM loss
               "trl-head"]        # TRL >= 1.16's tiled fused LM head (SFTTrainer, DPOTrainer: add_fused_lm_head)
# issue 15 (tensor / sequence / context parallelism): FSDP generation (accelerate fsdp_version; FSDP2 = fully_shard)
FsdpVersion = Literal[1, 2]

# issue 17 (helper L): who quantizes a QLoRA model (transformers' BitsAndBytesConfig, or lightning's
# BitsandbytesPrecision as litgpt --quantize bnb.nf4 uses it)
QloraQuantizer = Literal["transformers", "lightning"]
# issue 17 (helper G): whose model code runs the forward (transformers' modeling files + PEFT, or litgpt's GPT)
ModelCode = Literal["transformers", "litgpt"]

# issue 16 (helper F): training frameworks and presets
Framework = Literal["accelerate", "hf-trainer", "trl", "llamafactory", "axolotl"]
Preset = Literal["lora", "qlora", "full", "z2-offload", "z3", "minimal"]

# issue 17: the dtype a LoRA base is loaded in (from_pretrained torch_dtype): 16-bit, or fp32 under autocast
BaseDtype = Literal["16-bit", "fp32"]

# issue 17: how checkpoints are saved: auto (what dsadvise renders: ZeRO-3 consolidates a 16-bit model, FSDP saves
# shards), sharded (each rank its shard), consolidated (ZeRO-3 gather_16bit_weights_on_model_save, FSDP
# FULL_STATE_DICT: the whole model, and the optimizer state, gathered into rank 0's CPU RAM)
CheckpointSave = Literal["auto", "sharded", "consolidated"]

# issue 17 (helper L): how each batch is padded: fixed (every batch --seq-len tokens: packed, or padded to the
# maximum) or variable (each batch padded to its own longest sample, --seq-len the maximum;
# advisor/memory/batch_lengths.py)
BatchLengths = Literal["fixed", "variable"]
