"""Tensor / sequence / context parallel layouts: the mesh sizes and the constraints the engines impose.

The sizes are accelerate's ``ParallelismConfig`` fields (accelerate 1.15 ``accelerate/parallelism_config.py``):
``total_size = dp_replicate_size x dp_shard_size x tp_size x cp_size x sp_size`` must equal the processes, and
``dp_shard`` is what remains of the world here. DeepSpeed builds the same groups from the world size: AutoTP's
``tensor_parallel.autotp_size`` (``runtime/tensor_parallel/config.py`` ``TPTrainingConfig``) and Ulysses'
``sequence_parallel_size`` (``runtime/sequence_parallel/parallel_state_sp.py``: world % sp == 0, dp = world / sp).

Where the keys come from (what the rendered files need at least):

* accelerate ``ParallelismConfig`` (dp_replicate/dp_shard/tp/cp sizes): accelerate 1.10.0 (the ND-parallel
  release, huggingface.co/blog/accelerate-nd-parallel, 8 Aug 2025); ``sp_size``/``sp_backend: deepspeed``
  (ALST/Ulysses) documented from accelerate 1.12.0 (concept guide "Sequence parallel"), present in the pinned 1.15.
* DeepSpeed AutoTP training ``"tensor_parallel": {"autotp_size": N}``: deepspeed 0.16.4 (with transformers
  4.50.1, accelerate 1.6.0: github.com/deepspeedai/DeepSpeed/pull/7206, blogs/huggingface-tp); ZeRO-3 with AutoTP
  is supported in the pinned 0.19.8 (``runtime/engine.py`` ``_configure_tensor_parallel_states``).
* DeepSpeed ``sequence_parallel_size`` + ``UlyssesSPAttentionHF`` (Arctic Long Sequence Training,
  deepspeed.ai/tutorials/ulysses-alst-sequence-parallelism; ``runtime/sequence_parallel/ulysses_sp.py`` of the
  pinned 0.19.8, which needs transformers >= 4.51.3; its first release is not pinned down here).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    from .architecture import Architecture
    from .specs import HardwareSpec, StrategySpec, TrainingSpec


def non_data_parallel_size(strategy: "StrategySpec") -> int:
    """Ranks that see the same batch: tp x sp x cp (ParallelismConfig.non_data_parallel_size)."""
    return strategy.tp_size * strategy.sp_size * strategy.cp_size


def dp_shard_size(hw: "HardwareSpec", strategy: "StrategySpec") -> int:
    """The data-parallel shard degree that remains of the world: world / (dp_replicate x tp x sp x cp)."""
    return hw.world_size // (strategy.dp_replicate_size * non_data_parallel_size(strategy))


def data_parallel_size(hw: "HardwareSpec", strategy: "StrategySpec") -> int:
    """Replicas of the batch (samples per step = micro-batch x this x accumulation): dp_replicate x dp_shard."""
    return strategy.dp_replicate_size * dp_shard_size(hw, strategy)


def is_parallel_layout(strategy: "StrategySpec") -> bool:
    """True when any of tp/sp/cp/dp_replicate is above 1."""
    return non_data_parallel_size(strategy) * strategy.dp_replicate_size > 1


def check_layout(arch: "Architecture", hw: "HardwareSpec", training: "TrainingSpec",
                 strategy: "StrategySpec") -> None:
    """Refuse a layout the engines would refuse, in one line naming the flag (InputError)."""
    tp, sp, cp, rep = strategy.tp_size, strategy.sp_size, strategy.cp_size, strategy.dp_replicate_size
    if not is_parallel_layout(strategy):
        return
    product = rep * tp * sp * cp
    if hw.world_size % product:
        raise InputError(f"dp-replicate {rep} x tp {tp} x sp {sp} x cp {cp} = {product} does not divide the "
                         f"{hw.world_size} GPUs (--gpus x --nodes); the data-parallel shard size is what remains "
                         "(world = dp_replicate x dp_shard x tp x sp x cp)", field="--tp" if tp > 1 else
                         "--sp" if sp > 1 else "--cp" if cp > 1 else "--dp-replicate")
    if training.task == "infer" and (sp > 1 or cp > 1 or rep > 1):
        raise InputError("a training layout (inference takes --tp only)",
                         field="--sp" if sp > 1 else "--cp" if cp > 1 else "--dp-replicate")
    if tp > 1:
        if training.task == "train" and strategy.backend not in ("deepspeed", "fsdp"):
            raise InputError("trains under DeepSpeed AutoTP (--strategy zero0..zero3) or FSDP2 (--strategy "
                             "fsdp-full/fsdp-grad-op --fsdp-version 2)", field="--tp")
        if training.task == "train" and strategy.backend == "fsdp" and strategy.fsdp_version != 2:
            raise InputError("with FSDP needs --fsdp-version 2 (accelerate's ParallelismConfig composes TP "
                             "only with FSDP2)", field="--tp")
        # The per-rank accounting narrows heads and the MLP width (advisor/memory/parallel.py), measured on dense
        # Llama/Qwen2 models only (benchmarks/parallel_memory.py). Experts (whose sharding AutoTP decides per
        # module), latent attention and traced models are not narrowed by it: refuse rather than guess.
        if arch.is_moe or arch.kv_lora_rank or arch.traced:
            kind = ("mixture-of-experts" if arch.is_moe else "latent-attention (MLA)" if arch.kv_lora_rank
                    else "traced")
            raise InputError(f"tensor parallelism of a {kind} model ({arch.family}) is not modelled by dsadvise; "
                             "use --sp, or ZeRO-3 / FSDP sharding without --tp", field="--tp")
        if arch.num_attention_heads % tp:
            raise InputError(f"{tp} must divide the {arch.num_attention_heads} attention heads", field="--tp")
        if arch.num_key_value_heads % tp:
            raise InputError(f"{tp} must divide the {arch.num_key_value_heads} key-value heads", field="--tp")
        if tp > hw.gpus_per_node and not strategy.allow_cross_node_tp:
            raise InputError(f"{tp} spans nodes ({hw.gpus_per_node} GPUs per node): its per-layer "
                             "all-reduces would cross the network; keep --tp within a node or pass "
                             "--allow-cross-node-tp", field="--tp")
        if hw.gpus_per_node % tp and tp <= hw.gpus_per_node:
            raise InputError(f"{tp} must divide the {hw.gpus_per_node} GPUs per node (a tensor-parallel group "
                             "would straddle two nodes)", field="--tp")
        if training.method == "qlora":
            raise InputError("cannot shard bitsandbytes 4-bit weights (QLoRA): use --method lora or full",
                             field="--tp")
    if sp > 1:
        # DeepSpeed ulysses_sp.py UlyssesSPAttentionHF: heads % sp == 0; kv_heads % sp == 0 or sp % kv_heads == 0
        # (kv heads are replicated); UlyssesSPDataLoaderAdapter: the batch's seqlen divisible by sp.
        if training.seq_len % sp:
            raise InputError(f"{sp} must divide --seq-len {training.seq_len} (DeepSpeed Ulysses splits the "
                             "sequence evenly)", field="--sp")
        if (arch.num_attention_heads // tp) % sp:
            raise InputError(f"{sp} must divide the {arch.num_attention_heads // tp} attention heads"
                             f"{' per tensor-parallel rank' if tp > 1 else ''} (Ulysses gives each rank heads/sp)",
                             field="--sp")
        if training.attention == "eager":
            raise InputError("Ulysses runs over sdpa or flash attention (DeepSpeed UlyssesSPAttentionHF "
                             "accepts flash_attention_2/3 and sdpa): use --attention sdpa or flash", field="--sp")
        kv = arch.num_key_value_heads // tp
        if kv % sp and sp % kv:
            raise InputError(f"{sp} and the {kv} key-value heads must divide one another (Ulysses replicates "
                             "kv heads when sp exceeds them)", field="--sp")
    if cp > 1:
        # torch context_parallel's head-tail load balancer cuts the sequence into 2 x cp chunks
        # (torch/distributed/tensor/experimental/_context_parallel/_load_balancer.py).
        if training.seq_len % (2 * cp):
            raise InputError(f"{cp} needs --seq-len divisible by {2 * cp} (2 x cp: torch's load-balanced ring "
                             f"attention), got {training.seq_len}", field="--cp")
        if training.attention == "eager":
            raise InputError("ring attention runs inside SDPA (torch context_parallel): use --attention sdpa",
                             field="--cp")
    if rep > 1 and (tp > 1 or cp > 1) and dp_shard_size(hw, strategy) == 1:
        raise InputError("with --tp/--cp needs a data-parallel shard size above 1 (accelerate: DDP + "
                         "TP/CP is not supported; HSDP + TP/CP is)", field="--dp-replicate")
