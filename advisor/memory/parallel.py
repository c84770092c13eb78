"""Per-rank memory under tensor, sequence and context parallelism (issue 15), in the same accounting.

One rank of a layout is estimated as an ordinary data-parallel rank of a *narrowed problem* (the rank view),
then the bytes the view cannot express are added as named terms of the same breakdown:

Tensor parallelism (``--tp N``): the engines shard what the Hugging Face ``tp_plan`` names (DeepSpeed AutoTP
training takes the model's ``tp_plan`` before its own rules: deepspeed 0.19.8 ``runtime/engine.py``
``_apply_autotp_partitioning``; accelerate passes it to ``from_pretrained(tp_plan=...)``). For the decoder
families that is transformers' ``base_model_tp_plan`` (e.g. ``models/llama/configuration_llama.py``): q/k/v and
gate/up column-wise, o/down row-wise; ``lm_head`` ``colwise_gather_output`` (``modeling_llama.py`` ``_tp_plan``):
its weight is split by vocabulary rows, its output gathered whole. Embeddings and norms are replicated (no plan
entry). So a rank holds a model with ``heads/N``, ``kv_heads/N``, ``intermediate/N`` (rounded up: the largest
shard) and full hidden/vocab, less the ``lm_head`` rows of the other ranks. The activations of that narrowed
model, replayed by :func:`advisor.memory.activations.activation_memory`, are the rank's: inside attention and
the MLP they are 1/N, the norms' and residual stream's stay whole (no sequence-parallel norms in either engine).
The gathered logits are whole on every rank; the local shard before the gather and the row-parallel
all-reduce output are transients.

Sequence parallelism (``--sp N``, DeepSpeed Ulysses / ALST ``UlyssesSPAttentionHF``): each rank holds ``S/N``
tokens of every sample; around attention an all-to-all trades that for the whole sequence with ``heads/N``
(same bytes). So the view is the model at ``seq_len/N``, plus what Ulysses adds: the attention output is saved
twice (by the attention kernel in ``[S, heads/N]`` and, after the all-to-all back, by ``o_proj`` in
``[S/N, heads]``), key/value heads are replicated when N exceeds them, and the all-to-all staging copies are
transients (``runtime/sequence_parallel/ulysses_sp.py`` ``_combine_local_sequences`` /
``_partition_global_sequence``).

Context parallelism (``--cp N``, torch ``context_parallel`` under FSDP2 via accelerate): queries, keys and values
of ``S/N`` tokens per rank; the attention kernel's saved tensors are the local shards (the backward gathers
again); the all-gathered K and V of one layer (accelerate's default ``cp_comm_strategy`` ``allgather``) and, in
the backward, their gradients are transients.

ZeRO / FSDP shard over the ranks that hold the same (narrowed) parameters: ``world / tp`` (DeepSpeed's data
parallel group excludes the tp ranks and includes the sp ranks: ``seq_data_parallel_group``; accelerate's FSDP2
shards over ``dp_shard x cp`` and replicates over ``dp_replicate``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

from ..architecture import Architecture
from ..catalog.models import ResolvedModel
from ..estimate_result import Estimate, hardware_info, strategy_info
from ..layout import data_parallel_size, dp_shard_size
from ..param_count import count_parameters
from ..specs import HardwareSpec, StrategySpec, TrainingSpec

TP_PREFIX = "tensor parallel: "
SP_PREFIX = "sequence parallel: "
CP_PREFIX = "context parallel: "


def narrow_architecture(arch: Architecture, tp: int) -> Architecture:
    """The decoder one tensor-parallel rank holds: heads, kv heads and the MLP's inner width divided by ``tp``
    (rounded up), hidden size, vocabulary, norms and embeddings whole (replicated)."""
    if tp == 1:
        return arch
    heads = arch.num_attention_heads // tp
    kv = max(arch.num_key_value_heads // tp, 1)
    inner = math.ceil(arch.intermediate_size / tp)
    update = dict(num_attention_heads=heads, num_key_value_heads=kv, intermediate_size=inner)
    if arch.traced and arch.source_config:
        cfg = json.loads(arch.source_config)
        for target in (cfg, cfg.get("text_config") or {}):
            for key, value in (("num_attention_heads", heads), ("num_key_value_heads", kv),
                               ("intermediate_size", inner), ("moe_intermediate_size", None),
                               ("head_dim", arch.head_dim)):
                if key in target or key == "head_dim" and "num_attention_heads" in target:
                    target[key] = value if value is not None else math.ceil(target[key] / tp)
        update["source_config"] = json.dumps(cfg, sort_keys=True)
    return arch.model_copy(update=update)


def local_training(training: TrainingSpec, strategy: StrategySpec) -> TrainingSpec:
    """The training one rank runs: ``seq_len / (sp x cp)`` tokens per sample, the global batch scaled by the same
    factor so that the gradient accumulation stays what the data-parallel ranks give."""
    seq_split = strategy.sp_size * strategy.cp_size
    if seq_split == 1:
        return training
    update: dict = {"seq_len": training.seq_len // seq_split}
    if training.global_batch_size is not None:
        update["global_batch_size"] = training.global_batch_size * seq_split
    if training.prompt_len is not None:
        update["prompt_len"] = max(training.prompt_len // seq_split, 1)
    return training.model_copy(update=update)


def rank_parameters(arch: Architecture, tp: int) -> int:
    """Parameter elements one tensor-parallel rank holds (before ZeRO/FSDP sharding)."""
    return count_parameters(narrow_architecture(arch, tp)).total - lm_head_rows_elsewhere(arch, tp)


def rank_saved_bytes(arch: Architecture, training: TrainingSpec, strategy: StrategySpec, mode: str) -> int:
    """Bytes one rank saves for backward in a training forward: the narrowed model's replay at the local sequence
    plus what the layout saves on top (the non-transient :func:`layout_terms`)."""
    from .activations import activation_memory

    tp = strategy.tp_size
    act = activation_memory(narrow_architecture(arch, tp), local_training(training, strategy), mode)
    view = RankView(None, None, training, strategy, tp, strategy.sp_size, strategy.cp_size)  # type: ignore[arg-type]
    dtype = 4 if mode == "fp32" else 2
    extra = sum(v for k, v in layout_terms(arch, training, view, dtype).items() if "(transient)" not in k)
    return act.activations + extra


@dataclass(frozen=True)
class RankView:
    """One rank of a layout as an ordinary data-parallel rank of a narrowed problem."""

    model: ResolvedModel
    hw: HardwareSpec
    training: TrainingSpec
    strategy: StrategySpec
    tp: int
    sp: int
    cp: int


def rank_view(model: ResolvedModel, hw: HardwareSpec, training: TrainingSpec, strategy: StrategySpec) -> RankView:
    """The narrowed problem of one rank: TP-narrowed architecture, the local sequence ``S/(sp x cp)`` (the global
    batch scaled so that accumulation stays the same), and the GPUs that shard its states as the world."""
    tp, sp, cp, rep = strategy.tp_size, strategy.sp_size, strategy.cp_size, strategy.dp_replicate_size
    arch = narrow_architecture(model.architecture, tp)
    view_training = local_training(training, strategy)
    view_hw, view_strategy = rank_view_hardware(hw, strategy)
    view_model = model.model_copy(update={"architecture": arch})
    return RankView(view_model, view_hw, view_training, view_strategy, tp, sp, cp)


def rank_view_hardware(hw: HardwareSpec, strategy: StrategySpec) -> tuple[HardwareSpec, StrategySpec]:
    """The GPUs that shard one rank's states, as the world of an ordinary data-parallel strategy: ``world / tp``
    GPUs (``gpus_per_node / tp`` per node); FSDP2 with ``dp_replicate`` is FSDP1's HYBRID_SHARD with one
    "node" per replica group."""
    tp, rep = strategy.tp_size, strategy.dp_replicate_size
    shard_group = hw.world_size // tp              # ranks holding the same narrowed parameters
    if strategy.backend == "fsdp" and rep > 1:
        view_hw = hw.model_copy(update={"gpus_per_node": shard_group // rep, "nodes": rep})
        base = StrategySpec.model_construct(**{**strategy.__dict__, "fsdp_sharding": "HYBRID_SHARD"})
    elif tp <= hw.gpus_per_node:
        view_hw = hw.model_copy(update={"gpus_per_node": hw.gpus_per_node // tp})
        base = strategy
    else:                                           # --allow-cross-node-tp: one tp group spans nodes
        view_hw = hw.model_copy(update={"gpus_per_node": 1, "nodes": shard_group})
        base = strategy
    return view_hw, base.model_copy(update={"tp_size": 1, "sp_size": 1, "cp_size": 1, "dp_replicate_size": 1})


def lm_head_rows_elsewhere(arch: Architecture, tp: int) -> int:
    """Elements of the untied ``lm_head`` the other tp ranks hold (``colwise_gather_output``: vocabulary rows
    split over the ranks). A tied head shares the replicated embedding and is counted whole (conservative)."""
    if tp == 1 or arch.tie_word_embeddings:
        return 0
    return (arch.vocab_size - math.ceil(arch.vocab_size / tp)) * arch.hidden_size


def layout_terms(arch: Architecture, training: TrainingSpec, view: RankView, dtype_bytes: int) -> dict[str, int]:
    """Transient and saved bytes a layout adds to its rank view, named (bytes per GPU)."""
    b = training.micro_batch_size
    s_local = training.seq_len // (view.sp * view.cp)
    h, v = arch.hidden_size, arch.vocab_size
    tp, sp, cp = view.tp, view.sp, view.cp
    layers = arch.num_layers
    terms: dict[str, int] = {}
    if tp > 1:
        # colwise_gather_output: the rank's logits shard is alive while the all-gather writes the whole logits
        terms[TP_PREFIX + "lm_head output shard before the all-gather (transient)"] = \
            b * s_local * math.ceil(v / tp) * dtype_bytes
        # row-parallel o_proj/down_proj: partial sums, then the all-reduce result (DTensor Partial -> Replicate
        # is out of place; DeepSpeed's LinearAllreduce reduces in place): one layer output
        terms[TP_PREFIX + "row-parallel all-reduce output (transient)"] = b * s_local * h * dtype_bytes
    if sp > 1:
        heads_local = arch.num_attention_heads // tp
        kv_local = max(arch.num_key_value_heads // tp, 1)
        q_width = heads_local * arch.head_dim
        # the attention output is saved by the kernel ([S, heads/sp]) and, after the all-to-all back, by o_proj
        # ([S/sp, heads]): one extra q-sized tensor per layer that the plain model shares by a view
        terms[SP_PREFIX + "attention output saved on both sides of the all-to-all"] = \
            layers * b * s_local * q_width * dtype_bytes if training.activation_checkpointing == "none" else \
            b * s_local * q_width * dtype_bytes
        if sp > kv_local:
            # kv heads are replicated up to sp (ulysses_sp.py kv_replication_factor): each rank keeps one whole
            # kv head over the full sequence, saved by the attention kernel
            extra = (training.seq_len * arch.head_dim - s_local * kv_local * arch.head_dim) * 2 * b * dtype_bytes
            saving_layers = layers if training.activation_checkpointing == "none" else 1
            terms[SP_PREFIX + "replicated kv heads (sp > kv heads)"] = saving_layers * max(extra, 0)
        # staging copies around the all-to-alls of one layer (contiguous input + output of q, k, v)
        kv_after = max(kv_local // sp, 1)
        terms[SP_PREFIX + "all-to-all staging buffers of one layer (transient)"] = \
            2 * b * s_local * (q_width + 2 * kv_after * sp * arch.head_dim) * dtype_bytes
    if cp > 1:
        kv_width = max(arch.num_key_value_heads // tp, 1) * arch.head_dim
        # allgather rotation: K and V of the whole sequence for one layer, and in the backward their gradients
        terms[CP_PREFIX + "all-gathered K and V and their gradients, one layer (transient)"] = \
            2 * 2 * b * training.seq_len * kv_width * dtype_bytes
    return terms


def layout_estimate(model: ResolvedModel, hw: HardwareSpec, training: TrainingSpec, strategy: StrategySpec,
                    estimate_fn: Callable[..., Estimate], trainable_fn: Callable[..., int]) -> Estimate:
    """The estimate of one rank of a tensor/sequence/context-parallel layout (bytes per GPU and per node);
    ``estimate_fn`` / ``trainable_fn``: :func:`advisor.memory.core.estimate_memory` / ``trainable_parameters``
    (passed in: core calls this module)."""
    from .bytes_per_param import state_bytes
    from .model_states import model_states

    trainable_parameters = trainable_fn

    view = rank_view(model, hw, training, strategy)
    est = estimate_fn(view.model, view.hw, view.training, view.strategy)
    arch_n = view.model.architecture
    if training.task == "infer":
        return _inference(est, model, hw, training, strategy, view, trainable_fn)

    # 1. the lm_head rows other tp ranks hold: the same model-state accounting for those elements, removed
    counts_n = count_parameters(arch_n)
    trainable_n = trainable_parameters(view.model, counts_n, view.training)
    elsewhere = lm_head_rows_elsewhere(model.architecture, view.tp)
    sb = state_bytes(view.training, view.strategy)
    full = model_states(arch_n, counts_n, trainable_n, sb, view.training, view.strategy, view.hw)
    trainable_elsewhere = elsewhere if training.method == "full" else 0
    less = model_states(arch_n, counts_n.model_copy(update={"total": counts_n.total - elsewhere}),
                        trainable_n - trainable_elsewhere, sb, view.training, view.strategy, view.hw)
    d_params = full.parameters - less.parameters
    d_grads = full.gradients - less.gradients
    d_optim = full.optimizer_states - less.optimizer_states

    # 2. what the layout adds
    terms = layout_terms(model.architecture, training, view, sb.compute_dtype_bytes)
    saved = sum(v for k, v in terms.items() if "(transient)" not in k)
    transient = sum(terms.values()) - saved
    add = sum(terms.values())
    breakdown = dict(est.per_gpu.breakdown)
    for name, value in ((TP_PREFIX + "lm_head rows held by the other tp ranks (weights)", -d_params),
                        (TP_PREFIX + "lm_head rows held by the other tp ranks (gradients)", -d_grads),
                        (TP_PREFIX + "lm_head rows held by the other tp ranks (optimizer states)", -d_optim)):
        if value:
            breakdown[name] = value
    breakdown.update({k: v for k, v in terms.items() if v})
    g = est.per_gpu
    total = g.total - d_params - d_grads - d_optim + add
    assert sum(breakdown.values()) == total, "breakdown must add up to total"
    per_gpu = g.model_copy(update=dict(
        parameters=g.parameters - d_params, gradients=g.gradients - d_grads,
        optimizer_states=g.optimizer_states - d_optim, activations=g.activations + saved,
        temporaries=g.temporaries + transient, total=total, breakdown=breakdown,
        allocated=max(g.allocated - d_params - d_grads - d_optim + add, 0),
        reserved=max(g.reserved - d_params - d_grads - d_optim + add, 0),
        moments={k: v + add for k, v in g.moments.items()}))

    # 3. per node: the view's node held gpus_per_node / tp processes; every CPU term is per process x processes
    cpu = _per_node_cpu(est, model, hw, training, strategy, view,
                        cpu_less=sum(full.cpu_per_node.values()) - sum(less.cpu_per_node.values()))
    nvme = int(est.per_node_nvme_bytes * hw.gpus_per_node / view.hw.gpus_per_node)
    cpu_total = sum(cpu.values())
    cpu_fits = hw.cpu_ram_bytes is None or cpu_total <= hw.cpu_ram_bytes
    nvme_fits = hw.nvme_bytes is None or nvme <= hw.nvme_bytes
    notes = list(est.notes) + layout_notes(model.architecture, hw, training, strategy, view)
    return est.model_copy(update=dict(
        model=_model_info(est, model, training, trainable_fn), hardware=hardware_info(hw),
        strategy=strategy_info(training, strategy), per_gpu=per_gpu,
        per_node_cpu=est.per_node_cpu.model_copy(update=dict(total=cpu_total, fits=cpu_fits, breakdown=cpu)),
        per_node_nvme_bytes=nvme, fits=total <= hw.vram_bytes and cpu_fits and nvme_fits,
        headroom_bytes=hw.vram_bytes - total, notes=notes))


def _model_info(est: Estimate, model: ResolvedModel, training: TrainingSpec, trainable_fn: Callable[..., int]):
    """The model block of the whole model (the view's counts are one rank's)."""
    counts = count_parameters(model.architecture)
    return est.model.model_copy(update=dict(parameters=counts.total,
                                            trainable_parameters=trainable_fn(model, counts, training)))


def _per_node_cpu(est: Estimate, model: ResolvedModel, hw: HardwareSpec, training: TrainingSpec,
                  strategy: StrategySpec, view: RankView, cpu_less: int) -> dict[str, int]:
    """Per-node CPU bytes: the view's per-process terms for every process of the node; DeepSpeed AutoTP loads the
    whole model in every process before it shards (``from_pretrained`` then ``deepspeed.initialize``)."""
    scale = hw.gpus_per_node / view.hw.gpus_per_node
    out = {k: int(v * scale) for k, v in est.per_node_cpu.breakdown.items()}
    if cpu_less:   # offloaded states of the lm_head rows other ranks hold
        out[TP_PREFIX + "lm_head rows held by the other tp ranks (offloaded states)"] = -int(cpu_less * scale)
    if view.tp > 1 and strategy.backend == "deepspeed":
        ratio = count_parameters(model.architecture).total / count_parameters(view.model.architecture).total
        for k in list(out):
            if k.startswith("model loading") and "one copy per process" in k:
                out[k] = int(out[k] * ratio)
    return out


def layout_notes(arch: Architecture, hw: HardwareSpec, training: TrainingSpec, strategy: StrategySpec,
                 view: RankView) -> list[str]:
    """What the layout estimate assumes, said."""
    tp, sp, cp = view.tp, view.sp, view.cp
    notes = [f"layout: dp_replicate {strategy.dp_replicate_size} x dp_shard {dp_shard_size(hw, strategy)} x tp {tp} "
             f"x sp {sp} x cp {cp}; {data_parallel_size(hw, strategy)} data-parallel rank(s) take separate "
             f"samples, model states shard over {view.hw.world_size} GPU(s)"]
    if tp > 1:
        notes.append(f"tp {tp}: each GPU holds heads/{tp}, kv heads/{tp} and the MLP's inner width/{tp} of every "
                     "layer and 1/tp of the lm_head (the Hugging Face tp_plan DeepSpeed AutoTP and accelerate "
                     "apply); embeddings and norms are replicated; logits are gathered whole on every GPU")
    if tp > 1 and strategy.backend == "fsdp":
        # accelerate 1.15 Accelerator._prepare_tp (FSDP2): `from transformers.integrations.tensor_parallel import
        # ReplicateParallel` for the parameters the plan leaves whole; transformers 5.24 has no such class
        notes.append("FSDP2 + TP: accelerate 1.15 prepares the replicated parameters with transformers' "
                     "ReplicateParallel, which transformers 5.24 no longer has (ImportError at accelerator.prepare "
                     "with these versions); DeepSpeed AutoTP (--strategy zero*) runs the same sharding")
    if sp > 1:
        notes.append(f"sp {sp} (Ulysses/ALST): each GPU keeps {training.seq_len // sp} of the {training.seq_len} "
                     "tokens of a sample; attention runs on the whole sequence with heads/sp after an all-to-all")
    if cp > 1:
        notes.append(f"cp {cp} (ring attention, FSDP2): each GPU keeps {training.seq_len // cp} tokens; K and V of "
                     "one layer are all-gathered for its attention (accelerate's cp_comm_strategy 'allgather')")
    return notes


def _inference(est: Estimate, model: ResolvedModel, hw: HardwareSpec, training: TrainingSpec,
               strategy: StrategySpec, view: RankView, trainable_fn: Callable[..., int]) -> Estimate:
    """Inference under --tp: the narrowed model's weights and KV cache on each GPU, less the lm_head rows of the
    other ranks; the layouts are renamed ``tensor-parallel`` (one model copy per tp group)."""
    elsewhere = lm_head_rows_elsewhere(model.architecture, view.tp)
    dtype_bytes = 4 if training.precision == "fp32" else 2
    drop = elsewhere * dtype_bytes
    replica = next(x for x in est.inference if x.layout == "replica-per-gpu")
    chosen = replica.model_copy(update=dict(layout="tensor-parallel", weights=replica.weights - drop,
                                            total=replica.total - drop, fits=replica.total - drop <= hw.vram_bytes))
    layouts = [chosen]
    breakdown = {"weights": replica.weights, "KV cache": replica.kv_cache, "prefill transient": replica.transient,
                 "overhead": replica.overhead}
    if drop:
        breakdown[TP_PREFIX + "lm_head rows held by the other tp ranks (weights)"] = -drop
    per_gpu = est.per_gpu.model_copy(update=dict(
        parameters=chosen.weights, activations=chosen.kv_cache, temporaries=chosen.transient,
        overhead=chosen.overhead, total=chosen.total, breakdown=breakdown))
    assert sum(breakdown.values()) == per_gpu.total, "breakdown must add up to total"
    scale = hw.gpus_per_node / view.hw.gpus_per_node
    cpu = {k: int(v * scale) for k, v in est.per_node_cpu.breakdown.items()}
    cpu_total = sum(cpu.values())
    cpu_fits = hw.cpu_ram_bytes is None or cpu_total <= hw.cpu_ram_bytes
    s_info = strategy_info(training, strategy).model_copy(update={"name": "tensor-parallel"})
    notes = list(est.notes) + [f"tp {view.tp}: each GPU holds 1/{view.tp} of every layer's attention and MLP "
                               f"weights and of the KV cache (kv heads/{view.tp}); embeddings and norms replicated"]
    return est.model_copy(update=dict(
        model=_model_info(est, model, training, trainable_fn), hardware=hardware_info(hw), strategy=s_info,
        per_gpu=per_gpu,
        inference=layouts,
        per_node_cpu=est.per_node_cpu.model_copy(update=dict(total=cpu_total, fits=cpu_fits, breakdown=cpu)),
        fits=chosen.fits and cpu_fits, headroom_bytes=hw.vram_bytes - chosen.total, notes=notes))
