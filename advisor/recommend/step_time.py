"""Time of one optimizer step (seconds) and serving speed, calibrated against published runs (issue 13).

Every constant lives in ``advisor/data/step_time.yaml`` with its source; ``benchmarks/throughput.py`` compares
the model with the measured runs of ``benchmarks/throughput_corpus.yaml`` (calibration and held-out splits).

Compute (hardware FLOPs per token, forward)
    ``2·N_matmul`` (decoder linears of the active experts + the output projection) plus the attention core,
    ``4·L·q·s`` for the full score matrix (Chowdhery et al. 2022, PaLM App. B), of which causal SDPA/flash
    kernels compute ``causal_fraction`` (eager computes it all). Training adds the backward: 2x the matmuls for
    full fine-tuning (6N in all), 1x for LoRA/QLoRA (activation gradients only), the trainable layers' share for
    ``freeze``; the attention core's backward is ``attention_backward_factor`` x its forward whatever trains.
    Full checkpointing re-runs the layer forward at ``full_recompute_cost`` of its matmuls (+ the attention core),
    selective re-runs the attention core. The GPU reaches ``achievable_fraction[generation] x h/(h + hidden_half)
    x t/(t + tokens_half)`` of its dense peak (h = hidden size, t = tokens per micro-step per GPU); QLoRA's NF4
    dequantization and LoRA's adapters add ``qlora_dequant_cost`` / ``adapter_cost`` of the compute.
Communication (ring collectives move (n-1)/n of the data per GPU; Ψ = parameters)
    DDP / ZeRO-0 / NO_SHARD: all-reduce of the gradients once per step (2Ψ). ZeRO-1: reduce-scatter +
    all-gather of the updated 16-bit weights per step. ZeRO-2: reduce-scatter every micro-step + all-gather per
    step. ZeRO-3 / FULL_SHARD: all-gather for forward and for backward + reduce-scatter every micro-step (3Ψ;
    Rajbhandari et al. 2020 §7). SHARD_GRAD_OP: one all-gather + reduce-scatter per micro-step. HYBRID_SHARD:
    FULL_SHARD inside a node + all-reduce of the gradients between nodes. Bandwidth: the catalog's intra-node
    rate on one node; across nodes the ring runs at the node's whole network rate (each GPU has its NIC); both
    x ``comm_efficiency``. Prefetch and bucketing hide collectives behind compute on NVLink/Infinity Fabric and
    InfiniBand-class networks (``overlap``): only what exceeds the compute it can hide behind is exposed
    (gathers behind the whole micro-step, gradient reductions behind the backward); over PCIe they stay exposed.
Offload
    DeepSpeed CPU Adam at ``cpu_adam_params_per_s`` per node; ZeRO-3 parameter offload moves the 16-bit weights
    for forward and backward at ``param_offload_bytes_per_s`` per node; FSDP CPUOffload copies each GPU's shard in
    for forward and backward over its host link (prefetched, hidden like a gather on the copy engine) and steps
    torch's AdamW on the CPU (``torch_cpu_adam_params_per_s``, fused); NVMe at ``nvme_bytes_per_s`` per node.
Inference
    Prefill is compute-bound (forward FLOPs at the efficiency above); decode is memory-bound: each generated
    token reads the weights and the KV cache once, at ``hbm_efficiency`` of the HBM bandwidth. ``device_map=
    "auto"`` runs the layers one GPU after another, so a split model is no faster than one GPU holding it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from ..architecture import Architecture
from ..datafiles import load_data
from ..estimate_result import InferenceSpeed, StepTime
from ..param_count import ParameterCounts
from ..specs import GiB, GPUInfo, HardwareSpec, StrategySpec

if TYPE_CHECKING:  # annotations only: the profile model is built when a profile is loaded
    from ..profile import MachineProfile

# When no --gpu is given, times assume this generic PCIe card (memory is the --vram given).
GENERIC_GPU_NOTE = ("no --gpu given: step times assume a generic PCIe GPU (150 TFLOPS bf16/fp16, PCIe Gen4 "
                    "25 GB/s between GPUs and to the host, 100 Gb/s between nodes); give --gpu for its own figures")


@lru_cache(maxsize=1)
def constants() -> dict:
    """The step-time constants (``advisor/data/step_time.yaml``)."""
    return load_data("step_time.yaml")


def generic_gpu(vram_bytes: int) -> GPUInfo:
    """The generic GPU class assumed when only ``--vram`` is known (see :data:`GENERIC_GPU_NOTE`)."""
    return GPUInfo(name="generic", memory_bytes=max(vram_bytes, GiB), bf16=True, fp16_tflops=150.0,
                   bf16_tflops=150.0, fp32_tflops=20.0, hbm_bandwidth_gbps=1000.0, intra_node_link="pcie",
                   intra_node_bandwidth_gbps=25.0, inter_node_bandwidth_gbps=12.5, pcie_bandwidth_gbps=25.0)


def peak_flops(gpu: GPUInfo, precision: str) -> float:
    """Peak dense FLOP/s of ``gpu`` in the compute dtype of ``precision``."""
    if precision == "fp32":
        return gpu.fp32_tflops * 1e12
    if precision in ("bf16", "pure-bf16"):
        return (gpu.bf16_tflops or gpu.fp16_tflops) * 1e12
    return gpu.fp16_tflops * 1e12


@dataclass(frozen=True)
class Rates:
    """The rates one step runs at: the catalog's datasheet figures, or a ``dsadvise calibrate`` profile's."""

    gpu: GPUInfo
    achievable: dict[str, float]        # precision -> fraction of catalog peak on large matmul-bound steps
    intra_bytes_per_s: float            # ring bus bandwidth inside a node (already x comm_efficiency)
    node_bytes_per_s: float             # one node's network, ring bus bandwidth across nodes
    host_bytes_per_s: float             # one GPU's host link (pinned copies)
    hbm_bytes_per_s: float
    cpu_adam_params_per_s: float        # DeepSpeedCPUAdam, per node
    torch_cpu_adam_params_per_s: float  # torch AdamW on the CPU (fused), per node
    intra_overlap: float                # fraction of a collective prefetch/bucketing can hide, inside a node
    inter_overlap: float                # ... across nodes
    source: str                         # "catalog <gpu>", "generic", or the profile's label
    profiled: bool = False              # rates measured by `dsadvise calibrate` (--profile)

    def peak(self, precision: str) -> float:
        return peak_flops(self.gpu, precision)


def _overlap(link: str) -> float:
    return float(constants()["overlap"].get(link, 0.0))


def rates_for(gpu: GPUInfo, profile: MachineProfile | None = None) -> Rates:
    """Rates of ``gpu`` from the catalog, with whatever ``profile`` measured replacing the datasheet figures."""
    c = constants()
    frac = c["achievable_fraction"]
    base = float(frac.get(gpu.generation, frac["unknown"]))
    achievable = {p: base for p in ("fp32", "fp16", "bf16", "pure-bf16")}
    eff = float(c["comm_efficiency"])
    inter_ov = _overlap(gpu.intra_node_link) if gpu.inter_node_bandwidth_gbps >= c["overlap_network_min_gbps"] \
        else 0.0
    r = Rates(gpu=gpu, achievable=achievable, intra_bytes_per_s=gpu.intra_node_bandwidth_gbps * 1e9 * eff,
              node_bytes_per_s=gpu.inter_node_bandwidth_gbps * 1e9 * eff,
              host_bytes_per_s=gpu.pcie_bandwidth_gbps * 1e9, hbm_bytes_per_s=gpu.hbm_bandwidth_gbps * 1e9,
              cpu_adam_params_per_s=float(c["cpu_adam_params_per_s"]),
              torch_cpu_adam_params_per_s=float(c["torch_cpu_adam_params_per_s"]),
              intra_overlap=_overlap(gpu.intra_node_link), inter_overlap=inter_ov,
              source="generic GPU class" if gpu.name == "generic" else f"GPU catalog ({gpu.name})")
    if profile is None:
        return r
    return _with_profile(r, profile)


def profile_device(prof: MachineProfile, like: GPUInfo) -> GPUInfo:
    """The measured device as a GPUInfo when no --gpu names it: its peak is the measured matmul rate."""
    m = prof.matmul_flops
    fp32 = m.get("fp32") or max(m.values(), default=1e9)
    half = m.get("bf16") or m.get("fp16") or fp32
    return like.model_copy(update={"name": prof.device_kind if prof.device_kind == "cpu" else "profiled",
                                   "fp32_tflops": fp32 / 1e12, "fp16_tflops": (m.get("fp16") or half) / 1e12,
                                   "bf16_tflops": half / 1e12, "generation": "unknown"})


def _with_profile(r: Rates, prof: MachineProfile) -> Rates:
    c = constants()
    step = float(c["profile_step_per_matmul"])
    if r.gpu.name == "generic":          # no --gpu: the measured device is the device
        r = Rates(**{**r.__dict__, "gpu": profile_device(prof, r.gpu)})
    achievable = dict(r.achievable)
    for precision, dtype in (("fp32", "fp32"), ("fp16", "fp16"), ("bf16", "bf16"), ("pure-bf16", "bf16")):
        measured = prof.matmul_flops.get(dtype)
        if measured:
            # never above the peak: a profile measured on a faster card than --gpu names cannot beat its datasheet
            achievable[precision] = min(measured * step / peak_flops(r.gpu, precision), 1.0)
    intra = r.intra_bytes_per_s
    if prof.allgather_bus_bytes_per_s or prof.allreduce_bus_bytes_per_s:
        intra = min(x for x in (prof.allgather_bus_bytes_per_s, prof.allreduce_bus_bytes_per_s) if x)
    host = prof.host_to_device_bytes_per_s or r.host_bytes_per_s
    ds = prof.cpu_adam_params_per_s.get("deepspeed")
    torch_fused = prof.cpu_adam_params_per_s.get("torch_fused")
    return Rates(gpu=r.gpu, achievable=achievable, intra_bytes_per_s=intra, node_bytes_per_s=r.node_bytes_per_s,
                 host_bytes_per_s=host, hbm_bytes_per_s=r.hbm_bytes_per_s,
                 cpu_adam_params_per_s=ds or torch_fused or r.cpu_adam_params_per_s,
                 torch_cpu_adam_params_per_s=torch_fused or r.torch_cpu_adam_params_per_s,
                 intra_overlap=r.intra_overlap, inter_overlap=r.inter_overlap, source=prof.label, profiled=True)


def _gbps(bytes_per_s: float) -> str:
    v = bytes_per_s / 1e9
    return f"{v:.0f} GB/s" if v >= 10 else f"{v:.2g} GB/s"


def step_time_assumptions(r: Rates, hw: HardwareSpec, task: str = "train") -> list[str]:
    """What the step-time (or, for ``infer``, serving-speed) figures assume that the user did not give."""
    c = constants()
    gpu = r.gpu
    out = []
    if r.profiled:
        out.append(f"step times use the measured rates of the {r.source}: a whole step at "
                   f"{c['profile_step_per_matmul']} of its matmul rate, collectives at {_gbps(r.intra_bytes_per_s)}, "
                   f"host link {_gbps(r.host_bytes_per_s)}, CPU Adam {r.cpu_adam_params_per_s:.3g} params/s"
                   + ("; the rest from the GPU catalog" if r.gpu.name not in ("cpu", "profiled") else
                      "; no --gpu given, so the measured device is the one estimated"))
    else:
        frac = c["achievable_fraction"].get(gpu.generation, c["achievable_fraction"]["unknown"])
        who = "the generic GPU" if gpu.name == "generic" else f"{gpu.name} ({gpu.generation})"
        what = "prefill" if task == "infer" else "step times"
        out.append(f"{what}: {who} computes at up to {frac:.0%} of its dense peak "
                   f"on wide models and long micro-batches (advisor/data/step_time.yaml, checked against "
                   f"published runs by benchmarks/throughput.py); give --profile for rates measured on your machine")
    if task == "infer":
        out.append(f"decode reads the weights and the KV cache of the full --seq-len context once per generated "
                   f"token at {c['hbm_efficiency']:.0%} of the {r.hbm_bytes_per_s / 1e9:,.0f} GB/s memory bandwidth")
        return out
    if hw.world_size > 1:
        link = gpu.intra_node_link
        hidden = "hidden behind compute by prefetch and bucketing" if r.intra_overlap > 0 else \
            "not hidden behind compute (no peer-to-peer: NCCL stages through host memory)"
        out.append(f"collectives inside a node run at {_gbps(r.intra_bytes_per_s)} over {link}, {hidden}")
    if hw.nodes > 1:
        net = "overlapped" if r.inter_overlap > 0 else "exposed (Ethernet-class network)"
        out.append(f"between nodes the ring runs at the node's network rate, {_gbps(r.node_bytes_per_s)} "
                   f"(catalog figure for the usual {gpu.name} system), {net}")
    return out


def efficiency(rates: Rates, precision: str, hidden: int, tokens_per_microstep: int) -> float:
    """Fraction of dense peak reached: generation's achievable fraction x width factor x tokens factor."""
    c = constants()
    width = hidden / (hidden + c["hidden_half"])
    fill = tokens_per_microstep / (tokens_per_microstep + c["tokens_half"])
    return rates.achievable[precision] * width * fill


