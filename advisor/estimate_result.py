"""The estimate returned by the API and printed by ``dsadvise estimate --json`` (all sizes in bytes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

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


class PerGPU(_Out):
    parameters: int
    gradients: int
    optimizer_states: int
    activations: int
    temporaries: int
    buffers: int
    overhead: int
    total: int                 # = the seven terms above - phase_overlap
    breakdown: dict[str, int]
    phase_overlap: int = 0     # gradients and activations never alive together (formed as backward frees)
    peak_moment: str = ""      # the moment of the step where the total is reached
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

    def to_json_dict(self) -> dict:
        """The ``--json`` object: plain types, integers in bytes."""
        return self.model_dump(mode="json")


def hardware_info(hw: HardwareSpec) -> HardwareInfo:
    """Echo of the hardware an estimate was made for."""
    return HardwareInfo(gpu=hw.gpu.name if hw.gpu else None, gpus_per_node=hw.gpus_per_node, nodes=hw.nodes,
                        world_size=hw.world_size, vram_bytes=hw.vram_bytes, bf16_supported=hw.bf16_supported,
                        cpu_ram_bytes=hw.cpu_ram_bytes, nvme_bytes=hw.nvme_bytes)


def strategy_info(training: TrainingSpec, strategy: StrategySpec) -> StrategyInfo:
    """The strategy block of the estimate JSON."""
    return StrategyInfo(name=strategy.name, backend=strategy.backend, zero_stage=strategy.zero_stage,
                        fsdp_sharding=strategy.fsdp_sharding, offload_optimizer=strategy.offload_optimizer,
                        offload_param=strategy.offload_param, precision=training.precision,
                        activation_checkpointing=training.activation_checkpointing,
                        micro_batch_size=training.micro_batch_size, seq_len=training.seq_len,
                        attention=training.attention, optimizer=training.optimizer, method=training.method)
