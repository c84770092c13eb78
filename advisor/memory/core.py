"""Assemble one memory estimate: model states + activations + buffers + overhead, per GPU and per node."""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

from ..catalog.models import ResolvedModel
from ..errors import InputError
from ..param_count import ParameterCounts, all_linear_note, count_parameters, lora_trainable_parameters
from ..param_count import check_lora_head, lora_head_note   # issue 17 (L): LoRA on the lm_head
from ..param_count import check_qlora_quantizer, lightning_quantized_head   # issue 17 (L): litgpt's QLoRA
from ..families.litgpt_replay import check_model_code, litgpt_model_note, model_code_note   # issue 17 (G)
from ..estimate_result import Estimate, ModelInfo, PerGPU, PerNodeCPU, hardware_info, strategy_info
from ..specs import HardwareSpec, StrategySpec, TrainingSpec
from .activations import REPLAYED_FAMILIES, ComputeMode, activation_memory, compute_mode
from .buffers import buffer_bytes
from .bytes_per_param import fp32_lora_base, fp32_qlora_rest, state_bytes
from .model_states import (LORA_16BIT_BASE_NOTE, QLORA_16BIT_REST_NOTE, lora_fp32_base_extra_bytes, model_states,
                           qlora_kbit_upcast_extra_bytes)
from .overhead import (nccl_communicators, nccl_nvls_bytes_per_communicator, nvls_note, outside_allocator,
                       overhead_defaults)
from .allocator import gpu_allocation
from .peak import ActivationTerms, StepPeak, gradients_formed_in_backward, step_peak
from .checkpoint_save import (ADAPTERS_SAVE_ITEM, FSDP_SAVE_GPU_ITEM, checkpoint_save_cpu, checkpoint_save_notes,
                              fsdp_save_gpu)


def trainable_parameters(model: ResolvedModel, counts: ParameterCounts, training: TrainingSpec) -> int:
    """Elements that receive gradients and optimizer states under the training method."""
    arch = model.architecture
    if training.task == "infer":
        return 0
    if training.method == "full":
        return counts.total
    if training.method == "freeze":
        layers = min(training.freeze_trainable_layers, arch.num_layers)
        return layers * counts.per_layer
    if getattr(training, "model_code", "transformers") == "litgpt":   # issue 17 (G): parts of litgpt's fused qkv
        from ..families.litgpt_replay import litgpt_lora_elements

        return litgpt_lora_elements(arch, training.lora.rank, training.lora.target_modules)
    return lora_trainable_parameters(arch, training.lora.rank, training.lora.target_modules)


def check_compatible(training: TrainingSpec, strategy: StrategySpec, hw: HardwareSpec) -> None:
    """Reject combinations no engine runs, with one line naming the field."""
    if training.precision in ("bf16", "pure-bf16") and not hw.bf16_supported:
        raise InputError(f"{training.precision} needs a GPU with bf16 (Ampere/sm80 or newer, MI200 or newer); "
                         f"{hw.gpu.name if hw.gpu else 'this GPU'} has none: use fp16 (with dynamic loss scaling)",
                         field="precision")
    if strategy.backend == "single" and hw.world_size > 1:
        raise InputError(f"strategy 'single' uses one GPU but {hw.world_size} were given: use ddp, zero*, fsdp-*",
                         field="strategy")
    if strategy.backend == "fsdp" and strategy.fsdp_sharding == "HYBRID_SHARD" and hw.nodes == 1 \
            and hw.gpus_per_node == 1:
        raise InputError("fsdp-hybrid needs more than one GPU", field="strategy")
    if "nvme" in (strategy.offload_optimizer, strategy.offload_param) and not hw.nvme_path:
        raise InputError("NVMe offload needs --nvme-path (a local NVMe mount for ZeRO-Infinity)", field="offload")
    if training.method == "qlora" and strategy.backend == "deepspeed" and strategy.zero_stage == 3 \
            and training.precision == "fp32":
        raise InputError("QLoRA computes in 16-bit: use bf16 or fp16", field="precision")
    check_lora_head(training)
    if training.method == "qlora" and training.base_dtype == "fp32" \
            and strategy.backend in ("deepspeed", "fsdp"):
        # issue 17: TRL/PEFT skip prepare_model_for_kbit_training when FSDP / ZeRO-3 shard the 4-bit weights (their
        # flat parameters need one dtype, bnb_4bit_quant_storage); DeepSpeed fp16/bf16 casts the module to 16 bit
        raise InputError(f"--base-dtype fp32 with --method qlora is the one-GPU/DDP upcast of PEFT's "
                         f"prepare_model_for_kbit_training; under {strategy.backend} the non-quantized weights are "
                         f"16-bit ({'DeepSpeed casts the module' if strategy.backend == 'deepspeed' else 'FSDP shards one storage dtype'}): "
                         f"drop --base-dtype fp32", field="base_dtype")