def matmul_parameters(arch: Architecture, counts: ParameterCounts) -> int:
    """Parameters that take part in a matmul per token: active layer weights + the output projection (every
    expert's where the family's MoE runs all experts on every token: Llama-4's Llama4TextMoe, issue 14)."""
    from advisor.families import family, has_family

    every = has_family(arch.family) and family(arch.family).dense_expert_compute
    layers = (counts.total if every else counts.active_per_token) - counts.embedding - counts.lm_head - counts.final
    return max(layers, 0) + arch.vocab_size * arch.hidden_size


def attention_flops(arch: Architecture, seq_len: int, attention: str) -> float:
    """Forward FLOPs per token of the attention core (scores + weighted sum), causal kernels skipping half."""
    c = constants()
    span = seq_len
    if arch.sliding_window and attention != "eager":
        span = min(seq_len, arch.sliding_window)
    full = 4.0 * arch.num_layers * arch.q_width * span
    return full if attention == "eager" else full * c["causal_fraction"]


def flop_parts(arch: Architecture, counts: ParameterCounts, seq_len: int, method: str, checkpointing: str,
               freeze_layers: int = 2, task: str = "train", attention: str = "sdpa") -> tuple[float, float]:
    """(matmul, attention-core) hardware FLOPs per token of one training step (or one inference forward),
    recomputation included (recomputed matmuls at ``full_recompute_cost``)."""
    c = constants()
    head = 2.0 * arch.vocab_size * arch.hidden_size
    layer_mm = 2.0 * matmul_parameters(arch, counts) - head
    attn = attention_flops(arch, seq_len, attention)
    if task == "infer":
        return layer_mm + head, attn
    attn_bwd = c["attention_backward_factor"] * attn
    share = 1.0
    if method == "full":
        mm, at = 3.0 * (layer_mm + head), attn + attn_bwd
    elif method == "freeze":
        share = min(freeze_layers, arch.num_layers) / arch.num_layers
        mm, at = layer_mm + 2.0 * head + share * 2.0 * layer_mm, attn + share * attn_bwd
    else:  # lora / qlora: activation gradients only (the adapters' own cost: adapter_cost)
        mm, at = 2.0 * (layer_mm + head), attn + attn_bwd
    if checkpointing == "full":
        mm, at = mm + share * c["full_recompute_cost"] * layer_mm, at + share * attn
    elif checkpointing == "selective":
        at += share * attn
    return mm, at


