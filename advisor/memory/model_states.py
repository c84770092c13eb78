"""Per-GPU and per-node-CPU bytes of parameters, gradients and optimizer states for each strategy.

Sharding follows ZeRO (Rajbhandari et al. 2020): stage 1 partitions optimizer states (with the fp32
master copy), stage 2 also gradients, stage 3 also parameters, each over the data-parallel world.
FSDP FULL_SHARD ≈ ZeRO-3, SHARD_GRAD_OP ≈ ZeRO-2, HYBRID_SHARD shards inside a node and replicates across
nodes, NO_SHARD ≈ DDP (PyTorch FSDP docs, ShardingStrategy).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..architecture import Architecture
from ..param_count import ParameterCounts, lightning_quantized_head, linear_shapes
from ..specs import HardwareSpec, StrategySpec, TrainingSpec
from .bytes_per_param import StateBytes, fp32_qlora_rest, zero3_fp32_lora_adapters
from .peak import StepGradients
from .zero_sizes import deepspeed_sizes

# DeepSpeed CPU offload allocates pinned and staging buffers on top of the states it holds; its own
# estimators multiply CPU memory by additional_buffer_factor=1.5 (deepspeed/runtime/zero/stage3.py).
DEEPSPEED_CPU_BUFFER_FACTOR = 1.5


@dataclass
class Placement:
    """How far each state is divided, and where it lives."""

    param_shards: int
    grad_shards: int
    optim_shards: int
    params_on: str = "gpu"      # gpu | cpu | nvme
    grads_on: str = "gpu"
    optim_on: str = "gpu"


@dataclass
class ModelStates:
    """Bytes per GPU of the three model states, plus what sits in each node's CPU RAM and on NVMe."""

    parameters: int = 0
    gradients: int = 0
    optimizer_states: int = 0
    step: StepGradients | None = None   # gradients by moment and the optimizer step's transients
    gpu_breakdown: dict[str, int] = field(default_factory=dict)
    cpu_per_node: dict[str, int] = field(default_factory=dict)
    nvme_per_node: int = 0


def fsdp_shard_degree(strategy: StrategySpec, hw: HardwareSpec) -> int:
    """GPUs an FSDP strategy shards over: the world, one node (HYBRID_SHARD), or none (NO_SHARD)."""
    return {"FULL_SHARD": hw.world_size, "SHARD_GRAD_OP": hw.world_size, "HYBRID_SHARD": hw.gpus_per_node,
            "NO_SHARD": 1}[strategy.fsdp_sharding]


def placement(strategy: StrategySpec, hw: HardwareSpec) -> Placement:
    """Divisors and locations of parameters, gradients and optimizer states for a strategy."""
    world = hw.world_size
    if strategy.backend in ("single", "ddp"):
        p = Placement(1, 1, 1)
    elif strategy.backend == "deepspeed":
        stage = strategy.zero_stage or 0
        p = Placement(world if stage >= 3 else 1, world if stage >= 2 else 1, world if stage >= 1 else 1)
        if strategy.offload_optimizer != "none":
            # Offloaded optimizer: gradients stream into the CPU fp32 partition (stage_1_and_2
            # async_accumulate_grad_in_cpu_via_gpu; stage3 offloads grad partitions), optimizer runs on CPU.
            # Gradients stay in (pinned) CPU memory even when the optimizer states swap to NVMe.
            p.grads_on = "cpu"
            p.optim_on = strategy.offload_optimizer
            p.grad_shards = world
        if strategy.offload_param != "none":
            p.params_on = strategy.offload_param
    else:  # fsdp
        shards = fsdp_shard_degree(strategy, hw)
        p = Placement(shards if strategy.fsdp_sharding != "NO_SHARD" else 1, shards, shards)
        if strategy.offload_param == "cpu":
            # FSDP CPUOffload(offload_params=True) keeps sharded params and grads on CPU; the step runs there.
            p.params_on = p.grads_on = p.optim_on = "cpu"
    return p