def estimate_memory(model: ResolvedModel, hw: HardwareSpec, training: TrainingSpec,
                    strategy: StrategySpec) -> Estimate:
    """Per-GPU and per-node-CPU bytes for training (or inference) of ``model`` under ``strategy``."""
    check_compatible(training, strategy, hw)
    if training.batch_lengths == "variable":   # issue 17 (helper L): the largest over padded lengths
        from .batch_lengths import variable_length_estimate
        return variable_length_estimate(model, hw, training, strategy, estimate_memory)
    if strategy.tp_size * strategy.sp_size * strategy.cp_size * strategy.dp_replicate_size > 1:
        from .parallel import layout_estimate   # issue 15: one rank of a TP/SP/CP layout (memory/parallel.py)
        return layout_estimate(model, hw, training, strategy, estimate_memory, trainable_parameters)
    arch = model.architecture
    check_qlora_quantizer(arch, training, hw.world_size)
    check_model_code(arch, training, strategy)   # issue 17 (G): --model-code litgpt
    if fp32_qlora_rest(training, strategy) and (arch.traced or arch.family not in REPLAYED_FAMILIES):
        # issue 17: the fp32 residual stream around Linear4bit is replayed (families/replay.py proj); the tracer
        # runs QLoRA as LoRA over nn.Linear, whose outputs stay 16-bit under autocast: it would under-count
        raise InputError(f"--method qlora --base-dtype fp32 is replayed for the replayed families only; "
                         f"{arch.family} is traced (QLoRA as LoRA over nn.Linear): drop --base-dtype fp32",
                         field="base_dtype")
    counts = count_parameters(arch)
    trainable = trainable_parameters(model, counts, training)
    info = ModelInfo(name=model.name, family=arch.family, parameters=counts.total, trainable_parameters=trainable,
                     source=model.source, note=litgpt_model_note(model.note, training))   # issue 17 (G)
    ov = overhead_defaults()
    outside = outside_allocator(hw, strategy)   # issue 17 (helper C): this card's CUDA context and NCCL (overhead.yaml)
    if training.task == "infer":
        from .inference import inference_layouts   # here: a training estimate imports no inference code
        est = inference_layouts(model, counts, info, hw, training, strategy, ov)
        if training.torch_version or training.transformers_version:   # issue 17 (helper T): said, not applied
            est = est.model_copy(update={"notes": list(est.notes) + [
                "--torch-version / --transformers-version are applied to training estimates only (an old "
                "transformers' per-layer rotary caches are not counted here)"]})
        return est

    sb = state_bytes(training, strategy)
    # NCCL's NVLink-SHARP buffers: per communicator, on NVSwitch H100/H200 nodes (advisor/memory/overhead.py)
    comms = nccl_communicators(strategy)
    nvls = comms * nccl_nvls_bytes_per_communicator(hw, training.torch_version)   # issue 17: per torch's NCCL
    ms = model_states(arch, counts, trainable, sb, training, strategy, hw)
    mode = activation_mode(training, strategy)
    act = activation_memory(arch, training, mode)
    tiling_note = None
    if training.tiled_mlp:      # issue 15: ALST TiledMLP (advisor/memory/tiling.py)
        from .tiling import tiled_activations
        act, tiling_note = tiled_activations(arch, training, strategy, act, mode)
    buffers = buffer_bytes(arch, counts, trainable, sb, training, strategy, hw)
    terms = ActivationTerms.of(act)
    if terms.autocast_weight_copies and strategy.backend != "fsdp" and training.method not in ("lora", "qlora"):
        # torch.autocast casts each fp32 weight to 16 bit once per forward and the linears save the copies
        # for backward (autocast weight cache). FSDP's MixedPrecision already holds 16-bit params, and a
        # LoRA/QLoRA base is stored in 16 bit / NF4, so neither is copied.
        buffers["autocast 16-bit weight copies (saved for backward)"] = terms.autocast_weight_copies
    elif strategy.backend != "fsdp" and training.method in ("lora", "qlora") and mode.startswith("autocast"):
        # issue 17: LoRA under autocast (FSDP's MixedPrecision gathers 16-bit params: no casts there). Autocast
        # caches the 16-bit cast of every leaf that requires grad until the autocast region ends
        # (aten/src/ATen/autocast_mode.cpp cached_cast: arg.requires_grad() && arg.is_leaf()): the fp32
        # adapters (PEFT autocast_adapter_dtype) of every layer, through the forward (and the saved ones through
        # the backward). A frozen fp32 base (--base-dtype fp32) is not cached: each weight is cast at every use
        # and MmBackward saves the copy while its input needs a grad: every layer's linears through the backward
        # without checkpointing (the first layer's too: an upper bound), with full checkpointing only the
        # recomputed layer's (during its backward); and the lm_head's (saved by the logits until the head's
        # backward). Counted from the linears' shapes (param_count.linear_shapes).
        copies = trainable * 2
        if fp32_qlora_rest(training, strategy):
            # issue 17: QLoRA with fp32 non-quantized weights: the 4-bit linears dequantize (a transient, no autocast
            # copy); the frozen fp32 lm_head is cast at its use and MmBackward saves the copy (input needs a grad)
            copies += (arch.word_embed_proj_dim or arch.hidden_size) * arch.vocab_size * 2
        elif fp32_lora_base(training, strategy):
            from ..param_count import linear_shapes

            layer = sum(i * o * c for i, o, c in linear_shapes(arch).values())
            layers = 1 if training.activation_checkpointing == "full" else arch.num_layers
            copies += (layers * layer + arch.vocab_size * arch.hidden_size) * 2
        buffers["autocast 16-bit copies of fp32 weights (LoRA adapters" + (
            ", the fp32 base" if fp32_lora_base(training, strategy) else "") + (
            ", the fp32 lm_head" if fp32_qlora_rest(training, strategy) else "") + ")"] = copies
    buffers_total = sum(buffers.values())

    # The peak is the worst moment of the step (advisor/memory/peak.py): gradients formed during backward,
    # activations freed by it and the optimizer step's transients are not all alive at once.
    held_fp32 = accelerate_fp32_logits(arch, training, strategy)
    peak = step_peak(arch, counts, training, strategy, hw, act, ms.step, held_extra=held_fp32)
    tensor_bytes = ms.parameters + ms.optimizer_states + buffers_total + peak.dynamic
    # PyTorch's caching allocator over the step's allocation sequence (advisor/memory/allocator.py):
    # max_memory_allocated and max_memory_reserved; total = reserved + CUDA context + NCCL.
    gpu = gpu_allocation(arch, training, strategy, hw, ms, buffers,
                         gradients_formed_in_backward(training, strategy, hw), mode,
                         tensor_bytes,
                         limit=hw.vram_bytes - outside.total - nvls,
                         held_fp32=held_fp32)
    gpu, zero3_loading = _zero3_loading_floor(arch, counts, training, strategy, hw, gpu)   # issue 17 (G2): QLoRA + ZeRO-3
    overhead_parts = {"CUDA context": outside.context_bytes,
                      "cuBLAS workspaces (forward and backward thread)": gpu.workspaces,
                      "allocator: block rounding (allocated - tensors)": gpu.rounding,
                      ZERO3_LOADING_ITEM: zero3_loading,
                      "allocator: cached free blocks (reserved - allocated)": gpu.cached}
    overhead_parts["NCCL communicators"] = outside.nccl_bytes   # helper C: one GPU under DeepSpeed too (overhead.py)
    if hw.world_size > 1:
        overhead_parts[f"NCCL NVLS buffers ({comms} communicator{'s' if comms > 1 else ''})"] = nvls
    overhead = sum(overhead_parts.values())
    total = tensor_bytes + overhead
    # issue 17: an FSDP FULL_STATE_DICT save gathers units in full precision between steps, when the step's
    # activations, gradients and gathered 16-bit units are gone; the caching allocator releases its cached blocks
    # before it fails a cudaMalloc, so the save needs its tensors + context + NCCL: counted where that is more
    save_need = fsdp_save_gpu(arch, counts, trainable, sb, training, strategy,
                              ms.parameters + ms.optimizer_states + buffers_total)
    if save_need:
        save_need += sum(v for k, v in overhead_parts.items() if not k.startswith("allocator:"))
    save_gpu_extra = max(0, save_need - total)
    total += save_gpu_extra

    # Every byte of `total` is one item: model states, activation terms, the transient of the naive sum,
    # buffers, overhead, and what is not alive at the peak moment (negative).
    breakdown = dict(ms.gpu_breakdown)
    breakdown.update({f"activations: {k}": v for k, v in act.breakdown.items()
                      if k != "per_layer" and not k.startswith(("temp:", "info:"))})
    breakdown[_transient_label(peak, terms, held_fp32)] = peak.temporaries
    breakdown.update(buffers)
    breakdown[FSDP_SAVE_GPU_ITEM] = save_gpu_extra
    breakdown.update(overhead_parts)
    if peak.phase_overlap:
        breakdown[f"not alive at the peak ({peak.moment.value})"] = -peak.phase_overlap
    breakdown = {k: v for k, v in breakdown.items() if v}
    assert sum(breakdown.values()) == total, "breakdown must add up to total"

    cpu_parts = dict(ms.cpu_per_node)
    cpu_parts["training processes"] = ov.cpu_per_process_bytes * hw.gpus_per_node
    if act.breakdown.get("info:offloaded_activations"):
        # --offload-activations: pinned host copies of every GPU's saved activations
        cpu_parts["offloaded activations (pinned)"] = act.breakdown["info:offloaded_activations"] * hw.gpus_per_node
    loading = _model_loading_cpu(counts, sb, training, strategy, hw)
    cpu_parts.update(loading)
    save_item, save = checkpoint_save_cpu(arch, counts, trainable, sb, training, strategy)
    if save > sum(loading.values()):
        # the save happens after loading is over: only what it adds above the loading peak
        cpu_parts[save_item] = save - sum(loading.values())
    cpu_total = sum(cpu_parts.values())
    cpu_fits = hw.cpu_ram_bytes is None or cpu_total <= hw.cpu_ram_bytes
    nvme_fits = hw.nvme_bytes is None or ms.nvme_per_node <= hw.nvme_bytes

    notes = [model.note] if model.note else []
    notes.append(outside.note())   # issue 17 (helper C): the context / NCCL figures used and their sources
    if nvls:
        notes.append(nvls_note(nvls, comms, hw, training.torch_version))
    replayed = not arch.traced and arch.family in REPLAYED_FAMILIES   # else model.note says it is traced
    if replayed and "outside_layers" in act.breakdown:
        # a replayed family whose replay declines this run (Family.replay_covers; issue 14, A2)
        notes.append(f"activations traced on the real transformers model for this run: the {arch.family} "
                     "replay does not cover it (LoRA adapters on MoE experts or the router); needs torch and "
                     "transformers, cached after the first run per setting")
    traced_here = not replayed or "outside_layers" in act.breakdown
    if traced_here and training.loss != "plain" and training.model_code == "transformers":
        # The tracer runs the installed transformers model, whose loss is its plain cross-entropy over the whole
        # logits: another --loss is not applied (an over-estimate by the logits it would not materialize).
        notes.append(f"--loss {training.loss} is not applied: the {arch.family} activations are traced on the real "
                     "transformers model, whose plain cross-entropy over the whole logits is counted (an "
                     "over-estimate where the chosen loss keeps less)")
    if training.method in ("lora", "qlora"):   # issue 14: all-linear leaving out a family's router (Llama-4)
        if lora_note := all_linear_note(arch, tuple(training.lora.target_modules)):
            notes.append(lora_note)
        if head_note := lora_head_note(arch, training):
            notes.append(head_note)
        if lightning_quantized_head(training):
            notes.append("QLoRA quantized by lightning (litgpt --quantize bnb.nf4): every nn.Linear is NF4, the lm_head "
                         "included, and each dequantization is an fp16 copy cast to the compute dtype, one weight at a "
                         "time (counted: the lm_head's for each call on top of the loss moment)")
    if note := model_code_note(training):   # issue 17 (G): which model code the activations follow
        notes.append(note)
    if fp32_extra := lora_fp32_base_extra_bytes(counts, training, strategy, hw):
        notes.append(f"{LORA_16BIT_BASE_NOTE}: {fp32_extra / 2**30:.2f} GiB per GPU here, as much again in fp32")
    if upcast := qlora_kbit_upcast_extra_bytes(arch, counts, training, strategy):
        notes.append(f"{QLORA_16BIT_REST_NOTE} ({upcast / 2**30:.2f} GiB per GPU here, as much again in fp32)")
    if training.attention == "sdpa" and (arch.attention_sinks or arch.attn_logit_softcapping):
        # transformers: GptOssPreTrainedModel._supports_sdpa = False (sinks); sdpa_attention_forward refuses softcap
        why = "attention sinks" if arch.attention_sinks else "attention logit soft-capping"
        notes.append(f"{arch.family} has no SDPA path in transformers ({why}): --attention sdpa runs eager "
                     f"attention, which saves the b x heads x s x s probabilities of every layer (counted); "
                     f"--attention flash avoids them")
    if tiling_note:
        notes.append(tiling_note)
    notes += stack_notes(arch, training, strategy)   # issue 17 (helper T): what the stated versions change
    if act.breakdown.get("info:offloaded_activations"):
        moved = act.breakdown["info:offloaded_activations"]
        pcie = hw.gpu.pcie_bandwidth_gbps if hw.gpu is not None and getattr(hw.gpu, "pcie_bandwidth_gbps", None) else None
        secs = f" (~{2 * moved / (pcie * 1e9):.2f} s per micro-step at {pcie:g} GB/s if not overlapped)" if pcie else ""
        notes.append(f"--offload-activations: {moved / 2**30:.2f} GiB of saved activations go to pinned CPU memory "
                     f"in each forward and back in the backward{secs}")
    if strategy.backend == "deepspeed" and strategy.zero_stage == 3:   # issue 17 (Z): the replayed ZeRO-3 gathers
        from .zero3_gather import zero3_gather_note
        from .zero_sizes import deepspeed_sizes

        z3_note = zero3_gather_note(arch, training, deepspeed_sizes(arch, strategy), hw.world_size,
                                    2 if sb.weight == 2 else 4,
                                    buffers.get("ZeRO-3 gathered parameters (module + prefetch)", 0))
        if z3_note:
            notes.append(z3_note)
    if zero3_loading:
        notes.append(f"ZeRO-3 with a QLoRA base: transformers does not build a quantized model under zero.Init, so "
                     f"DeepSpeed puts the whole quantized model on every GPU before partitioning it "
                     f"({gpu.allocated / 2**30:.1f} GiB allocated at that moment, above the training step): that "
                     f"sets this estimate's peak; FSDP wraps it unit by unit instead")
    if gpu.oom_retries:
        notes.append("fits only because PyTorch's allocator frees its cached segments and retries when "
                     "cudaMalloc fails (reserved reaches the card): expect cudaFree/cudaMalloc stalls each step; "
                     "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True avoids them")
    if not gpu.simulated_layers:
        notes.append("the tensors alone exceed the GPU: the caching allocator was not simulated "
                     "(allocated = reserved = tensor bytes here)")
    if not replayed:   # what the trace had to approximate, said
        from ..trace.estimate import trace_settings

        _, approximations = trace_settings(training, mode)
        notes += [f"traced activations: {text}" for text in approximations]
    if save_item in cpu_parts and save_item != ADAPTERS_SAVE_ITEM and not cpu_fits \
            and cpu_total - cpu_parts[save_item] <= (hw.cpu_ram_bytes or 0):
        notes.append("saving a consolidated 16-bit checkpoint gathers the whole model into rank 0's CPU RAM and "
                     "does not fit: set zero_optimization.stage3_gather_16bit_weights_on_model_save=false and "
                     "save ZeRO shards (consolidate offline with zero_to_fp32.py; --checkpoint-save sharded)"
                     if strategy.backend == "deepspeed" else
                     "FULL_STATE_DICT checkpoints gather the whole model and optimizer state into rank 0's CPU RAM "
                     "and do not fit: set fsdp_state_dict_type: SHARDED_STATE_DICT (--checkpoint-save sharded; "
                     "consolidate offline with accelerate merge-weights)")
    notes += checkpoint_save_notes(trainable, training, strategy)   # PEFT under ZeRO-3: the other save path
    if strategy.backend == "fsdp" and training.checkpoint_save == "auto":
        notes.append("checkpoints: saved sharded (SHARDED_STATE_DICT, as dsadvise renders it); accelerate's FSDP1 "
                     "default, FULL_STATE_DICT, would gather the model and optimizer state into rank 0's CPU RAM: "
                     "--checkpoint-save consolidated counts it")
    per_gpu = PerGPU(parameters=ms.parameters, gradients=ms.gradients, optimizer_states=ms.optimizer_states,
                     activations=act.activations, temporaries=peak.temporaries, buffers=buffers_total,
                     overhead=overhead, phase_overlap=peak.phase_overlap, peak_moment=peak.moment.value,
                     moments={m.value: v for m, v in peak.moments.items()}, total=total, breakdown=breakdown,
                     allocated=gpu.allocated, reserved=gpu.reserved)
    return Estimate(task="train", model=info, hardware=hardware_info(hw), strategy=strategy_info(training, strategy),
                    per_gpu=per_gpu,
                    per_node_cpu=PerNodeCPU(total=cpu_total, available_bytes=hw.cpu_ram_bytes, fits=cpu_fits,
                                            breakdown=cpu_parts),
                    per_node_nvme_bytes=ms.nvme_per_node,
                    fits=total <= hw.vram_bytes and cpu_fits and nvme_fits,
                    headroom_bytes=hw.vram_bytes - total, notes=notes)