def flops_per_token(arch: Architecture, counts: ParameterCounts, seq_len: int, method: str, checkpointing: str,
                    freeze_layers: int = 2, task: str = "train", attention: str = "sdpa") -> float:
    """Hardware FLOPs per token of one training step (or one inference forward), recomputation included."""
    return sum(flop_parts(arch, counts, seq_len, method, checkpointing, freeze_layers, task, attention))


def compute_seconds_per_token(arch: Architecture, counts: ParameterCounts, rates: "Rates", precision: str,
                              tokens_per_microstep: int, seq_len: int, method: str, checkpointing: str,
                              freeze_layers: int = 2, task: str = "train", attention: str = "sdpa",
                              width: int | None = None) -> float:
    """Seconds per token on one GPU: matmuls at :func:`efficiency`, the attention core at ``attention_efficiency``
    of that (eager attention also at ``eager_attention_efficiency``), plus QLoRA/LoRA costs. ``width``: the
    hidden size the width factor sees (tensor parallelism: hidden/tp, see :func:`_layout_step_time`)."""
    c = constants()
    mm, at = flop_parts(arch, counts, seq_len, method, checkpointing, freeze_layers, task, attention)
    rate = rates.peak(precision) * efficiency(rates, precision, width or arch.hidden_size, tokens_per_microstep)
    attn_rate = rate * c["attention_efficiency"] * (c["eager_attention_efficiency"] if attention == "eager" else 1)
    t = mm / rate + at / attn_rate
    if method in ("lora", "qlora") and task == "train":
        t *= 1 + c["adapter_cost"]
    if method == "qlora":
        t *= 1 + c["qlora_dequant_cost"]
    return t