# issue 17: the base's dtype is the user's loading choice, not an input: said in estimates and recommendations.
LORA_16BIT_BASE_NOTE = ("the LoRA base is counted in 16-bit, as loaded with torch_dtype=bfloat16/float16 (LLaMA-Factory, "
                        "axolotl, TRL, transformers v5 \"auto\"); a base loaded in fp32 (transformers v4 without "
                        "torch_dtype, e.g. PEFT's examples/sft without quantization) holds twice those bytes under "
                        "single/DDP/FSDP (DeepSpeed fp16/bf16 casts it), and autocast then casts each weight to "
                        "16-bit per matmul (not counted)")


def lora_fp32_base_extra_bytes(counts: ParameterCounts, training: TrainingSpec, strategy: StrategySpec,
                               hw: HardwareSpec) -> int:
    """Bytes per GPU that a LoRA base loaded in fp32 would add over the 16-bit base counted for mixed fp16/bf16
    on single/DDP/FSDP (0 where there is no such choice). dsadvise counts the base as loaded with
    ``torch_dtype=bfloat16``/``float16`` (LLaMA-Factory, axolotl, TRL scripts, transformers v5's ``"auto"``);
    transformers v4's ``from_pretrained`` without ``torch_dtype`` loads fp32 (PEFT's examples/sft/utils.py
    passes ``torch_dtype=quant_storage_dtype or torch.float32``: fp32 without quantization), twice those bytes.
    DeepSpeed fp16/bf16 casts the module itself and pure bf16 is a 16-bit model: 0 there, and 0 where the
    parameters live on the CPU (offload)."""
    if training.method != "lora" or training.precision not in ("fp16", "bf16") or strategy.backend == "deepspeed" \
            or getattr(training, "base_dtype", "16-bit") == "fp32":
        return 0
    pl = placement(strategy, hw)
    if pl.params_on != "gpu":
        return 0
    return int(counts.total * 2 / pl.param_shards)


QLORA_16BIT_REST_NOTE = ("QLoRA's embeddings, norms and lm_head are counted in 16-bit, as LLaMA-Factory, axolotl (it "
                         "casts them back after PEFT's upcast) and TRL's SFTTrainer (since huggingface/trl#4577; 1.16 "
                         "here) keep them; PEFT's prepare_model_for_kbit_training called by your own script (PEFT's "
                         "and older TRL's examples; skipped when FSDP/ZeRO-3 shard the 4-bit weights) or a load in "
                         "float32 makes them fp32, twice those bytes, with fp32 hidden states and the head's 16-bit "
                         "weight copy: --base-dtype fp32 counts that")


def qlora_quantized_elements(arch: Architecture, counts: ParameterCounts, training: TrainingSpec) -> int:
    """Base elements QLoRA stores in NF4: bitsandbytes quantizes the decoder's linear layers (transformers'
    BitsAndBytesConfig skips the lm_head); embeddings, norms and an untied lm_head keep their dtype. lightning
    (litgpt) quantizes the (untied) lm_head too (issue 17, L)."""
    quantized = min(counts.total, arch.num_layers * sum(i * o * c for i, o, c in linear_shapes(arch).values()))
    if lightning_quantized_head(training):
        quantized = min(counts.total, quantized + counts.lm_head)
    return quantized