def stack_notes(arch, training: TrainingSpec, strategy: StrategySpec) -> list[str]:
    """What the stated --transformers-version changes in this estimate, and what of it is not counted
    (advisor/data/stacks.yaml); nothing without a version."""
    from ..stacks import causal_mask_buffer, inline_fp32_loss, not_counted, rotary_caches
    from .buffers import rotary_cache_bytes

    v = training.transformers_version
    if v is None:
        return []
    out = []
    caches = rotary_caches(arch, v)
    if caches is not None:
        at_wrap, steady = rotary_cache_bytes(arch, training, strategy)
        cast = (f", cast to 16-bit by FSDP's MixedPrecision at the first forward ({steady * arch.num_layers / 2**20:.0f}"
                f" MiB)" if steady != at_wrap else "")
        built = ("16-bit, the model's dtype as counted (loaded with torch_dtype=bf16/fp16 or cast whole)"
                 if at_wrap == caches.elements_per_layer * 2 else
                 "fp32, torch's default dtype (the larger; a model built with torch_dtype=bf16 holds half)")
        out.append(f"transformers {v}: every decoder layer owns rotary cos/sin caches ({caches.names}) "
                   f"of {arch.max_position_embeddings} x {arch.head_dim} each, buffers whole on every GPU: "
                   f"{at_wrap * arch.num_layers / 2**20:.0f} MiB built in {built}{cast}")
    if inline_fp32_loss(v) and training.loss != "legacy-inline":
        out.append(f"transformers {v} computes the loss inside the model on fp32 logits (--loss legacy-inline); "
                   f"this estimate uses --loss {training.loss} as given")
    if causal_mask_buffer(arch, v):
        built = ("and builds a (batch, 1, max_pos, max_pos) mask from it each forward, counted held through the step"
                 if training.attention != "flash" else "(flash attention: no 4D mask is built from it)")
        out.append(f"transformers {v}: LlamaModel registers a {arch.max_position_embeddings}^2 bool causal_mask "
                   f"buffer {built}")
    # issue 17 (session 9, helper A): the replay's attention under that transformers (stacks.yaml, counted)
    from ..stacks import family_stack_behaviour, sdpa_contiguous_qkv, sdpa_repeats_kv
    done = []
    if training.attention == "sdpa" and sdpa_repeats_kv(v) and arch.num_key_value_heads != arch.num_attention_heads:
        done.append(f"SDPA gets the {arch.num_key_value_heads} K/V heads repeated to {arch.num_attention_heads} "
                    f"(repeat_kv; enable_gqa from 4.54) and saves them so")
    if training.attention == "sdpa" and (sdpa_contiguous_qkv(v) or family_stack_behaviour("sdpa_mask_contiguous", arch, v)):
        done.append("q/k/v are made contiguous before SDPA, so o_proj saves a copy of the attention output")
    if family_stack_behaviour("rotary_per_layer", arch, v):
        done.append("each layer computes and saves its own rotary cos/sin")
    if done:
        out.append(f"transformers {v}: " + "; ".join(done) + " (counted)")
    if caches is not None and strategy.backend == "ddp":
        out.append(f"transformers {v}: not counted: torch DDP broadcasts every buffer from rank 0 at each forward "
                   f"(broadcast_buffers=True: torch/nn/parallel/distributed.py _sync_buffers, flat buckets of up to "
                   f"250 MiB while it copies them)")
    out += [f"transformers {v}: not counted: {what}" for what in not_counted(arch, v, training.attention)]
    return out