def model_flops_per_token(arch: Architecture, counts: ParameterCounts, method: str = "full",
                          freeze_layers: int = 2) -> float:
    """Model FLOPs per trained token, the numerator of MFU: 6·N for full fine-tuning (Chowdhery et al. 2022,
    App. B); the same count of what the method must compute otherwise: 4·N for LoRA/QLoRA (frozen weights need
    activation gradients only), 2·N + 4·N_trained for ``freeze`` (so MFU never exceeds 1)."""
    n = counts.active_per_token
    if method in ("lora", "qlora"):
        return 4.0 * n
    if method == "freeze":
        share = min(freeze_layers, arch.num_layers) / arch.num_layers
        return 2.0 * n + 4.0 * share * (n - counts.embedding - counts.lm_head - counts.final)
    return 6.0 * n


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


@dataclass(frozen=True)
class _Comm:
    """Collective seconds of one optimizer step: hidable behind the micro-steps' compute / backward, or not."""

    behind_compute: float = 0.0      # gathers every micro-step: hidden behind the whole micro-step
    behind_backward: float = 0.0     # gradient reductions: hidden behind the backward
    exposed: float = 0.0             # after the last backward (ZeRO-1/2 weight all-gather)
    overlap: float = 0.0


def fsdp_passes(strategy: StrategySpec, gas: int, sync_each_batch: bool = False) -> tuple[int, int]:
    """(whole-model weight all-gathers, gradient reductions) an FSDP run makes in one optimizer step of ``gas``
    micro-batches (counts of passes over every unit; measured on the real engines by benchmarks/fsdp_passes.py).

    accelerate's ``accumulate`` runs every micro-batch but the last under ``no_sync`` (accelerator.py; FSDP1
    ``_post_backward_hook`` returns before the reduce-scatter, FSDP2 ``post_backward`` skips it when
    ``not reduce_grads``): one reduction per step, or one per micro-batch with ``sync_each_batch``
    (``allow_gradient_sync``, no ``no_sync``). FULL_SHARD and HYBRID_SHARD gather for the forward and again for
    the backward of every micro-batch (they free after the forward, and after the backward even under no_sync:
    FSDP1 _runtime_utils ``_should_free_in_backward`` is true for RESHARD_AFTER_FORWARD strategies). FSDP1
    SHARD_GRAD_OP keeps the unsharded weights through a no_sync backward (``_should_free_in_backward`` false),
    so one gather serves every micro-batch up to the synchronizing one; FSDP2 reshards after every backward
    (``FSDPParamGroup.post_backward``, ``reshard_after_backward`` true by default): one gather per micro-batch."""
    syncs = gas if sync_each_batch else 1
    if strategy.fsdp_sharding == "NO_SHARD":
        return 0, syncs
    if strategy.fsdp_sharding == "SHARD_GRAD_OP":
        if strategy.fsdp_version == 2 or sync_each_batch:
            return gas, syncs
        return 1, syncs
    return 2 * gas, syncs