def qlora_kbit_upcast_extra_bytes(arch: Architecture, counts: ParameterCounts, training: TrainingSpec,
                                  strategy: StrategySpec) -> int:
    """Bytes per GPU that PEFT's ``prepare_model_for_kbit_training`` would add to a QLoRA model by casting every
    non-quantized 16-bit parameter (embeddings, norms, an untied lm_head) to fp32 (peft/utils/other.py: "cast all
    non INT8 parameters to fp32"). TRL's SFTTrainer called it for QLoRA unless the 4-bit weights were sharded
    (``is_sharded_qlora``: FSDP / ZeRO-3 skip it) until huggingface/trl#4577 (TRL 1.16 does not); axolotl calls it
    and casts norms and embeddings back to the compute dtype (loaders/model.py ``_convert_embedding_modules_dtype``);
    LLaMA-Factory does not (its ``prepare_model_for_training`` upcasts only norms, with ``upcast_layernorm``).
    dsadvise counts those weights 16-bit unless ``--base-dtype fp32`` says otherwise; 0 where the call is skipped,
    the user stated the dtype, or everything is already fp32."""
    if training.method != "qlora" or training.precision == "fp32" or strategy.backend == "fsdp" \
            or (strategy.backend == "deepspeed" and (strategy.zero_stage or 0) >= 3) \
            or getattr(training, "base_dtype", "16-bit") == "fp32":   # counted, not assumed (--base-dtype fp32)
        return 0
    if lightning_quantized_head(training):   # issue 17 (L): litgpt's QLoRA: no PEFT, no upcast
        return 0
    return int((counts.total - qlora_quantized_elements(arch, counts, training)) * 2)


def adafactor_state_elements(arch: Architecture, counts: ParameterCounts) -> int:
    """Elements of Adafactor's factored second moment: rows+cols per matrix, full size for vectors.

    Shazeer & Stern 2018, Adafactor §3; HF Adafactor with beta1=None keeps no first moment.
    """
    per_layer_matrix_elems = 0
    per_layer_factored = 0
    for fan_in, fan_out, copies in linear_shapes(arch).values():
        per_layer_matrix_elems += fan_in * fan_out * copies
        per_layer_factored += (fan_in + fan_out) * copies
    vectors_per_layer = max(counts.per_layer - per_layer_matrix_elems, 0)
    embed_factored = arch.vocab_size + arch.hidden_size
    head = embed_factored if counts.lm_head else 0
    # Remaining embedding elements (position tables, embedding norms) treated as unfactored: conservative.
    embedding_rest = max(counts.embedding - arch.vocab_size * arch.hidden_size, 0)
    return (arch.num_layers * (per_layer_factored + vectors_per_layer) + embed_factored + head
            + embedding_rest + counts.final)


