"""The facts rules can read, their types, and the search stage at which each becomes known.

Names are dotted and flat in the dicts handed to the engine (``facts["hardware.nodes"]``). Sizes are bytes,
times seconds, bandwidths GB/s (10^9 bytes/s), counts plain numbers. ``?`` marks a fact that may be
``null`` (not given / not applicable). Stages: 0 the problem (model, hardware, inputs), 1 a parallel layout
(strategy + offload), 2 a full configuration (+ precision, method, checkpointing), 3 a sized candidate
(+ micro-batch, memory estimate, step time). A rule is evaluated at the latest stage of the facts it reads.
"""

from __future__ import annotations

from typing import get_args

from .. import choices

# name: (type, stage, description)
FACTS: dict[str, tuple[str, int, str]] = {
    "model.name": ("string", 0, "catalog name or what the size resolved to"),
    "model.family": ("string", 0, "HF model_type: llama, mistral, gpt2, ..."),
    "model.source": ("string", 0, "catalog | size | config"),
    "model.parameters": ("number", 0, "total parameters (elements)"),
    "model.active_parameters": ("number", 0, "parameters a token passes through (MoE: top-k experts)"),
    "model.layers": ("number", 0, "decoder layers"),
    "model.hidden_size": ("number", 0, "hidden width"),
    "model.vocab_size": ("number", 0, "vocabulary size"),
    "model.is_moe": ("bool", 0, "mixture of experts"),
    "model.position": ("string", 0, "rope | learned | alibi (position encoding)"),
    "model.max_position_embeddings": ("number", 0, "longest sequence the config declares"),
    "model.attention_heads": ("number", 0, "query heads (issue 15: tp and sp must divide them)"),
    "model.kv_heads": ("number", 0, "key-value heads"),
    "hardware.gpu": ("string?", 0, "GPU catalog name; null when only --vram was given"),
    "hardware.gpu_known": ("bool", 0, "a catalog GPU was given (else a generic GPU class is assumed)"),
    "hardware.vendor": ("string", 0, "nvidia | amd"),
    "hardware.gpus_per_node": ("number", 0, "GPUs per node"),
    "hardware.nodes": ("number", 0, "nodes"),
    "hardware.world_size": ("number", 0, "GPUs in all"),
    "hardware.multi_node": ("bool", 0, "more than one node"),
    "hardware.vram_bytes": ("number", 0, "memory of one GPU, bytes"),
    "hardware.usable_vram_bytes": ("number", 0, "VRAM minus the safety margin, bytes"),
    "hardware.bf16": ("bool", 0, "the GPU computes in bf16 (Ampere / CDNA2 or newer)"),
    "hardware.link": ("string", 0, "nvlink | pcie | infinity-fabric (between GPUs of a node)"),
    "hardware.intra_node_bandwidth_gbps": ("number", 0, "per GPU, one direction, GB/s"),
    "hardware.inter_node_bandwidth_gbps": ("number", 0, "per node network, GB/s"),
    "hardware.pcie_bandwidth_gbps": ("number", 0, "GPU-host link, GB/s"),
    "hardware.cpu_ram_bytes": ("number?", 0, "CPU RAM per node; null when not given"),
    "hardware.nvme_path": ("string?", 0, "NVMe mount for ZeRO-Infinity; null when not given"),
    "hardware.nvme_bytes": ("number?", 0, "free NVMe per node; null when not given"),
    "training.task": ("string", 0, "train | infer"),
    "training.seq_len": ("number", 0, "tokens per sample"),
    "training.micro_batch": ("number", 0, "smallest micro-batch the search may use (--micro-batch)"),
    "training.max_micro_batch": ("number", 0, "largest micro-batch the search may use"),
    "training.global_batch": ("number?", 0, "samples per optimizer step (--global-batch); null when not given"),
    "training.precision": ("string?", 0, "precision the user fixed; null = chosen by the rules"),
    "training.method": ("string", 0, "full | lora | qlora | freeze | auto"),
    "training.checkpointing": ("string?", 0, "checkpointing the user fixed; null = searched"),
    "training.optimizer": ("string", 0, "adamw | adamw-8bit | adafactor | sgd | lion | lamb"),
    "training.attention": ("string", 0, "eager | sdpa | flash"),
    "training.loss": ("string", 0, "plain | chunked | fused-linear | legacy-inline | trl-head (cross-entropy kernel, --loss)"),
    "training.lora_rank": ("number", 0, "LoRA rank"),
    "training.tiled_mlp": ("bool", 0, "ALST TiledMLP is estimated (--tiled-mlp)"),   # issue 15 (helper T)
    "training.lora_head": ("bool", 0, "LoRA targets name the lm_head (--lora-targets ...,lm_head)"),   # issue 17 (L)
    # issue 17 (L): variable-length batches (advisor/memory/batch_lengths.py)
    "training.batch_lengths": ("string", 0, "fixed | variable (--batch-lengths: each batch padded to its longest "
                                            "sample)"),
    "training.expandable_segments": ("bool", 0, "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True is estimated "
                                                "(--expandable-segments)"),
    "training.margin": ("number", 0, "safety margin, fraction of VRAM kept free"),
    "candidate.strategy": ("string", 1, "single | ddp | zero0..zero3 | fsdp-full | fsdp-grad-op | fsdp-hybrid | "
                                        "fsdp-no-shard"),
    "candidate.backend": ("string", 1, "single | ddp | deepspeed | fsdp"),
    "candidate.zero_stage": ("number?", 1, "DeepSpeed ZeRO stage; null for other backends"),
    "candidate.fsdp_sharding": ("string?", 1, "FSDP sharding strategy; null for other backends"),
    "candidate.offload_optimizer": ("string", 1, "none | cpu | nvme"),
    "candidate.offload_param": ("string", 1, "none | cpu | nvme"),
    "candidate.offload": ("bool", 1, "anything offloaded"),
    "candidate.shards_parameters": ("bool", 1, "ZeRO-3 / FSDP FULL_SHARD / HYBRID_SHARD"),
    # issue 15: tensor / sequence / context parallel layouts
    "candidate.tp_size": ("number", 1, "tensor-parallel degree (1: none)"),
    "candidate.sp_size": ("number", 1, "Ulysses sequence-parallel degree (1: none)"),
    "candidate.cp_size": ("number", 1, "context-parallel (ring attention) degree (1: none)"),
    "candidate.model_parallel": ("bool", 1, "any of tp, sp, cp above 1"),
    "candidate.precision": ("string", 2, "fp32 | fp16 | bf16 | pure-bf16"),
    "candidate.method": ("string", 2, "full | lora | qlora | freeze"),
    "candidate.activation_checkpointing": ("string", 2, "none | selective | full"),
    "candidate.trainable_parameters": ("number", 2, "parameters with gradients and optimizer states"),
    "candidate.micro_batch_size": ("number", 3, "samples per GPU per forward/backward"),
    "candidate.gradient_accumulation_steps": ("number", 3, "micro-steps per optimizer step"),
    "candidate.global_batch_size": ("number", 3, "micro x world x accumulation"),
    "estimate.per_gpu.parameters": ("number", 3, "bytes"),
    "estimate.per_gpu.gradients": ("number", 3, "bytes"),
    "estimate.per_gpu.optimizer_states": ("number", 3, "bytes"),
    "estimate.per_gpu.activations": ("number", 3, "bytes"),
    "estimate.per_gpu.temporaries": ("number", 3, "bytes"),
    "estimate.per_gpu.buffers": ("number", 3, "bytes"),
    "estimate.per_gpu.overhead": ("number", 3, "bytes"),
    "estimate.per_gpu.total": ("number", 3, "bytes, the peak per GPU"),
    "estimate.per_node_cpu.total": ("number", 3, "CPU RAM per node, bytes"),
    "estimate.per_node_cpu.fits": ("bool", 3, "fits the given CPU RAM (true when none was given)"),
    "estimate.per_node_nvme_bytes": ("number", 3, "NVMe per node, bytes"),
    "estimate.headroom_bytes": ("number", 3, "usable VRAM left per GPU (after the margin), bytes"),
    "step.seconds": ("number", 3, "estimated optimizer step time"),
    "step.compute_seconds": ("number", 3, "of which compute"),
    "step.communication_seconds": ("number", 3, "of which collective communication"),
    "step.offload_seconds": ("number", 3, "of which offload traffic and the CPU optimizer step"),
    "step.tokens_per_second": ("number", 3, "throughput of the whole job"),
}

