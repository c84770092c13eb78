"""The estimate returned by the API and printed by ``dsadvise estimate --json`` (all sizes in bytes)."""

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, model_serializer

if TYPE_CHECKING:
    from .specs import HardwareSpec, StrategySpec, TrainingSpec


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class ModelInfo(_Out):
    name: str
    family: str
    parameters: int
    trainable_parameters: int
    source: str           # catalog | size | config
    note: str = ""


class HardwareInfo(_Out):
    gpu: str | None
    gpus_per_node: int
    nodes: int
    world_size: int
    vram_bytes: int
    bf16_supported: bool
    cpu_ram_bytes: int | None
    nvme_bytes: int | None


class StrategyInfo(_Out):
    name: str
    backend: str
    zero_stage: int | None
    fsdp_sharding: str | None
    offload_optimizer: str
    offload_param: str
    precision: str
    activation_checkpointing: str
    micro_batch_size: int
    seq_len: int
    attention: str
    optimizer: str
    method: str
    # issue 15: the parallel layout (accelerate ParallelismConfig sizes; dp_shard is what remains of the world)
    tp_size: int = 1
    sp_size: int = 1
    cp_size: int = 1
    dp_replicate_size: int = 1
    fsdp_version: int = 1


class PerGPU(_Out):
    parameters: int
    gradients: int
    optimizer_states: int
    activations: int
    temporaries: int
    buffers: int
    overhead: int
    total: int                 # = the seven terms above - phase_overlap
    breakdown: dict[str, int]  # every byte of total as one named item (sums to total exactly)
    phase_overlap: int = 0     # never alive together: gradients formed as backward frees, step vs backward
    peak_moment: str = ""      # the moment of the step where the total is reached (advisor.memory.peak.Moment)
    moments: dict[str, int] = {}  # bytes above the persistent states at each moment of the step
    allocated: int = 0         # torch.cuda.max_memory_allocated: tensors + the allocator's block rounding
    reserved: int = 0          # torch.cuda.max_memory_reserved: + cached free blocks; total = reserved
                               # + CUDA context (+ NCCL)


class PerNodeCPU(_Out):
    total: int
    available_bytes: int | None
    fits: bool
    breakdown: dict[str, int]


class InferenceLayout(_Out):
    """Per-GPU memory of one inference layout (weights + KV cache + transient)."""

    layout: str                # replica-per-gpu | device-map-auto
    weights: int
    kv_cache: int
    transient: int
    overhead: int
    total: int
    fits: bool


class StepTime(_Out):
    """Time of one optimizer step of the whole job (seconds) and its throughput.

    ``communication_seconds`` and ``offload_seconds`` are the parts NOT hidden behind compute (prefetch and
    bucketing overlap the rest); ``compute_efficiency`` is the fraction of the GPU's dense peak assumed while
    computing; ``mfu`` is model-FLOPs utilization, 6 x parameters x tokens/s / (GPUs x peak) for full
    fine-tuning (4 x parameters for LoRA/QLoRA, whose frozen weights need no weight gradients; 2N + 4N_trained
    for freeze): what the method must compute, without recomputation or attention.
    """

    seconds: float
    compute_seconds: float
    communication_seconds: float
    offload_seconds: float
    tokens_per_second: float           # whole job
    tokens_per_second_per_gpu: float
    compute_efficiency: float
    mfu: float
    tokens_per_step: int = 0           # whole job, all micro-steps of one optimizer step
    peak_tflops: float = 0.0           # dense peak per GPU in the compute dtype
    rates: str = ""                    # where the rates come from: the GPU catalog, the generic card, or a profile
    assumptions: list[str] = []


class InferenceSpeed(_Out):
    """Serving speed of one inference layout: prefill (compute-bound) and decode (memory-bound), tokens/s."""

    layout: str                        # replica-per-gpu | device-map-auto
    copies: int                        # model copies serving at once on the whole job
    batch: int                         # sequences per copy
    prefill_tokens_per_second: float   # whole job
    decode_tokens_per_second: float    # whole job, generated tokens
    decode_seconds_per_token: float    # one decode step of one copy
    bytes_per_decode_step: int         # weights + KV cache read by one copy per generated token


class BatchLengthsInfo(_Out):
    """issue 17 (helper L): how a ``--batch-lengths variable`` estimate was made (advisor/memory/batch_lengths.py):
    per_gpu is the estimate at ``peak_seq_len``, the grid length with the largest total."""

    grid: list[int]            # padded lengths estimated, tokens (a grid, not every length)
    peak_seq_len: int          # the length whose whole estimate is reported (largest per-GPU total)
    allocated_seq_len: int     # the length of the largest max_memory_allocated (per_gpu.allocated)
    step_time_seq_len: int     # the length the step time assumes for every batch (the maximum: an upper bound)


class Estimate(_Out):
    task: str
    model: ModelInfo
    hardware: HardwareInfo
    strategy: StrategyInfo
    per_gpu: PerGPU
    per_node_cpu: PerNodeCPU
    per_node_nvme_bytes: int = 0
    fits: bool
    headroom_bytes: int
    inference: list[InferenceLayout] = []
    notes: list[str] = []
    step_time: StepTime | None = None              # training: one optimizer step of the whole job
    inference_speed: list[InferenceSpeed] = []     # --task infer: per layout
    batch_lengths: BatchLengthsInfo | None = None   # issue 17 (helper L): --batch-lengths variable only

    @model_serializer(mode="wrap")
    def _without_fixed_lengths(self, handler):
        """``batch_lengths`` appears in dumps only for variable-length estimates (the JSON is unchanged otherwise)."""
        data = handler(self)
        if isinstance(data, dict) and data.get("batch_lengths", 0) is None:
            del data["batch_lengths"]
        return data

    def to_json_dict(self) -> dict:
        """The ``--json`` object: plain types, integers in bytes."""
        return self.model_dump(mode="json")


def hardware_info(hw: "HardwareSpec") -> HardwareInfo:
    """Echo of the hardware an estimate was made for."""
    return HardwareInfo(gpu=hw.gpu.name if hw.gpu else None, gpus_per_node=hw.gpus_per_node, nodes=hw.nodes,
                        world_size=hw.world_size, vram_bytes=hw.vram_bytes, bf16_supported=hw.bf16_supported,
                        cpu_ram_bytes=hw.cpu_ram_bytes, nvme_bytes=hw.nvme_bytes)


def strategy_info(training: "TrainingSpec", strategy: "StrategySpec") -> StrategyInfo:
    """The strategy block of the estimate JSON."""
    return StrategyInfo(name=strategy.name, backend=strategy.backend, zero_stage=strategy.zero_stage,
                        fsdp_sharding=strategy.fsdp_sharding, offload_optimizer=strategy.offload_optimizer,
                        offload_param=strategy.offload_param, precision=training.precision,
                        activation_checkpointing=training.activation_checkpointing,
                        micro_batch_size=training.micro_batch_size, seq_len=training.seq_len,
                        attention=training.attention, optimizer=training.optimizer, method=training.method,
                        tp_size=strategy.tp_size, sp_size=strategy.sp_size, cp_size=strategy.cp_size,
                        dp_replicate_size=strategy.dp_replicate_size, fsdp_version=strategy.fsdp_version)