def model_states(arch: Architecture, counts: ParameterCounts, trainable: int, sb: StateBytes,
                 training: TrainingSpec, strategy: StrategySpec, hw: HardwareSpec) -> ModelStates:
    """Bytes of weights, gradients and optimizer states per GPU and per node CPU for one configuration."""
    pl = placement(strategy, hw)
    total = counts.total
    # LoRA/QLoRA adapters come on top of the base model (counts.total: the base's parameters; PEFT adds lora_A /
    # lora_B modules); freeze and full fine-tuning train a part of the base itself.
    frozen = total if training.method in ("lora", "qlora") else total - trainable
    local = hw.gpus_per_node

    if training.method == "qlora":
        # bitsandbytes quantizes the decoder's linear layers to NF4; embeddings, norms and an untied
        # lm_head stay in the 16-bit compute dtype (peft prepare_model_for_kbit_training).
        quantized = qlora_quantized_elements(arch, counts, training)
        # --base-dtype fp32 (issue 17): PEFT's prepare_model_for_kbit_training leaves them fp32 (4 bytes)
        rest_b = 4 if fp32_qlora_rest(training, strategy) else 2
        frozen_bytes = quantized * sb.frozen_weight + (frozen - quantized) * rest_b
    else:
        frozen_bytes = frozen * sb.frozen_weight
    # DeepSpeed >= 0.19.2 ZeRO-3 keeps PEFT's fp32 adapters fp32 on a zero.Init'ed base (bytes_per_param)
    adapter_b = 4 if zero3_fp32_lora_adapters(training, strategy) else sb.weight
    weight_bytes = trainable * adapter_b + frozen_bytes
    # Frozen weights are not in ZeRO-1/2 optimizer groups (never partitioned there); ZeRO-3 and FSDP
    # shard every parameter.
    param_bytes = weight_bytes / pl.param_shards
    quant_state_gpu = 0.0
    if training.method == "qlora" and (pl.param_shards > 1 or pl.params_on != "gpu"):
        # Only the packed 4-bit data is a parameter FSDP / ZeRO-3 shards or offloads. Its quantization state
        # (absmax per 64-block, the nested absmax with double quantization) is a QuantState object each
        # Linear4bit keeps whole, created on the GPU when the weight is quantized there (bitsandbytes/nn/modules.py:
        # Params4bit._quantize / .to move quant_state with the data; fix_4bit_weight_quant_state_from_module
        # restores it from the module "when the parameter got converted ... for example for fsdp"; FSDP's
        # offload moves only the FlatParameter, _init_utils flat_param_to(cpu)): every GPU holds all of it.
        quant_state = quantized * (sb.frozen_weight - 0.5)
        param_bytes -= quant_state / pl.param_shards
        quant_state_gpu = quant_state
    grad_bytes = trainable * sb.gradient / pl.grad_shards

    if training.optimizer == "adafactor":
        if training.method == "full":
            opt_elems = adafactor_state_elements(arch, counts)
        else:
            opt_elems = trainable  # adapters are small; counted unfactored (conservative)
        moments = opt_elems * (2 if training.precision == "pure-bf16" else 4)
    else:
        moments = trainable * sb.optimizer
    master = trainable * sb.master
    step_grad = trainable * sb.step_gradient

    ms = ModelStates()
    ms.gpu_breakdown = {}
    ms.cpu_per_node = {}

    def put(where: str, name: str, per_rank: float) -> None:
        per_rank = int(round(per_rank))
        if where == "gpu":
            ms.gpu_breakdown[name] = ms.gpu_breakdown.get(name, 0) + per_rank
        elif where == "cpu":
            ms.cpu_per_node[name] = ms.cpu_per_node.get(name, 0) + per_rank * local
        else:
            ms.nvme_per_node += per_rank * local

    put(pl.params_on, "parameters", param_bytes)
    if quant_state_gpu:
        put("gpu", "parameters", quant_state_gpu)
    stage = strategy.zero_stage or 0
    zero_mixed = strategy.backend == "deepspeed" and stage >= 1 and bool(step_grad)
    if zero_mixed and pl.grads_on == "cpu":
        # Optimizer offload: each reduced gradient is copied straight into the fp32 CPU partition (counted
        # below). ZeRO-1 still accumulates every 16-bit param.grad on the GPU through the backward and reduces
        # at the boundary (stage_1_and_2.process_gradients reduces during backward only for stage 2 or
        # overlap_comm; the epilogue's copy_grads_in_partition -> async_inplace_copy_grad_to_fp32_buffer_from_gpu,
        # then _clear_param_grad_only); stage 2 and 3 keep none on the GPU.
        if stage == 1:
            put("gpu", "gradients", trainable * sb.gradient)
    else:
        put(pl.grads_on, "gradients", grad_bytes)
    nosync = fsdp_no_sync_gradient_bytes(trainable, training, strategy, hw)
    if nosync:
        put("gpu", FSDP_NO_SYNC_GRADIENTS, nosync)
    put(pl.optim_on, "optimizer moments", moments / pl.optim_shards)
    if master:
        put(pl.optim_on, "fp32 master weights", master / pl.optim_shards)
    if step_grad and not (zero_mixed and pl.optim_on == "gpu"):
        # Offload: the fp32 gradient partition is allocated once on the CPU (stage_1_and_2
        # initialize_optimizer_states keeps single_partition_of_fp32_groups[i].grad; stage3 offload likewise).
        # On the GPU it exists only during the step: a step transient (step_gradients), not a model state.
        put(pl.optim_on, "fp32 gradient partition for the step", step_grad / pl.optim_shards)

    ms.parameters = ms.gpu_breakdown.get("parameters", 0)
    ms.gradients = ms.gpu_breakdown.get("gradients", 0) + ms.gpu_breakdown.get(FSDP_NO_SYNC_GRADIENTS, 0)
    ms.optimizer_states = sum(v for k, v in ms.gpu_breakdown.items()
                              if k not in ("parameters", "gradients", FSDP_NO_SYNC_GRADIENTS))
    if pl.optim_on != "gpu" or pl.params_on != "gpu":
        offloaded = sum(ms.cpu_per_node.values())
        if strategy.backend == "deepspeed" and offloaded:
            ms.cpu_per_node["offload pinned/staging buffers"] = int(offloaded * (DEEPSPEED_CPU_BUFFER_FACTOR - 1))
    ms.step = step_gradients(arch, counts, trainable, sb, training, strategy, hw, ms.gradients, pl)
    if nosync:
        # The unsharded gradients are reduce-scattered and freed in the last micro-batch's backward: the
        # optimizer step reads the sharded ones only.
        ms.step = replace(ms.step, at_step=max(ms.step.at_step - ms.gpu_breakdown[FSDP_NO_SYNC_GRADIENTS], 0))
    return ms