ZERO3_LOADING_ITEM = "model loading: the whole quantized model on the GPU before ZeRO-3 partitions it (cached)"


def _zero3_loading_floor(arch, counts: ParameterCounts, training: TrainingSpec, strategy: StrategySpec,
                         hw: HardwareSpec, gpu):
    """``gpu`` (GpuAllocation) raised to the engine's loading peak, and the bytes that adds to allocated (0 when
    the loading stays below the step): a quantized base under ZeRO-3 goes whole onto every GPU before it is
    partitioned (model_states.zero3_whole_model_placement); max_memory_allocated has seen that peak and the
    reserved memory keeps its cached blocks (a floor: the step reuses them where it can)."""
    if not (training.method == "qlora" and strategy.backend == "deepspeed" and strategy.zero_stage == 3):
        return gpu, 0
    # the loading does not depend on the batch: one simulation for every micro-batch a search tries
    key = training.model_copy(update={"micro_batch_size": 1})
    init = _zero3_loading_stats(arch, counts, key, strategy, hw) if gpu.simulated_layers else None
    if init is None:
        return gpu, 0
    allocated = max(gpu.allocated, init.peak_allocated)
    # a side stream's pool (ZeRO-3's all-gather stream) cannot reuse the loading's cached blocks: on top
    pool = gpu.stream_pool
    reserved = max(gpu.reserved - pool, init.peak_reserved, allocated) + pool
    return (replace(gpu, allocated=allocated, reserved=reserved, cached=reserved - allocated - pool),
            allocated - gpu.allocated)