def _communication(strategy: StrategySpec, hw: HardwareSpec, r: Rates, params: int, trainable: int,
                   precision: str, method: str, gas: int, sync_each_batch: bool = False) -> _Comm:
    n = hw.world_size
    if n <= 1:
        return _Comm()
    g, nodes = hw.gpus_per_node, hw.nodes
    w, gb = _weight_bytes(precision, method), _grad_bytes(precision, strategy)
    bw = min(r.intra_bytes_per_s, r.node_bytes_per_s) if nodes > 1 else r.intra_bytes_per_s
    ov = min(r.intra_overlap, r.inter_overlap) if nodes > 1 else r.intra_overlap
    q = (n - 1) / n
    name = strategy.name
    # DeepSpeed ZeRO-2/3 reduce in every backward, ZeRO-0/1 only at the accumulation boundary (engine.py
    # ``allreduce_gradients``: "ZeRO stage >= 2 communicates during non gradient accumulation boundaries as
    # well"). FSDP: see :func:`fsdp_passes`.
    gathers, syncs = fsdp_passes(strategy, gas, sync_each_batch) if strategy.backend == "fsdp" else (0, 1)
    if name in ("ddp", "zero0", "fsdp-no-shard", "single"):
        return _Comm(behind_backward=syncs * 2 * q * trainable * gb / bw, overlap=ov)
    if name == "zero1":
        return _Comm(behind_backward=q * trainable * gb / bw, exposed=q * trainable * w / bw, overlap=ov)
    if name == "zero2":
        return _Comm(behind_backward=gas * q * trainable * gb / bw, exposed=q * trainable * w / bw, overlap=ov)
    if name == "zero3":
        return _Comm(behind_compute=gas * q * (2 * params * w + trainable * gb) / bw, overlap=ov)
    if name in ("fsdp-full", "fsdp-grad-op"):
        return _Comm(behind_compute=q * (gathers * params * w + syncs * trainable * gb) / bw, overlap=ov)
    if name == "fsdp-hybrid":
        inside = (g - 1) / g * (gathers * params * w + syncs * trainable * gb) / r.intra_bytes_per_s if g > 1 \
            else 0.0
        between = syncs * 2 * (nodes - 1) / nodes * trainable * gb / r.node_bytes_per_s if nodes > 1 else 0.0
        # the within-node gathers overlap by the intra-node link; the between-node all-reduce by the network
        return _Comm(behind_compute=inside, behind_backward=between,
                     overlap=min(r.intra_overlap, r.inter_overlap) if nodes > 1 else r.intra_overlap)
    raise ValueError(f"no communication model for strategy {name!r}")


@dataclass(frozen=True)
class _Offload:
    behind_compute: float = 0.0      # prefetched parameter copies (copy engine)
    exposed: float = 0.0             # CPU optimizer step, NVMe, ZeRO-3 parameter fetches


def _offload(strategy: StrategySpec, hw: HardwareSpec, r: Rates, params: int, trainable: int, precision: str,
             method: str, gas: int, sync_each_batch: bool = False) -> _Offload:
    if strategy.offload_optimizer == "none" and strategy.offload_param == "none":
        return _Offload()
    c = constants()
    n, nodes = hw.world_size, hw.nodes
    w, gb = _weight_bytes(precision, method), _grad_bytes(precision, strategy)
    host = r.host_bytes_per_s
    per_node_trainable = trainable / nodes
    if strategy.backend == "fsdp":
        gathers, syncs = fsdp_passes(strategy, gas, sync_each_batch)
        if strategy.fsdp_sharding == "NO_SHARD":
            gathers = 2 * gas
        # CPUOffload: each GPU's shard in for every gather (NO_SHARD: for forward and backward), gradients out
        # once they are reduced (under no_sync "the gradients will not be offloaded to CPU":
        # fully_sharded_data_parallel.py ``no_sync``); torch AdamW on the CPU.
        copies = (gathers * params / n * w + syncs * trainable / n * gb) / host
        return _Offload(behind_compute=copies, exposed=per_node_trainable / r.torch_cpu_adam_params_per_s)
    hidden = exposed = 0.0
    if strategy.offload_optimizer != "none":
        grads_out = (1 if strategy.zero_stage == 1 else gas) * trainable / n * gb / host
        hidden += grads_out
        exposed += trainable / n * w / host + per_node_trainable / r.cpu_adam_params_per_s
        if strategy.offload_optimizer == "nvme":
            exposed += per_node_trainable * 12 * 2 / c["nvme_bytes_per_s"]   # fp32 master + moments, read + write
    if strategy.offload_param != "none":
        exposed += gas * 2 * params / nodes * w / c["param_offload_bytes_per_s"]
        if strategy.offload_param == "nvme":
            exposed += gas * 2 * params / nodes * w / c["nvme_bytes_per_s"]
    return _Offload(behind_compute=hidden, exposed=exposed)