# issue 17: the breakdown item of FSDP's unsharded gradients under no_sync (see fsdp_no_sync_gradient_bytes).
FSDP_NO_SYNC_GRADIENTS = "FSDP unsharded gradients under no_sync (accelerate accumulation, sync_each_batch off)"


def fsdp_no_sync_gradient_bytes(trainable: int, training: TrainingSpec, strategy: StrategySpec,
                                hw: HardwareSpec) -> int:
    """Bytes per GPU of the unsharded gradients an FSDP run accumulates over the micro-batches of one optimizer
    step (0 without accumulation or without sharding).

    accelerate's ``Accelerator.accumulate`` (the HF Trainer's loop likewise) runs every micro-batch but the
    last under ``Accelerator.no_sync`` unless ``sync_each_batch`` is set (accelerate/accelerator.py: FSDP1
    ``model.no_sync()``, FSDP2 ``set_requires_gradient_sync(False)``), and FSDP then "will accumulate the full
    model gradients (instead of gradient shards) until the eventual sync" and, with CPU offloading, "the
    gradients will not be offloaded to CPU when inside the context manager" (torch/distributed/fsdp/
    fully_sharded_data_parallel.py ``no_sync``; _runtime_utils.py ``_post_backward_hook`` returns before the
    reduce-scatter when ``not state._sync_gradients``, leaving ``flat_param.grad`` unsharded). The gradient
    has the dtype the unsharded parameter computes in: accelerate's FSDP mixed-precision policy sets
    ``param_dtype`` (and ``reduce_dtype``) to the 16-bit type (utils/dataclasses.py ``set_mixed_precision``),
    fp32 without mixed precision. With one shard (NO_SHARD) the gradient is whole anyway: nothing more.
    The buffer "FSDP unsharded layer gradient" is counted beside it, not twice: from the second micro-batch on,
    each layer's new gradient is a tensor of its own until AccumulateGrad adds it in place into this ``.grad``
    (benchmarks/fsdp_no_sync.py records both alive at once)."""
    from ..batching import gradient_accumulation

    if strategy.backend != "fsdp" or fsdp_shard_degree(strategy, hw) <= 1 or not trainable:
        return 0
    if training.sync_each_batch:
        # issue 17 (helper L): GradientAccumulationPlugin(sync_each_batch=True) -- accelerator.py ``accumulate``
        # sets ``allow_gradient_sync`` when ``self.use_distributed and plugin_kwargs["sync_each_batch"]`` and enters
        # nullcontext instead of ``no_sync``: every micro-batch's backward reduce-scatters, no unsharded gradients.
        return 0
    if gradient_accumulation(training.global_batch_size, training.micro_batch_size, hw.world_size) <= 1:
        return 0
    return int(trainable * (4 if training.precision == "fp32" else 2))