@lru_cache(maxsize=256)
def _zero3_loading_stats(arch, counts: ParameterCounts, training: TrainingSpec, strategy: StrategySpec,
                         hw: HardwareSpec):
    """The simulated allocator peaks (AllocatorStats) of the ZeRO-3 loading sequence, None when there is none."""
    from .allocator import simulate
    from .model_states import zero3_whole_model_placement

    events = zero3_whole_model_placement(arch, counts, training, strategy, hw)
    return simulate(events) if events else None


def activation_mode(training: TrainingSpec, strategy: StrategySpec) -> ComputeMode:
    """The compute mode activations are counted in, decided per engine together with the weights' dtype.

    * DeepSpeed fp16/bf16 casts the module to 16 bit and runs no autocast (``half-*``; engine.py
      ``_configure_distributed_model`` ``module.half()/bfloat16()``).
    * FSDP under accelerate: ``MixedPrecision(param_dtype=16-bit)`` gathers 16-bit parameters and accelerate
      still wraps the forward in autocast (``Accelerator.prepare_model``: ``native_amp`` for every
      distributed type but DeepSpeed/Megatron): autocast over 16-bit weights (``autocast16-*``).
    * LoRA/QLoRA under accelerate / the HF Trainer: the base is loaded in 16 bit (``torch_dtype``; model
      states count it so) and autocast runs over it: ``autocast16-*``.
    * Single GPU / DDP full fine-tuning: autocast over the fp32 weights the optimizer updates (``autocast-*``).
    """
    mode = compute_mode(training.precision, strategy.backend)
    if mode.startswith("autocast") and ((strategy.backend != "fsdp" and fp32_lora_base(training, strategy))
                                        or fp32_qlora_rest(training, strategy)):
        # issue 17: --base-dtype fp32: autocast over the fp32 LoRA base (FSDP gathers it in 16 bit); for QLoRA an
        # fp32 embedding makes an fp32 residual stream, fp32 norms and an fp32 lm_head, each Linear4bit casting its
        # input to the compute dtype and its output back (bitsandbytes nn/modules.py Linear4bit.forward), replayed
        # in families/replay.py proj
        return mode
    if mode.startswith("autocast") and (strategy.backend == "fsdp" or training.method in ("lora", "qlora")):
        return f"autocast16-{training.precision}"  # type: ignore[return-value]
    return mode


