"""Communication buckets and gathered-parameter buffers each backend allocates on the GPU (bytes)."""

from __future__ import annotations

from ..architecture import Architecture
from ..param_count import ParameterCounts, linear_shapes
from ..specs import HardwareSpec, StrategySpec, TrainingSpec
from .bytes_per_param import StateBytes, fp32_lora_base, zero3_fp32_lora_adapters
from .model_states import fsdp_shard_degree
from .zero3_gather import zero3_gather_pool_cached_bytes, zero3_gathered_bytes
from .zero_sizes import DeepSpeedSizes, deepspeed_sizes  # noqa: F401  (re-exported: render uses them)
from .zero_sizes import ZERO3_GATHER_POOL_CACHED  # noqa: F401  (re-exported)


def _vector_elements_per_layer(arch: Architecture, counts: ParameterCounts) -> int:
    """Elements in a layer's 1-D parameters (norm weights, biases): what ZeRO-3 keeps unpartitioned."""
    matrices = sum(i * o * c for i, o, c in linear_shapes(arch).values())
    return max(counts.per_layer - matrices, 0)




def _largest_trainable_module(arch: Architecture, counts: ParameterCounts, training: TrainingSpec) -> int:
    """Elements of the largest module that gets a gradient: the largest LoRA adapter matrix (r x fan-in or
    fan-out x r) of the targeted linears under LoRA/QLoRA, the largest module otherwise."""
    if training.method not in ("lora", "qlora"):
        return counts.largest_module
    targets = set(training.lora.target_modules)
    r = training.lora.rank
    sizes = [max(r * fan_in, fan_out * r) for name, (fan_in, fan_out, _) in linear_shapes(arch).items()
             if "all-linear" in targets or name in targets]
    return max(sizes, default=0)


def fsdp_gathered_layer_bytes(arch: Architecture, counts: ParameterCounts, training: TrainingSpec) -> int:
    """Bytes of one decoder layer's FSDP unit once all-gathered: 16-bit under mixed precision / pure-bf16
    (accelerate's MixedPrecision(param_dtype)), fp32 otherwise; QLoRA gathers the packed NF4 data only
    (bnb_4bit_quant_storage = the 16-bit dtype, so the uint8-packed values travel as 16-bit elements: half a
    byte per weight; accelerate fsdp_utils, bitsandbytes FSDP-QLoRA docs); its quantization state is not a
    parameter and stays whole on every GPU (counted with the parameters, model_states.py)."""
    gathered_b = 2 if training.precision in ("fp16", "bf16", "pure-bf16") else 4
    if training.method != "qlora":
        return int(counts.layer_gathered * gathered_b)
    quantized = sum(i * o * c for i, o, c in linear_shapes(arch).values())
    return int(quantized * 0.5 + (counts.layer_gathered - quantized) * gathered_b)