def step_gradients(arch: Architecture, counts: ParameterCounts, trainable: int, sb: StateBytes,
                   training: TrainingSpec, strategy: StrategySpec, hw: HardwareSpec, gpu_gradients: int,
                   pl: Placement) -> StepGradients:
    """Gradient bytes per GPU at their fullest, at the optimizer step, and the step's transients."""
    if strategy.backend == "deepspeed" and (strategy.zero_stage or 0) >= 1 and sb.step_gradient:
        stage = strategy.zero_stage or 0
        world = hw.world_size
        grad_b = sb.gradient
        part = trainable / world                      # elements of this rank's partition
        largest = min(counts.largest_module, trainable)
        if pl.grads_on == "cpu":
            # Offload: the step runs on the CPU. ZeRO-1's epilogue takes an fp64 norm of each 16-bit gradient
            # on the GPU while all of them exist (stage_1_and_2.set_norm_for_param_grad_in_gpu, get_norm_dtype
            # = float64 where the device has fp64); ZeRO-2 holds one parameter's gradient before its copy.
            if stage == 1:
                return StepGradients(formed=gpu_gradients, at_step=gpu_gradients, step_temporaries=0,
                                     norm_temporary=8 * largest)
            return StepGradients(formed=0, at_step=0, step_temporaries=0,
                                 unreduced=largest * grad_b if stage == 2 else 0, persistent=stage == 3)
        if stage in (1, 2):
            # The step reads grads_in_partition: every parameter overlapping this rank's partition, whole
            # (stage_1_and_2.copy_grads_in_partition sums param.numel()): the partition + one straddling layer
            # matrix at most. It first takes the clipping norm as an fp64 copy of each gradient in turn
            # (get_grad_norm_direct: g.data.to(get_norm_dtype())), then flattens the partition (16-bit copy)
            # and casts it to fp32 (stage_1_and_2.step: flatten(...).to(fp32)); both are alive at once, the
            # fp32 one until the group's step ends.
            straddle = max((i * o for i, o, _ in linear_shapes(arch).values()), default=0)
            # ZeRO-2: a gradient larger than the reduce bucket bypasses it (reduce_independent_p_g_buckets_and_
            # remove_grads: extra_large_param_to_reduce) and one such full gradient can still be alive when the
            # step starts (measured: engine_steps zero2, the lm_head's gradient).
            unreduced = int(largest * grad_b) if stage == 2 else 0
            at_step = int(min(trainable, part + straddle) * grad_b) + unreduced
            return StepGradients(
                formed=gpu_gradients, at_step=at_step, step_temporaries=int(part * (grad_b + 4)),
                norm_temporary=int(8 * min(largest, part)), unreduced=unreduced)
        # ZeRO-3: grad_partitions_flat_buffer is allocated once (stage3.py __init__). The step walks the sub
        # groups (stage3._create_fp16_sub_groups closes a group once it reaches sub_group_size, so one can
        # exceed it by one parameter partition): _prepare_fp32_grad_for_sub_group flattens the group's
        # gradients (16-bit copy) and casts them to fp32; _release_sub_group frees the fp32 gradient.
        sub = deepspeed_sizes(arch, strategy).sub_group_size
        chunk = min(part, sub + largest / world)
        return StepGradients(formed=gpu_gradients, at_step=gpu_gradients, step_temporaries=int(chunk * (grad_b + 4)),
                             norm_temporary=int(8 * largest / world), persistent=True)
    # torch's foreach AdamW/Adam/Lion/SGD (default on CUDA) allocate one temporary per state tensor list,
    # e.g. exp_avg_sq.sqrt() in torch/optim/adamw.py _multi_tensor_adamw: one fp32 copy of the moments' size.
    # DeepSpeed's FusedAdam (multi_tensor_apply) and CPU Adam have no such temporary.
    temps = 0
    if strategy.backend != "deepspeed" and pl.optim_on == "gpu" and training.optimizer in ("adamw", "lion", "sgd"):
        state = 2 if training.precision == "pure-bf16" else 4
        temps = int(trainable * state / pl.optim_shards)
    return StepGradients(formed=gpu_gradients, at_step=gpu_gradients, step_temporaries=temps)