def accelerate_fp32_logits(arch, training: TrainingSpec, strategy: StrategySpec) -> int:
    """Extra bytes of the logits the training loop holds: accelerate converts a 16-bit model output to fp32
    under native AMP (``Accelerator.prepare_model``: ``convert_outputs_to_fp32``; not under DeepSpeed), so the
    caller holds N x V x 4 bytes instead of the 16-bit logits (freed: nothing saves them)."""
    if strategy.backend == "deepspeed" or training.precision not in ("fp16", "bf16"):
        return 0
    if training.loss == "legacy-inline":    # the model already returns fp32 logits: convert_to_fp32 keeps them
        return 0
    if training.loss in ("trl-head", "fused-linear"):   # no logits reach the loop: TRL's fused LM head returns
        # fp32 per-token values; Liger's fused linear cross-entropy (LigerForCausalLMLoss in its patched forward)
        # and Cut Cross-Entropy (cut_cross_entropy/transformers cce_forward, labels given) return logits=None,
        # which convert_to_fp32 passes through
        from ..families import REPLAYED_FAMILIES     # (a traced family counts the real model's plain loss)

        if not arch.traced and arch.family in REPLAYED_FAMILIES:
            return 0
    return training.micro_batch_size * training.seq_len * arch.vocab_size * (4 - 2)