def optimizer_seconds(strategy: StrategySpec, hw: HardwareSpec, r: Rates, trainable: int) -> float:
    """The optimizer step on the GPU (memory-bound): ``optimizer_bytes_per_param`` of HBM traffic per trainable
    parameter it updates (its shard under ZeRO-1/2/3 and FSDP sharding; none when offloaded to the CPU)."""
    if strategy.offload_optimizer != "none":
        return 0.0
    c = constants()
    shard = trainable
    if strategy.backend == "deepspeed" and (strategy.zero_stage or 0) >= 1:
        shard = trainable / hw.world_size
    elif strategy.backend == "fsdp" and strategy.fsdp_sharding != "NO_SHARD":
        shard = trainable / (hw.gpus_per_node if strategy.fsdp_sharding == "HYBRID_SHARD" else hw.world_size)
    return shard * c["optimizer_bytes_per_param"] / (r.hbm_bytes_per_s * c["hbm_efficiency"])


def _hide(seconds: float, budget: float, overlap: float) -> tuple[float, float]:
    """(exposed, budget left): ``overlap`` of ``seconds`` can hide behind ``budget`` seconds of compute."""
    hidden = min(seconds * overlap, budget)
    return seconds - hidden, budget - hidden


def training_step_time(arch: Architecture, counts: ParameterCounts, trainable: int, hw: HardwareSpec,
                       gpu: GPUInfo, strategy: StrategySpec, *, precision: str, method: str, checkpointing: str,
                       micro_batch: int, seq_len: int, gas: int, freeze_layers: int = 2, attention: str = "sdpa",
                       profile: MachineProfile | None = None, rates: Rates | None = None,
                       sync_each_batch: bool = False) -> StepTime:
    """Seconds of one optimizer step of ``gas`` micro-steps of ``micro_batch`` x ``seq_len`` tokens per GPU
    (``sync_each_batch``: accelerate's GradientAccumulationPlugin setting, see :func:`_communication`)."""
    c = constants()
    r = rates or rates_for(gpu, profile)
    if strategy.tp_size * strategy.sp_size * strategy.cp_size * strategy.dp_replicate_size > 1:
        return _layout_step_time(arch, counts, trainable, hw, strategy, r, precision=precision, method=method,
                                 checkpointing=checkpointing, micro_batch=micro_batch, seq_len=seq_len, gas=gas,
                                 freeze_layers=freeze_layers, attention=attention,
                                 sync_each_batch=sync_each_batch)
    tokens_micro = micro_batch * seq_len
    eff = efficiency(r, precision, arch.hidden_size, tokens_micro)
    peak = r.peak(precision)
    micro_compute = tokens_micro * compute_seconds_per_token(arch, counts, r, precision, tokens_micro, seq_len, method,
                                                             checkpointing, freeze_layers, attention=attention)
    compute = gas * micro_compute + optimizer_seconds(strategy, hw, r, trainable)
    backward_share = 2.0 / 3.0 if method == "full" else 0.5
    comm = _communication(strategy, hw, r, counts.total, trainable, precision, method, gas, sync_each_batch)
    off = _offload(strategy, hw, r, counts.total, trainable, precision, method, gas, sync_each_batch)
    budget = compute
    comm_a, budget = _hide(comm.behind_compute, budget, comm.overlap)
    back_budget = min(budget, compute * backward_share)
    comm_b, used = _hide(comm.behind_backward, back_budget, comm.overlap)
    budget -= back_budget - used
    off_a, budget = _hide(off.behind_compute, budget, 1.0)        # host copies run on the copy engines
    comm_s = comm_a + comm_b + comm.exposed
    off_s = off_a + off.exposed
    seconds = compute + comm_s + off_s
    tokens = tokens_micro * gas * hw.world_size
    tps = tokens / seconds
    mfu = model_flops_per_token(arch, counts, method, freeze_layers) * tps / (hw.world_size * peak)
    return StepTime(seconds=seconds, compute_seconds=compute, communication_seconds=comm_s, offload_seconds=off_s,
                    tokens_per_second=tps, tokens_per_second_per_gpu=tps / hw.world_size, compute_efficiency=eff,
                    mfu=mfu, tokens_per_step=tokens, peak_tflops=peak / 1e12, rates=r.source)


# ---------------------------------------------------------------- tensor / sequence / context parallel layouts