def zero3_whole_model_placement(arch: Architecture, counts: ParameterCounts, training: TrainingSpec,
                                strategy: StrategySpec, hw: HardwareSpec) -> list[tuple[str, object, int]]:
    """Allocation sequence (bytes per GPU) of a DeepSpeed ZeRO-3 engine wrapping a model that was not built
    under ``zero.Init``: a bitsandbytes-quantized (QLoRA) base; empty for anything else.

    * transformers never builds a quantized model under ``zero.Init`` (modeling_utils ``get_init_context``:
      ``zero.Init`` only ``if not is_quantized``; a quantized one is built on the meta device and loaded
      quantized, on the GPU or moved to the CPU after quantize-on-GPU, depending on the version);
    * ``deepspeed.initialize`` -> ``DeepSpeedEngine._configure_distributed_model``: ``is_zero_init_model`` is
      False (no parameter has ``ds_id``), so ``self.module.to(self.device)`` puts the WHOLE model on every GPU
      (the NF4 data, each Linear4bit's quant_state - Params4bit.to moves it along -, the 16-bit embeddings,
      norms, lm_head and the LoRA adapters, cast to the engine's dtype by ``module.bfloat16()`` just before);
    * only then does the ZeRO-3 optimizer partition it (``DeepSpeedZeRoOffload._convert_to_zero_parameters``
      -> ``zero.Init(module=...)`` -> ``_zero_init_param`` -> ``partition``: per parameter, in
      ``module.parameters()`` order, a new ``ds_tensor`` of ceil(numel / world) elements, then ``free_param``
      drops the whole tensor). The quant_state is not a parameter and stays whole.

    Every freed block stays cached (nothing calls ``empty_cache``): the reserved peak of this sequence is a
    floor of the run's ``max_memory_reserved``, and its allocated peak is what ``max_memory_allocated`` has
    seen. ``("a", key, n)`` allocates, ``("f", key, 0)`` frees (advisor.memory.allocator.simulate)."""
    if not (training.method == "qlora" and strategy.backend == "deepspeed" and (strategy.zero_stage or 0) == 3):
        return []
    from .bytes_per_param import state_bytes

    sb = state_bytes(training, strategy)
    world = hw.world_size
    half = 4 if training.precision == "fp32" else 2          # engine dtype of the non-quantized tensors
    rank = training.lora.rank if training.lora else 0
    targets = set(training.lora.target_modules) if training.lora else set()
    params: list[tuple[object, int]] = []                     # (key, bytes) of each parameter, module order
    events: list[tuple[str, object, int]] = []

    def put(key: object, nbytes: int, parameter: bool = True) -> None:
        nbytes = int(nbytes)
        if nbytes <= 0:
            return
        events.append(("a", key, nbytes))
        if parameter:
            params.append((key, nbytes))

    put(("embed",), counts.embedding * half)
    shapes = linear_shapes(arch)
    matrices = sum(i * o * c for i, o, c in shapes.values())
    vectors = max(counts.per_layer - matrices, 0)
    for layer in range(arch.num_layers):
        for name, (fan_in, fan_out, copies) in shapes.items():
            for c in range(copies):
                n = fan_in * fan_out
                put(("qs", layer, name, c), n * (sb.frozen_weight - 0.5), parameter=False)   # quant_state
                put(("w", layer, name, c), n * 0.5)                                         # packed NF4
                if rank and ("all-linear" in targets or name in targets):
                    put(("A", layer, name, c), rank * fan_in * half)
                    put(("B", layer, name, c), rank * fan_out * half)
        put(("v", layer), vectors * half)
    put(("final",), counts.final * half)
    put(("head",), counts.lm_head * half)
    if rank and "lm_head" in targets:   # issue 17 (L): the lm_head's adapter, after the head in module order
        put(("A", "lm_head"), rank * (arch.word_embed_proj_dim or arch.hidden_size) * half)
        put(("B", "lm_head"), rank * arch.vocab_size * half)
    for key, nbytes in params:
        if strategy.offload_param == "none":      # with offload_param the partitions go to remote_device (CPU/NVMe)
            events.append(("a", ("part", key), -(-nbytes // world)))
        events.append(("f", key, 0))
    return events