CATALOG: dict[str, str] = {name: spec[0] for name, spec in FACTS.items()}
STAGES = 4
PROBLEM, LAYOUT, CONFIG, SIZED = range(STAGES)

# Settings require/forbid may name: their values, and the stage at which a candidate has them.
# The values come from the specs' Literal types (advisor.choices), the one list of each.
DOMAINS: dict[str, tuple] = {
    "strategy": get_args(choices.StrategyName),
    "backend": get_args(choices.Backend),
    "zero_stage": (0, 1, 2, 3),
    "fsdp_sharding": get_args(choices.FsdpSharding),
    "offload_optimizer": get_args(choices.OffloadTarget),
    "offload_param": get_args(choices.OffloadTarget),
    "precision": get_args(choices.Precision),
    "method": get_args(choices.Method),
    "activation_checkpointing": get_args(choices.Checkpointing),
}
SETTING_STAGE = {"strategy": LAYOUT, "backend": LAYOUT, "zero_stage": LAYOUT, "fsdp_sharding": LAYOUT,
                 "offload_optimizer": LAYOUT, "offload_param": LAYOUT, "precision": CONFIG, "method": CONFIG,
                 "activation_checkpointing": CONFIG}


def fact_stage(name: str) -> int:
    """The stage at which a fact is known (constants: the problem stage)."""
    spec = FACTS.get(name)
    return spec[1] if spec else PROBLEM


def when_stage(rule) -> int:
    """The stage a rule's condition (and message placeholders) can first be evaluated at."""
    return max((fact_stage(f) for f in rule.facts), default=PROBLEM)


def rule_stage(rule) -> int:
    """When a rule runs: its condition's stage, and for require/forbid at least its settings' stage.

    require/forbid rules whose condition reads problem facts only are applied once, to the search space
    (see :func:`advisor.ruleengine.engine.narrow_domains`), and are given stage PROBLEM.
    """
    stage = when_stage(rule)
    if rule.effect in ("require", "forbid") and stage > PROBLEM:
        stage = max([stage] + [SETTING_STAGE[s] for s in rule.settings])
    return stage