def layout_communication(arch: Architecture, hw: HardwareSpec, strategy: StrategySpec, r: Rates, *,
                         micro_batch: int, seq_len: int, checkpointing: str, act_bytes: int) -> dict[str, float]:
    """Seconds per micro-step of the layout's own collectives, all on the critical path (exposed):

    * TP (Megatron-style column/row split, Shoeybi et al. 2019 §3): per layer two all-reduces of the layer
      output in the forward (o_proj, down_proj) and two of the input gradients in the backward (q/k/v and
      gate/up), one more forward's worth when full checkpointing re-runs it; the lm_head's logits all-gather
      (``colwise_gather_output``) and its input-gradient all-reduce. Not overlapped: accelerate ignores
      ``enable_async_tp`` (``TorchTensorParallelConfig``) and DeepSpeed AutoTP's ``tp_overlap_comm`` is off by
      default (``runtime/tensor_parallel/config.py``).
    * SP (Ulysses, Jacobs et al. 2023 §3): per layer all-to-alls of q, k, v in and of the attention output back,
      the same in the backward; an all-to-all moves (sp-1)/sp of its data per GPU.
    * CP (torch ring attention, allgather rotation): per layer an all-gather of K and V in the forward, again in
      the backward plus a reduce-scatter of their gradients.
    Ring all-reduce moves 2(n-1)/n of the data per GPU, all-gather/reduce-scatter (n-1)/n. A group inside a node
    runs at the intra-node rate; one that spans nodes shares each node's network among its GPUs."""
    tp, sp, cp = strategy.tp_size, strategy.sp_size, strategy.cp_size
    b, s_local = micro_batch, seq_len // (sp * cp)
    L, h = arch.num_layers, arch.hidden_size
    fwd_passes = 2 if checkpointing == "full" else 1
    out: dict[str, float] = {}

    def rate(group: int, inner: int) -> float:
        """Bus rate of a group of ``group`` GPUs whose members sit ``inner`` apart in the rank order."""
        if group * inner <= hw.gpus_per_node:
            return r.intra_bytes_per_s
        return min(r.intra_bytes_per_s, r.node_bytes_per_s / hw.gpus_per_node)

    if tp > 1:
        layer_out = b * s_local * h * act_bytes
        ar = 2 * (tp - 1) / tp
        per_layer = (2 * fwd_passes + 2) * ar * layer_out
        head = (tp - 1) / tp * b * s_local * arch.vocab_size * act_bytes + ar * layer_out
        out["tensor parallel all-reduces"] = (L * per_layer + head) / rate(tp, 1)
    if sp > 1:
        heads = arch.num_attention_heads // tp
        kv = max(max(arch.num_key_value_heads // tp, 1), sp)      # kv heads replicated up to sp
        width = (2 * heads + 2 * kv) * arch.head_dim            # q, k, v in; attention output back
        per_layer = (fwd_passes + 1) * (sp - 1) / sp * b * s_local * width * act_bytes
        out["sequence parallel all-to-alls"] = L * per_layer / rate(sp, tp)
    if cp > 1:
        kv_width = max(arch.num_key_value_heads // tp, 1) * arch.head_dim
        kv_full = 2 * b * seq_len * kv_width * act_bytes
        per_layer = (fwd_passes + 2) * (cp - 1) / cp * kv_full
        out["context parallel K/V all-gathers"] = L * per_layer / rate(cp, tp)
    return out


def _layout_step_time(arch: Architecture, counts: ParameterCounts, trainable: int, hw: HardwareSpec,
                      strategy: StrategySpec, r: Rates, *, precision: str, method: str, checkpointing: str,
                      micro_batch: int, seq_len: int, gas: int, freeze_layers: int, attention: str,
                      sync_each_batch: bool = False) -> StepTime:
    """Step time of a TP/SP/CP layout: one rank computes the narrowed model (heads, kv heads, MLP width and the
    lm_head's vocabulary / tp) on its ``seq_len / (sp x cp)`` tokens, attending over the whole sequence; its
    ZeRO/FSDP collectives run over the ranks sharing its parameters (:mod:`advisor.memory.parallel`); the
    layout's collectives (:func:`layout_communication`) are exposed. The width factor of :func:`efficiency`
    sees hidden/tp: the per-token elementwise work (norms, residuals) stays whole while the matmuls divide."""
    from ..memory.parallel import narrow_architecture, rank_view_hardware
    from ..layout import data_parallel_size

    tp, sp, cp = strategy.tp_size, strategy.sp_size, strategy.cp_size
    arch_n = narrow_architecture(arch, tp)
    arch_c = arch_n.model_copy(update={"vocab_size": -(-arch.vocab_size // tp)}) if tp > 1 else arch_n
    from ..param_count import count_parameters

    counts_c = count_parameters(arch_c)
    share = counts_c.total / counts.total
    trainable_n = int(trainable * share)
    view_hw, view_strategy = rank_view_hardware(hw, strategy)
    tokens_micro = micro_batch * (seq_len // (sp * cp))
    act_bytes = 4 if precision == "fp32" else 2
    eff = efficiency(r, precision, arch.hidden_size // tp, tokens_micro)
    peak = r.peak(precision)
    micro_compute = tokens_micro * compute_seconds_per_token(arch_c, counts_c, r, precision, tokens_micro, seq_len,
                                                             method, checkpointing, freeze_layers,
                                                             attention=attention, width=arch.hidden_size // tp)
    compute = gas * micro_compute + optimizer_seconds(view_strategy, view_hw, r, trainable_n)
    backward_share = 2.0 / 3.0 if method == "full" else 0.5
    comm = _communication(view_strategy, view_hw, r, counts_c.total, trainable_n, precision, method, gas,
                          sync_each_batch)
    off = _offload(view_strategy, view_hw, r, counts_c.total, trainable_n, precision, method, gas,
                   sync_each_batch)
    # the view's node holds gpus_per_node / tp ranks; the CPU optimizer and parameter fetches of a real node serve
    # all its ranks (every tp shard): the per-node exposed offload x tp (its per-GPU copy term too: conservative)
    off = _Offload(behind_compute=off.behind_compute, exposed=off.exposed * hw.gpus_per_node / view_hw.gpus_per_node)
    budget = compute
    comm_a, budget = _hide(comm.behind_compute, budget, comm.overlap)
    back_budget = min(budget, compute * backward_share)
    comm_b, used = _hide(comm.behind_backward, back_budget, comm.overlap)
    budget -= back_budget - used
    off_a, budget = _hide(off.behind_compute, budget, 1.0)
    layout = gas * sum(layout_communication(arch, hw, strategy, r, micro_batch=micro_batch, seq_len=seq_len,
                                            checkpointing=checkpointing, act_bytes=act_bytes).values())
    comm_s = comm_a + comm_b + comm.exposed + layout
    off_s = off_a + off.exposed
    seconds = compute + comm_s + off_s
    tokens = micro_batch * seq_len * gas * data_parallel_size(hw, strategy)
    tps = tokens / seconds
    mfu = model_flops_per_token(arch, counts, method, freeze_layers) * tps / (hw.world_size * peak)
    return StepTime(seconds=seconds, compute_seconds=compute, communication_seconds=comm_s, offload_seconds=off_s,
                    tokens_per_second=tps, tokens_per_second_per_gpu=tps / hw.world_size, compute_efficiency=eff,
                    mfu=mfu, tokens_per_step=tokens, peak_tflops=peak / 1e12, rates=r.source)


def kv_bytes_per_token(arch: Architecture, dtype_bytes: int = 2) -> int:
    """Bytes of K and V cached per token of context, all layers."""
    return 2 * arch.num_layers * arch.kv_width * dtype_bytes


def inference_speed(arch: Architecture, counts: ParameterCounts, hw: HardwareSpec, gpu: GPUInfo, layout: str, *,
                    precision: str, method: str, batch: int, seq_len: int, weight_bytes: int,
                    attention: str = "sdpa", profile: MachineProfile | None = None, tp: int = 1) -> InferenceSpeed:
    """Prefill and decode tokens/s of ``layout`` (``replica-per-gpu`` or ``device-map-auto``) on the whole job.

    A replica per GPU serves ``world`` copies at once. ``device_map="auto"`` holds one copy per node whose layers
    run one GPU after another: each GPU computes and reads its share in turn, so one copy takes as long as one GPU
    holding the whole model would (Hugging Face accelerate big-model inference: naive pipeline, one GPU busy).
    """
    c = constants()
    r = rates_for(gpu, profile)
    tokens = batch * seq_len
    peak = r.peak(precision)
    prefill = tokens * compute_seconds_per_token(arch, counts, r, precision, tokens, seq_len, method, "none",
                                                 task="infer", attention=attention)
    dtype_bytes = 4 if precision == "fp32" else 2
    step_bytes = weight_bytes + batch * seq_len * kv_bytes_per_token(arch, dtype_bytes)
    decode_mem = step_bytes / (r.hbm_bytes_per_s * c["hbm_efficiency"])
    decode_flops = flops_per_token(arch, counts, seq_len, method, "none", task="infer", attention=attention) * batch
    decode = max(decode_mem, decode_flops / (peak * efficiency(r, precision, arch.hidden_size, batch)))
    copies = hw.world_size if layout == "replica-per-gpu" else hw.nodes
    if layout == "tensor-parallel":
        # issue 15: each of the tp GPUs of a copy computes and reads 1/tp of the weights and of the KV cache
        # (embeddings aside) at once; the two all-reduces per layer of the activations are added at the
        # intra-node rate (their latency, which dominates a decode step's small messages, is not modelled)
        ar = 2 * (tp - 1) / tp * 2 * arch.num_layers * arch.hidden_size * (4 if precision == "fp32" else 2)
        prefill = prefill / tp + tokens * ar / r.intra_bytes_per_s
        decode = decode / tp + batch * ar / r.intra_bytes_per_s
        copies = hw.world_size // tp
    return InferenceSpeed(layout=layout, copies=copies, batch=batch,
                          prefill_tokens_per_second=copies * tokens / prefill,
                          decode_tokens_per_second=copies * batch / decode, decode_seconds_per_token=decode,
                          bytes_per_decode_step=int(step_bytes))


def inference_step_time(arch: Architecture, counts: ParameterCounts, gpu: GPUInfo, *, precision: str,
                        method: str, batch: int, seq_len: int, weight_bytes: int, attention: str = "sdpa",
                        profile: MachineProfile | None = None) -> float:
    """Seconds of one prefill of ``batch`` x ``seq_len`` tokens on one model copy (compute-bound)."""
    one = HardwareSpec(gpus_per_node=1, vram_bytes=gpu.memory_bytes, gpu=gpu)
    s = inference_speed(arch, counts, one, gpu, "replica-per-gpu", precision=precision, method=method, batch=batch,
                        seq_len=seq_len, weight_bytes=weight_bytes, attention=attention, profile=profile)
    return batch * seq_len / s.prefill_tokens_per_second


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