def buffer_bytes(arch: Architecture, counts: ParameterCounts, trainable: int, sb: StateBytes,
                 training: TrainingSpec, strategy: StrategySpec, hw: HardwareSpec) -> dict[str, int]:
    """Named GPU buffers of the backend: buckets, gathered parameters and reducer copies, in bytes."""
    out: dict[str, int] = {}
    world = hw.world_size
    if strategy.backend == "ddp" and world > 1:
        # torch DDP's Reducer copies gradients into flat buckets unless gradient_as_bucket_view=True
        # (PyTorch DDP docs: the saving equals the total gradient size); accelerate leaves it False.
        out["DDP reducer buckets (copy of gradients)"] = int(trainable * sb.gradient)
    elif strategy.backend == "deepspeed":
        ds = deepspeed_sizes(arch, strategy)
        grad_b = 2 if sb.weight == 2 else 4
        stage = strategy.zero_stage or 0
        if stage in (1, 2) or (stage == 0 and world > 1):
            # DeepSpeed/HF docs: "overlap_comm uses 4.5x the allgather_bucket_size and reduce_bucket_size".
            # The all-gather of updated 16-bit partitions allocates nothing: all_gather_into_tensor writes into
            # the flat 16-bit group the parameters are views of (deepspeed/runtime/utils.py
            # all_gather_into_tensor_dp_groups; measured: benchmarks/harness/kinds/zero.py), so only the reduce side
            # holds a bucket.
            factor = 4.5 if ds.overlap_comm else 1.0
            out["ZeRO reduce bucket"] = int(factor * ds.reduce_bucket_size * grad_b)
            if stage in (1, 2) and strategy.offload_optimizer != "none":
                # stage_1_and_2.__init__ with cpu_offload: temp_grad_buffer_for_gpu_offload, the largest
                # parameter's size in the 16-bit dtype, on the GPU for the whole run.
                out["ZeRO offload gradient staging buffer (largest parameter)"] = \
                    min(counts.largest_module, trainable) * grad_b
        if stage == 3:
            weight_b = 2 if sb.weight == 2 else 4
            # ZeRO-3 gathers per leaf module (PartitionedParameterCoordinator fetches a submodule's own
            # params in its pre-forward hook) plus up to stage3_prefetch_bucket_size ahead, capped by
            # stage3_max_live_parameters (DeepSpeed ZeRO-3 docs).
            # A module larger than the cap is still gathered whole.
            # From the second step on, the coordinator knows each parameter's reuse distance and does not
            # release one that is reused within stage3_max_reuse_distance (default 1e9 elements, untouched by
            # the HF "auto" values), up to stage3_max_live_parameters (partitioned_param_coordinator.py
            # release_sub_module / __params_to_release): at the end of the forward the last layers, reused at
            # once by the backward, are still gathered - up to max_live elements (measured: the whole small
            # model of benchmarks/engine_steps.py stays gathered).
            live = max(counts.largest_module,
                       min(ds.max_live_parameters, counts.largest_module + ds.prefetch_bucket_size),
                       min(ds.max_live_parameters, counts.total))
            # Dense decoders: DeepSpeed's coordinator replayed over the step's module trace (zero3_gather.py:
            # prefetch past stage3_max_live_parameters by the count carried over from the last step's
            # partition_all_parameters, reuse-distance retention, coalesced gathers' flat buffers beside the
            # parameters copied out of them); measured on a real engine by benchmarks/zero3_live_params.py.
            replayed = zero3_gathered_bytes(arch, training, ds, world, weight_b) if world > 1 else None
            out["ZeRO-3 gathered parameters (module + prefetch)"] = \
                max(live * weight_b, replayed) if replayed is not None else live * weight_b
            if replayed is not None and replayed >= live * weight_b:
                # the gathers run on the coordinator's own stream: their cached free blocks are a pool the
                # compute stream cannot reuse (zero3_gather.gathered_pool)
                out[ZERO3_GATHER_POOL_CACHED] = zero3_gather_pool_cached_bytes(arch, training, ds, world, weight_b)
            # Backward produces a module's gradients at full size before they enter the reduce bucket
            # (stage3.py reduce_partition_and_remove_grads -> __add_grad_to_ipg_bucket copies param.grad in and
            # frees it). Only trainable parameters get one: under LoRA/QLoRA the largest adapter matrix
            # (peft's lora_A / lora_B are Linear modules of their own), not a frozen base weight.
            # (param.grad is the parameter's dtype: fp32 adapters on DeepSpeed >= 0.19.2, bytes_per_param)
            module_grad_b = 4 if zero3_fp32_lora_adapters(training, strategy) else grad_b
            out["ZeRO-3 unpartitioned module gradients"] = \
                _largest_trainable_module(arch, counts, training) * module_grad_b
            # One contiguous ipg buffer per communication dtype, allocated at init whether or not it fills
            # (stage3._setup_for_real_optimizer: torch.empty(reduce_bucket_size) with contiguous_gradients), and
            # at each reduce the flat copy reduce_scatter_coalesced makes of the bucket's gradients (torch.cat of
            # the padded per-rank chunks, runtime/comm/coalesced_collectives.py): at most the trainable gradients.
            out["ZeRO-3 reduce bucket"] = (ds.reduce_bucket_size + min(ds.reduce_bucket_size, trainable)) * grad_b
            if world > 1:
                persistent = _vector_elements_per_layer(arch, counts) * arch.num_layers
                if ds.param_persistence_threshold >= arch.hidden_size:
                    out["ZeRO-3 persistent small parameters"] = int(persistent * weight_b * (1 - 1 / world))
    elif strategy.backend == "fsdp":
        mixed = training.precision in ("fp16", "bf16")
        # accelerate sets FSDP MixedPrecision(param_dtype=bf16/fp16): gathered params are 16-bit.
        gathered_b = 2 if (mixed or training.precision == "pure-bf16") else 4
        shards = fsdp_shard_degree(strategy, hw)
        root = counts.embedding + counts.lm_head + counts.final
        layer_bytes = fsdp_gathered_layer_bytes(arch, counts, training)
        model_bytes = counts.total * gathered_b
        if training.method == "qlora":
            model_bytes = layer_bytes * arch.num_layers + root * gathered_b
        if training.method == "full":
            layer_grad = counts.layer_gathered * gathered_b
        else:
            # Only the adapters (or unfrozen layers) have gradients: PEFT's fsdp_auto_wrap_policy (HF Trainer,
            # accelerate) puts trainable modules in their own FSDP units and FSDP2 shards per parameter, so a
            # frozen layer's unit has no gradient (requires_grad=False FlatParameter / no DTensor grad).
            layer_grad = min(trainable, counts.layer_gathered) * gathered_b if training.method == "freeze" \
                else trainable / max(arch.num_layers, 1) * gathered_b
        if strategy.fsdp_sharding in ("FULL_SHARD", "HYBRID_SHARD") and shards > 1:
            # Root unit (embeddings, lm_head, final norm) stays gathered; BACKWARD_PRE prefetch holds two
            # decoder layers gathered plus one layer's unsharded gradient before reduce-scatter.
            out["FSDP gathered units (root + 2 layers)"] = root * gathered_b + 2 * layer_bytes
            out["FSDP unsharded layer gradient"] = layer_grad
        elif strategy.fsdp_sharding == "SHARD_GRAD_OP" and shards > 1:
            # SHARD_GRAD_OP keeps parameters gathered from forward through backward.
            out["FSDP gathered parameters (whole model)"] = model_bytes
            out["FSDP unsharded layer gradient"] = layer_grad
        elif mixed and (training.method == "full" or fp32_lora_base(training, strategy)):
            # NO_SHARD / one GPU with MixedPrecision: a 16-bit compute copy of the flat parameters.
            out["FSDP mixed-precision parameter copy"] = model_bytes
        if shards > 1 and strategy.fsdp_sharding != "NO_SHARD" and (
                strategy.offload_param == "cpu" or (mixed and (training.method == "full"
                                                            or fp32_lora_base(training, strategy)))):
            # Before each all-gather FSDP puts this rank's shard on the GPU in the gathered dtype: with
            # CPUOffload(offload_params=True) a copy of the CPU shard (flat_param.py pre_unshard ->
            # flat_param_to(device)), under MixedPrecision over fp32 shards a 16-bit copy
            # (_use_low_precision_shard -> _mp_shard). It is made in FSDP's pre-unshard stream
            # (_runtime_utils._unshard: `with stream(pre_unshard_stream): handle.pre_unshard()`) and dropped
            # once gathered, so its blocks form a pool of their own that compute tensors never reuse: that
            # pool holds the largest unit's shard (the root's or a layer's; smaller shards split it).
            largest_unit = max(root * gathered_b, layer_bytes)
            out["FSDP shard copied to the GPU before each all-gather (pre-unshard stream)"] = \
                -(-largest_unit // shards)
    out.update(stack_buffer_bytes(arch, training, strategy))    # issue 17 (helper T): the stated transformers
    return {k: int(v) for k, v in out.items() if v}


# issue 17 (helper T): buffers an old transformers' model holds (advisor/data/stacks.yaml)
ROTARY_CACHES_BUFFER = "per-layer rotary caches"   # the name's prefix; advisor.memory.allocator places them


def buffer_build_bytes(training: TrainingSpec) -> int:
    """Bytes per element of the floating buffers a transformers model builds (``torch.get_default_dtype()`` at
    construction, which ``from_pretrained``/``from_config(torch_dtype=...)`` sets, or what a later ``model.to(dtype)``
    casts them to): 2 for a 16-bit model, i.e. a LoRA base counted 16-bit (``--base-dtype 16-bit``: loaded with
    torch_dtype=bfloat16/float16, dsadvise's LoRA assumption) and pure bf16 full/freeze/LoRA fine-tuning (a 16-bit
    model: loaded in it or cast whole); 4 otherwise, the larger where unsure: fp32 and mixed full fine-tuning (an
    fp32 model), a LoRA base loaded in fp32, and QLoRA (Answer.AI fsdp_qlora train.py builds it with
    ``from_config(cfg)`` under ``init_empty_weights()``: real fp32 buffers; transformers' own quantized loading with
    torch_dtype=bf16 would build them in bf16)."""
    if training.precision == "fp32" or training.method == "qlora":
        return 4
    if training.method == "lora" and training.base_dtype == "16-bit":
        return 2
    return 2 if training.precision == "pure-bf16" else 4


def rotary_cache_bytes(arch, training: TrainingSpec, strategy: StrategySpec) -> tuple[int, int]:
    """(bytes per decoder layer when the engine takes the model, bytes per layer through training) of the
    per-layer rotary cos/sin caches the stated transformers builds (advisor.stacks.rotary_caches); (0, 0) where it
    builds none. Built in the model's dtype (:func:`buffer_build_bytes`); FSDP (v1) under accelerate's mixed
    fp16/bf16 has MixedPrecision(buffer_dtype=the 16-bit dtype) (accelerate utils/dataclasses.py
    FullyShardedDataParallelPlugin.set_mixed_precision, 0.28.0 and 1.15: buffer_dtype = dtype unless buffer_autocast)
    and casts every buffer to it at the root's lazy init (torch/distributed/fsdp/_runtime_utils.py
    _lazy_init -> _cast_buffers_to_dtype_and_device; torch 2.0 ... 2.13). DeepSpeed 0.19.8 keeps buffers as loaded
    (engine.py _configure_distributed_model: parameters only; 0.13.5 called module.bfloat16()/half(), buffers too),
    FSDP2 has no buffer dtype: kept as built."""
    from ..stacks import rotary_caches

    caches = rotary_caches(arch, training.transformers_version)
    if caches is None:
        return 0, 0
    at_wrap = caches.elements_per_layer * buffer_build_bytes(training)
    cast = (strategy.backend == "fsdp" and getattr(strategy, "fsdp_version", 1) == 1
            and training.precision in ("fp16", "bf16"))
    return at_wrap, caches.elements_per_layer * 2 if cast else at_wrap


CAUSAL_MASK_BUFFER = "LlamaModel.causal_mask buffer"    # the name's prefix; advisor.memory.allocator places it
CAUSAL_MASK_4D = "4D causal mask built each forward"


def causal_mask_buffer_bytes(arch, training: TrainingSpec) -> int:
    """Bytes of transformers 4.38's ``LlamaModel.causal_mask``: max_pos x max_pos bool, one byte each (0 where the
    stated version has none; advisor.stacks.causal_mask_buffer). Not floating: no engine casts it."""
    from ..stacks import causal_mask_buffer

    return arch.max_position_embeddings ** 2 if causal_mask_buffer(arch, training.transformers_version) else 0


def _embedding_output_bytes(training: TrainingSpec, strategy: StrategySpec) -> int:
    """Bytes per element of ``inputs_embeds`` (the embedding's weight dtype as the forward sees it; embedding is not
    an autocast op): 4 with fp32 weights (fp32, or mixed fp16/bf16 full/freeze fine-tuning on one GPU / DDP, whose
    weights are fp32 under autocast), 2 otherwise (FSDP's 16-bit gathered parameters, DeepSpeed's 16-bit module,
    a LoRA/QLoRA base counted 16-bit, pure bf16)."""
    if training.precision == "fp32":
        return 4
    if training.precision == "pure-bf16" or strategy.backend in ("fsdp", "deepspeed") \
            or training.method in ("lora", "qlora"):
        return 2
    return 4


def stack_buffer_bytes(arch, training: TrainingSpec, strategy: StrategySpec) -> dict[str, int]:
    """Named GPU buffers (bytes per GPU through training) the models of the stated transformers version hold
    beyond dsadvise's default: every decoder layer's rotary cos/sin caches (transformers 4.30-4.40 llama, 4.34-4.41
    mistral), whole on every GPU (buffers are not sharded by ZeRO-3 or FSDP); transformers 4.38's
    ``LlamaModel.causal_mask`` and, except under flash attention, the (batch, 1, max_pos, max_pos) mask
    ``_update_causal_mask`` builds from it each forward in the embeddings' dtype, held through forward and backward
    (every layer's input; counted as held through the step)."""
    out: dict[str, int] = {}
    v = training.transformers_version
    _, per_layer = rotary_cache_bytes(arch, training, strategy)
    if per_layer:
        dtype = "fp32" if per_layer == 2 * arch.max_position_embeddings * arch.head_dim * 4 else "16-bit"
        out[f"{ROTARY_CACHES_BUFFER} (transformers {v}, {dtype})"] = per_layer * arch.num_layers
    if mask := causal_mask_buffer_bytes(arch, training):
        out[f"{CAUSAL_MASK_BUFFER} (transformers {v})"] = mask
        if training.attention != "flash":
            out[f"{CAUSAL_MASK_4D} (transformers {v})"] = \
                training.micro_batch_size * mask * _embedding_output_bytes(training, strategy)
    return out