def _transient_label(peak: StepPeak, terms: ActivationTerms, held_fp32: int) -> str:
    """Name of the transient term: the optimizer step's or the backward's, whichever the naive sum took."""
    if peak.temporaries > terms.temporaries + held_fp32:
        return "transient: optimizer step (gradient copies, step temporaries, held logits)"
    if held_fp32:
        return "transient: backward (loss and layer gradients, accelerate's fp32 logits)"
    return "transient: backward (loss and layer gradients)"


def _model_loading_cpu(counts: ParameterCounts, sb, training: TrainingSpec,
                       strategy: StrategySpec, hw: HardwareSpec) -> dict[str, int]:
    """Transient CPU RAM while each process loads the checkpoint before moving it to the GPU: the model in the
    dtype it is loaded in (``from_pretrained(torch_dtype=...)``, what advisor/render/frameworks/common.py
    ``load_dtype`` writes): a LoRA base as counted (16-bit, fp32 with --base-dtype fp32), a QLoRA base in
    16 bit (quantized layer by layer), full fine-tuning's weights as the model holds them (fp32 under
    accelerate's autocast, 16-bit for DeepSpeed fp16/bf16 and pure bf16)."""
    if training.method == "qlora":
        load_b = 4 if training.precision == "fp32" else 2
    elif training.method == "lora":
        load_b = sb.frozen_weight
    else:
        load_b = sb.weight
    if strategy.backend == "deepspeed" and strategy.zero_stage == 3:
        # zero.Init partitions at construction: only the largest layer is whole on CPU per process
        # (estimate_zero3_model_states_mem_needs, zero_init=True). A quantized (QLoRA) base is not zero.Init'ed
        # (transformers modeling_utils get_init_context: meta device, then each tensor loaded and quantized onto
        # its GPU): per process about one tensor in 16 bit at a time, which the largest module in fp32 covers.
        return {"model loading (zero.Init, largest layer per process)":
                counts.largest_module * 4 * hw.gpus_per_node}
    if strategy.backend == "fsdp":
        # accelerate's fsdp_cpu_ram_efficient_loading: rank 0 loads, others build on the meta device.
        return {"model loading (rank 0 only)": counts.total * load_b}
    # Every local process materializes the full model on CPU before .to(device) (from_pretrained).
    return {"model loading (one copy per process)": counts.total * load_b * hw.gpus_per_node}


def largest_micro_batch(model: ResolvedModel, hw: HardwareSpec, training: TrainingSpec, strategy: StrategySpec,
                        *, margin: float = 0.0, limit: int = 65_536) -> int:
    """The largest micro-batch (samples per GPU) whose estimate fits ``vram × (1 − margin)`` and the node's
    CPU RAM; 0 when even one sample does not fit. Doubling, then bisection: memory grows with batch."""
    usable = hw.vram_bytes * (1 - margin)

    def fits(batch: int) -> bool:
        est = estimate_memory(model, hw, training.model_copy(update={"micro_batch_size": batch}), strategy)
        return est.per_gpu.total <= usable and est.per_node_cpu.fits

    if not fits(1):
        return 0
    low, high = 1, 2
    while high <= limit and fits(high):
        low, high = high, high * 2
    high = min(high, limit + 1)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low
