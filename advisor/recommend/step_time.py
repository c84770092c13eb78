"""Estimated time of one optimizer step: compute + collective communication + offload traffic (seconds).

A deliberately simple, documented model whose job is to *rank* configurations, not to predict to the
percent. Nothing is assumed to overlap (an upper bound: bucketing and prefetch hide part of the
communication in practice).

Compute
    FLOPs per token, forward: ``2·N_matmul + 4·L·q·s`` (matmul parameters, plus attention scores and the
    weighted sum; Chowdhery et al. 2022, PaLM App. B). Training adds the backward (2x forward for full
    fine-tuning, 6N in all; 1x for LoRA/QLoRA, whose frozen weights need no weight gradient; for
    ``freeze`` only the trainable last layers' share). Recomputation adds one more forward of the layers
    for full checkpointing (8N in all) and the attention core (``4·L·q·s``) for selective (``freeze``:
    of the trainable layers only). The GPU reaches
    :data:`MFU_MAX` of its peak dense tensor rate (catalog bf16/fp16, fp32 for fp32) on large
    micro-batches, ``tokens / (tokens + TOKENS_HALF)`` of that on small ones. QLoRA dequantizes NF4 weights
    before each matmul: :data:`QLORA_SLOWDOWN`.
Communication (bytes per GPU, ring collectives move (n-1)/n of the data per GPU; Ψ = parameters)
    DDP / ZeRO-0 / FSDP NO_SHARD: one all-reduce of the gradients per step (2Ψ). ZeRO-1: reduce-scatter of
    gradients + all-gather of updated 16-bit weights per step (2Ψ). ZeRO-2: reduce-scatter every
    micro-step + all-gather per step. ZeRO-3 / FSDP FULL_SHARD: all-gather weights for forward and for
    backward and reduce-scatter gradients every micro-step (3Ψ per micro-step; Rajbhandari et al. 2020
    §7). FSDP SHARD_GRAD_OP: one all-gather + reduce-scatter per micro-step. HYBRID_SHARD: FULL_SHARD inside
    a node plus an all-reduce of each node's gradient shard between nodes. Bandwidth: the catalog's
    intra-node figure on one node; across nodes the smaller of that and the node's network divided by its
    GPUs; times :data:`COMM_EFFICIENCY` (NCCL bus bandwidth vs link rate).
Offload
    Gradients down and updated weights up over each GPU's PCIe link; DeepSpeed's CPU Adam at
    :data:`CPU_ADAM_PARAMS_PER_S` per node; FSDP's CPU offload steps torch's AdamW on the CPU at
    :data:`TORCH_CPU_ADAM_PARAMS_PER_S`; NVMe reads and writes the fp32 optimizer states at
    :data:`NVME_GBPS` per node. ZeRO-3 parameter offload fetches every weight over PCIe for forward and
    backward of each micro-step.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..architecture import Architecture
from ..param_count import ParameterCounts
from ..specs import GiB, GPUInfo, HardwareSpec, StrategySpec

MFU_MAX = 0.40                 # fraction of peak on large micro-batches (HF Trainer + DeepSpeed/FSDP, dense LLMs)
TOKENS_HALF = 1024             # tokens per micro-step at which half of MFU_MAX is reached
QLORA_SLOWDOWN = 1.25          # bitsandbytes NF4 dequantization before each matmul (assumed)
COMM_EFFICIENCY = 0.80         # NCCL bus bandwidth / link bandwidth for large messages
# DeepSpeedCPUAdam (AVX2/AVX-512, all cores of a node), parameters per second. Bounded by DeepSpeed PR #7474:
# a whole Qwen2.5-3B step with CPU offload on 2 x A100-40G (128-core host) takes 2.4 s, so its CPU Adam runs at
# >= 1.3e9 parameters/s; ZeRO-Offload (Ren et al. 2021) reports CPU-Adam several times faster than torch's.
CPU_ADAM_PARAMS_PER_S = 2.0e9
TORCH_CPU_ADAM_PARAMS_PER_S = 0.25e9   # torch.optim.AdamW on CPU (FSDP CPUOffload), parameters per second
NVME_GBPS = 3.0                # one PCIe Gen4 NVMe drive per node, read or write, GB/s

# When no --gpu is given, times assume this generic PCIe card (memory is the --vram given).
GENERIC_GPU_NOTE = ("no --gpu given: step times assume a generic PCIe GPU (150 TFLOPS bf16/fp16, PCIe Gen4 "
                    "25 GB/s between GPUs and to the host, 100 Gb/s between nodes); give --gpu for its own figures")


def generic_gpu(vram_bytes: int) -> GPUInfo:
    """The generic GPU class assumed when only ``--vram`` is known (see :data:`GENERIC_GPU_NOTE`)."""
    return GPUInfo(name="generic", memory_bytes=max(vram_bytes, GiB), bf16=True, fp16_tflops=150.0,
                   bf16_tflops=150.0, fp32_tflops=20.0, hbm_bandwidth_gbps=1000.0, intra_node_link="pcie",
                   intra_node_bandwidth_gbps=25.0, inter_node_bandwidth_gbps=12.5, pcie_bandwidth_gbps=25.0)


@dataclass(frozen=True)
class StepTime:
    """Seconds of one optimizer step and its parts; ``tokens`` processed by the whole job per step."""

    seconds: float
    compute_seconds: float
    communication_seconds: float
    offload_seconds: float
    tokens: int
    mfu: float                 # fraction of peak assumed for the compute part

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def peak_flops(gpu: GPUInfo, precision: str) -> float:
    """Peak dense FLOP/s of ``gpu`` in the compute dtype of ``precision``."""
    if precision == "fp32":
        return gpu.fp32_tflops * 1e12
    if precision in ("bf16", "pure-bf16"):
        return (gpu.bf16_tflops or gpu.fp16_tflops) * 1e12
    return gpu.fp16_tflops * 1e12


def efficiency(tokens_per_microstep: int) -> float:
    """Fraction of peak reached at this many tokens per micro-step per GPU."""
    return MFU_MAX * tokens_per_microstep / (tokens_per_microstep + TOKENS_HALF)


def matmul_parameters(arch: Architecture, counts: ParameterCounts) -> int:
    """Parameters that take part in a matmul per token: active layer weights + the output projection."""
    layers = counts.active_per_token - counts.embedding - counts.lm_head - counts.final
    return max(layers, 0) + arch.vocab_size * arch.hidden_size


def flops_per_token(arch: Architecture, counts: ParameterCounts, seq_len: int, method: str, checkpointing: str,
                    freeze_layers: int = 2, task: str = "train") -> float:
    """FLOPs per token of one training (or inference) pass, by method and recomputation."""
    n_matmul = matmul_parameters(arch, counts)
    attention = 4.0 * arch.num_layers * arch.q_width * seq_len
    forward = 2.0 * n_matmul + attention
    if task == "infer":
        return forward
    if method == "full":
        backward = 2.0 * forward
    elif method == "freeze":
        backward = 2.0 * forward * min(freeze_layers, arch.num_layers) / arch.num_layers
    else:  # lora / qlora: activation gradients only (adapter weight gradients are negligible)
        backward = forward
    layer_forward = forward - 2.0 * arch.vocab_size * arch.hidden_size
    recompute = {"full": layer_forward, "selective": attention}.get(checkpointing, 0.0)
    if method == "freeze":   # only layers that backpropagate are recomputed
        recompute *= min(freeze_layers, arch.num_layers) / arch.num_layers
    return forward + backward + recompute


def _weight_bytes(precision: str, method: str) -> float:
    """Bytes per parameter as gathered / fetched (16-bit, fp32, or NF4 for QLoRA)."""
    if method == "qlora":
        return 0.55
    return 4.0 if precision == "fp32" else 2.0


def _grad_bytes(precision: str, strategy: StrategySpec) -> float:
    """Bytes per gradient element on the wire: DDP under autocast keeps fp32 parameters, so fp32 gradients."""
    if precision == "fp32":
        return 4.0
    if precision == "pure-bf16":
        return 2.0
    return 4.0 if strategy.backend in ("single", "ddp") else 2.0


def communication_seconds(strategy: StrategySpec, hw: HardwareSpec, gpu: GPUInfo, params: int, trainable: int,
                          precision: str, method: str, gas: int) -> float:
    """Collective communication of one optimizer step (see the module docstring for the volumes)."""
    n = hw.world_size
    if n <= 1:
        return 0.0
    g, nodes = hw.gpus_per_node, hw.nodes
    w, gb = _weight_bytes(precision, method), _grad_bytes(precision, strategy)
    intra = gpu.intra_node_bandwidth_gbps * 1e9 * COMM_EFFICIENCY
    inter_per_gpu = gpu.inter_node_bandwidth_gbps * 1e9 * COMM_EFFICIENCY / g
    flat_bw = min(intra, inter_per_gpu) if nodes > 1 else intra
    r = (n - 1) / n
    name = strategy.name
    if name in ("ddp", "zero0", "fsdp-no-shard", "single"):
        return 2 * r * trainable * gb / flat_bw
    if name == "zero1":
        return r * trainable * (gb + w) / flat_bw
    if name == "zero2":
        return r * trainable * (gas * gb + w) / flat_bw
    if name in ("zero3", "fsdp-full"):
        return gas * r * (2 * params * w + trainable * gb) / flat_bw
    if name == "fsdp-grad-op":
        return gas * r * (params * w + trainable * gb) / flat_bw
    if name == "fsdp-hybrid":
        rg = (g - 1) / g
        inside = gas * rg * (2 * params * w + trainable * gb) / intra if g > 1 else 0.0
        between = 0.0
        if nodes > 1:
            rn = (nodes - 1) / nodes
            between = 2 * rn * (trainable / g) * gb / inter_per_gpu
        return inside + between
    raise ValueError(f"no communication model for strategy {name!r}")


def offload_seconds(strategy: StrategySpec, hw: HardwareSpec, gpu: GPUInfo, params: int, trainable: int,
                    precision: str, method: str, gas: int) -> float:
    """PCIe traffic, NVMe traffic and the CPU optimizer step of one optimizer step."""
    if strategy.offload_optimizer == "none" and strategy.offload_param == "none":
        return 0.0
    n, nodes = hw.world_size, hw.nodes
    w, gb = _weight_bytes(precision, method), _grad_bytes(precision, strategy)
    pcie = gpu.pcie_bandwidth_gbps * 1e9
    nvme = NVME_GBPS * 1e9
    per_node_trainable = trainable / nodes
    t = 0.0
    if strategy.backend == "fsdp":
        # CPUOffload: sharded params fetched for forward and backward, gradients down, torch AdamW on CPU.
        t += gas * (2 * params / n * w + trainable / n * gb) / pcie
        t += per_node_trainable / TORCH_CPU_ADAM_PARAMS_PER_S
        return t
    if strategy.offload_optimizer != "none":
        copies = 1 if strategy.zero_stage == 1 else gas       # stage 1 copies at the boundary only
        t += (copies * trainable / n * gb + trainable / n * w) / pcie
        t += per_node_trainable / CPU_ADAM_PARAMS_PER_S
        if strategy.offload_optimizer == "nvme":
            t += per_node_trainable * 12 * 2 / nvme   # fp32 master + 2 moments, read and written
    if strategy.offload_param != "none":
        t += gas * 2 * params / n * w / pcie
        if strategy.offload_param == "nvme":
            t += gas * 2 * params / nodes * w / nvme
    return t


def training_step_time(arch: Architecture, counts: ParameterCounts, trainable: int, hw: HardwareSpec,
                       gpu: GPUInfo, strategy: StrategySpec, *, precision: str, method: str, checkpointing: str,
                       micro_batch: int, seq_len: int, gas: int, freeze_layers: int = 2) -> StepTime:
    """Seconds of one optimizer step of ``gas`` micro-steps of ``micro_batch`` x ``seq_len`` tokens per GPU."""
    tokens_per_gpu = micro_batch * seq_len * gas
    mfu = efficiency(micro_batch * seq_len)
    flops = flops_per_token(arch, counts, seq_len, method, checkpointing, freeze_layers) * tokens_per_gpu
    compute = flops / (peak_flops(gpu, precision) * mfu)
    if method == "qlora":
        compute *= QLORA_SLOWDOWN
    comm = communication_seconds(strategy, hw, gpu, counts.total, trainable, precision, method, gas)
    off = offload_seconds(strategy, hw, gpu, counts.total, trainable, precision, method, gas)
    return StepTime(seconds=compute + comm + off, compute_seconds=compute, communication_seconds=comm,
                    offload_seconds=off, tokens=tokens_per_gpu * hw.world_size, mfu=mfu)


def inference_step_time(arch: Architecture, counts: ParameterCounts, gpu: GPUInfo, *, precision: str,
                        method: str, batch: int, seq_len: int, weight_bytes: int) -> float:
    """Seconds of one prefill of ``batch`` x ``seq_len`` tokens on one model copy: compute or weight reads."""
    tokens = batch * seq_len
    flops = flops_per_token(arch, counts, seq_len, method, "none", task="infer") * tokens
    compute = flops / (peak_flops(gpu, precision) * efficiency(tokens))
    if method == "qlora":
        compute *= QLORA_SLOWDOWN
    memory_bound = weight_bytes / (gpu.hbm_bandwidth_gbps * 1e9)
    return max(compute, memory_bound)


# Ranking among near-equal step times follows DeepSpeed's published guidance (HF transformers DeepSpeed
# docs, "How to choose which ZeRO stage and offloads to use for best performance"): speed-wise
# ZeRO-0 (DDP) > ZeRO-1 > ZeRO-2 > ZeRO-2 + offload > ZeRO-3 > ZeRO-3 + offloads. Lower is preferred.
_BASE_RANK = {"single": 0, "ddp": 1, "zero0": 2, "fsdp-no-shard": 3, "zero1": 4, "zero2": 5, "fsdp-grad-op": 6,
              "zero3": 20, "fsdp-hybrid": 21, "fsdp-full": 22}


def guidance_rank(strategy: StrategySpec) -> int:
    """Position in DeepSpeed's speed ordering (lower = faster by the guidance); ties broken by this order."""
    rank = _BASE_RANK[strategy.name]
    rank += {"none": 0, "cpu": 10, "nvme": 12}[strategy.offload_optimizer]
    rank += {"none": 0, "cpu": 20, "nvme": 24}[strategy.offload_param]
    return rank
