"""Assemble one memory estimate: model states + activations + buffers + overhead, per GPU and per node."""

from __future__ import annotations

from ..catalog.models import ResolvedModel
from ..errors import InputError
from ..param_count import ParameterCounts, count_parameters, lora_trainable_parameters
from ..estimate_result import Estimate, ModelInfo, PerGPU, PerNodeCPU, hardware_info, strategy_info
from ..specs import HardwareSpec, StrategySpec, TrainingSpec
from .activations import REPLAYED_FAMILIES, activation_memory, compute_mode
from .buffers import buffer_bytes
from .bytes_per_param import state_bytes
from .inference import inference_layouts
from .model_states import model_states
from .overhead import overhead_defaults
from .allocator import gpu_allocation
from .peak import gradients_formed_in_backward, step_peak


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


def estimate_memory(model: ResolvedModel, hw: HardwareSpec, training: TrainingSpec,
                    strategy: StrategySpec) -> Estimate:
    """Per-GPU and per-node-CPU bytes for training (or inference) of ``model`` under ``strategy``."""
    check_compatible(training, strategy, hw)
    arch = model.architecture
    counts = count_parameters(arch)
    trainable = trainable_parameters(model, counts, training)
    info = ModelInfo(name=model.name, family=arch.family, parameters=counts.total, trainable_parameters=trainable,
                     source=model.source, note=model.note)
    ov = overhead_defaults()
    if training.task == "infer":
        return inference_layouts(model, counts, info, hw, training, strategy, ov)

    sb = state_bytes(training, strategy)
    ms = model_states(arch, counts, trainable, sb, training, strategy, hw)
    act = activation_memory(arch, training, compute_mode(training.precision, strategy.backend))
    buffers = buffer_bytes(arch, counts, trainable, sb, training, strategy, hw)
    weight_copies = act.breakdown.get("info:autocast_weight_copies", 0)
    if weight_copies and strategy.backend != "fsdp" and training.method not in ("lora", "qlora"):
        # torch.autocast casts each fp32 weight to 16 bit once per forward and the linears save the copies
        # for backward (autocast weight cache). FSDP's MixedPrecision already holds 16-bit params, and a
        # LoRA/QLoRA base is stored in 16 bit / NF4, so neither is copied.
        buffers["autocast 16-bit weight copies (saved for backward)"] = weight_copies
    buffers_total = sum(buffers.values())

    # The peak is the worst moment of the step (advisor/memory/peak.py): gradients formed during backward
    # and activations freed by it are not all alive at once. Fields sum to the total minus that overlap.
    peak = step_peak(arch, counts, training, strategy, hw, act, ms.gradients, ms.step_temporaries)
    temporaries = peak.naive - act.activations - ms.gradients
    tensor_bytes = ms.parameters + ms.optimizer_states + buffers_total + peak.dynamic
    # PyTorch's caching allocator over the step's allocation sequence (advisor/memory/allocator.py):
    # max_memory_allocated and max_memory_reserved; total = reserved + CUDA context + NCCL.
    gpu = gpu_allocation(arch, training, strategy, hw, ms, buffers,
                         gradients_formed_in_backward(training, strategy, hw),
                         compute_mode(training.precision, strategy.backend), tensor_bytes,
                         limit=hw.vram_bytes - ov.cuda_context_bytes - (ov.nccl_bytes if hw.world_size > 1 else 0))
    overhead_parts = {"CUDA context": ov.cuda_context_bytes,
                      "allocator: block rounding (allocated - tensors)": gpu.rounding,
                      "allocator: cached free blocks (reserved - allocated)": gpu.cached}
    if hw.world_size > 1:
        overhead_parts["NCCL communicators"] = ov.nccl_bytes
    overhead = sum(overhead_parts.values())
    total = tensor_bytes + overhead

    breakdown = dict(ms.gpu_breakdown)
    # Activation terms that add up to `activations` (not the per-layer sub-term, the temporaries'
    # candidates `temp:*` or informational `info:*` entries).
    breakdown.update({f"activations: {k}": v for k, v in act.breakdown.items()
                      if k != "per_layer" and not k.startswith(("temp:", "info:"))})
    breakdown.update(buffers)
    breakdown.update(overhead_parts)
    if ms.step_temporaries:
        breakdown["optimizer step temporaries (foreach)"] = ms.step_temporaries
    if peak.phase_overlap:
        breakdown[f"not alive at the peak ({peak.moment})"] = -peak.phase_overlap

    cpu_parts = dict(ms.cpu_per_node)
    cpu_parts["training processes"] = ov.cpu_per_process_bytes * hw.gpus_per_node
    if act.breakdown.get("info:offloaded_activations"):
        # --offload-activations: pinned host copies of every GPU's saved activations
        cpu_parts["offloaded activations (pinned)"] = act.breakdown["info:offloaded_activations"] * hw.gpus_per_node
    cpu_parts.update(_model_loading_cpu(counts, sb.weight, training, strategy, hw))
    cpu_total = sum(cpu_parts.values())
    cpu_fits = hw.cpu_ram_bytes is None or cpu_total <= hw.cpu_ram_bytes
    nvme_fits = hw.nvme_bytes is None or ms.nvme_per_node <= hw.nvme_bytes

    notes = [model.note] if model.note else []
    if act.breakdown.get("info:offloaded_activations"):
        moved = act.breakdown["info:offloaded_activations"]
        pcie = hw.gpu.pcie_bandwidth_gbps if hw.gpu is not None and getattr(hw.gpu, "pcie_bandwidth_gbps", None) else None
        secs = f" (~{2 * moved / (pcie * 1e9):.2f} s per micro-step at {pcie:g} GB/s if not overlapped)" if pcie else ""
        notes.append(f"--offload-activations: {moved / 2**30:.2f} GiB of saved activations go to pinned CPU memory "
                     f"in each forward and back in the backward{secs}")
    if gpu.oom_retries:
        notes.append("fits only because PyTorch's allocator frees its cached segments and retries when "
                     "cudaMalloc fails (reserved reaches the card): expect cudaFree/cudaMalloc stalls each step; "
                     "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True avoids them")
    if not gpu.simulated_layers:
        notes.append("the tensors alone exceed the GPU: the caching allocator was not simulated "
                     "(allocated = reserved = tensor bytes here)")
    if arch.traced or arch.family not in REPLAYED_FAMILIES:   # what the trace had to approximate, said
        from ..trace.estimate import trace_settings

        _, approximations = trace_settings(training, compute_mode(training.precision, strategy.backend))
        notes += [f"traced activations: {text}" for text in approximations]
    per_gpu = PerGPU(parameters=ms.parameters, gradients=ms.gradients, optimizer_states=ms.optimizer_states,
                     activations=act.activations, temporaries=temporaries, buffers=buffers_total,
                     overhead=overhead, phase_overlap=peak.phase_overlap, peak_moment=peak.moment,
                     total=total, breakdown=breakdown, allocated=gpu.allocated, reserved=gpu.reserved)
    return Estimate(task="train", model=info, hardware=hardware_info(hw), strategy=strategy_info(training, strategy),
                    per_gpu=per_gpu,
                    per_node_cpu=PerNodeCPU(total=cpu_total, available_bytes=hw.cpu_ram_bytes, fits=cpu_fits,
                                            breakdown=cpu_parts),
                    per_node_nvme_bytes=ms.nvme_per_node,
                    fits=total <= hw.vram_bytes and cpu_fits and nvme_fits,
                    headroom_bytes=hw.vram_bytes - total, notes=notes)


def _model_loading_cpu(counts: ParameterCounts, weight_bytes: float, training: TrainingSpec,
                       strategy: StrategySpec, hw: HardwareSpec) -> dict[str, int]:
    """Transient CPU RAM while each process loads the checkpoint before moving it to the GPU."""
    load_b = 2 if training.precision != "fp32" else 4   # checkpoints load in torch_dtype (16-bit usually)
    if strategy.backend == "deepspeed" and strategy.zero_stage == 3:
        # zero.Init partitions at construction: only the largest layer is whole on CPU per process
        # (estimate_zero3_model_states_mem_needs, zero_init=True).
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
