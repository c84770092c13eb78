"""Framework overhead defaults (CUDA context, NCCL, allocator, per-process CPU) from ``data/overhead.yaml``."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ..datafiles import load_data


@dataclass(frozen=True)
class Overhead:
    cuda_context_bytes: int
    nccl_bytes: int
    allocator_fragmentation_fraction: float
    cpu_per_process_bytes: int


@lru_cache(maxsize=1)
def overhead_defaults() -> Overhead:
    """The documented per-GPU and per-process overhead defaults, in bytes (fraction for fragmentation)."""
    d = load_data("overhead.yaml")
    return Overhead(cuda_context_bytes=int(d["gpu"]["cuda_context_bytes"]), nccl_bytes=int(d["gpu"]["nccl_bytes"]),
                    allocator_fragmentation_fraction=float(d["gpu"]["allocator_fragmentation_fraction"]),
                    cpu_per_process_bytes=int(d["cpu"]["per_process_bytes"]))


@dataclass(frozen=True)
class NvlsBuffers:
    gpus: frozenset[str]
    min_gpus_per_node: int
    channels: int
    bytes_per_channel_per_rank: int


@lru_cache(maxsize=1)
def _nvls() -> NvlsBuffers:
    d = load_data("overhead.yaml")["gpu"]["nccl_nvls"]
    return NvlsBuffers(gpus=frozenset(d["gpus"]), min_gpus_per_node=int(d["min_gpus_per_node"]),
                       channels=int(d["channels"]), bytes_per_channel_per_rank=int(d["bytes_per_channel_per_rank"]))


def nvls_channels() -> int:
    """NVLS channels NCCL sets up per communicator on sm90 (overhead.yaml ``nccl_nvls.channels``)."""
    return _nvls().channels


def nvls_note(nvls: int, comms: int, hw, torch_version: str | None) -> str:
    """The estimate's note on ``nvls`` bytes per GPU of NVLink-SHARP buffers over ``comms`` communicators: how they
    add up and which NCCL they assume (the stated torch's wheels, or the floor over NCCL versions)."""
    channels = nvls_channels()
    per_channel = nvls // comms // hw.gpus_per_node // channels
    text = (f"NCCL NVLink-SHARP buffers: {nvls / 2**20:.0f} MiB per GPU, {comms} communicator"
            f"{'s' if comms > 1 else ''} x {channels} channels x {per_channel / 2**20:g} MiB x "
            f"{hw.gpus_per_node} local ranks ")
    if torch_version is not None:   # issue 17 (helper T): the NCCL of the stated torch
        from ..stacks import nccl_version

        text += (f"(NCCL {nccl_version(torch_version)}, the NCCL of the torch {torch_version} wheels, on an "
                 f"NVSwitch {hw.gpu.name} node: advisor/data/stacks.yaml)")
    else:
        text += (f"(NCCL >= 2.22 on an NVSwitch {hw.gpu.name} node; 2.18-2.20, the torch 2.1-2.4 wheels, map 16+ "
                 "channels x 2 x 6 MiB, 1.5 GiB per communicator at 8 GPUs: --torch-version)")
    return text + "; NCCL_NVLS_ENABLE=0 removes them"


def nccl_communicators(strategy) -> int:
    """NCCL communicators a rank of a data-parallel run talks over.

    ZeRO-3: two, ``zero.Init`` gathers over torch's world group and DeepSpeed's optimizer reduces over its clone
    (``groups._clone_world_group``; benchmarks/zero3_process_groups.py on the real engine). DDP and FSDP talk over
    the world group (their ``process_group`` default); ZeRO-1/2 are counted as one, not checked on the engine.
    """
    return 2 if strategy.backend == "deepspeed" and strategy.zero_stage == 3 else 1


def nccl_nvls_bytes_per_communicator(hw, torch_version: str | None = None) -> int:
    """NCCL's NVLink-SHARP buffers of one communicator on one GPU (bytes), 0 where NCCL does not set them up.

    Only on the NVSwitch GPUs of ``overhead.yaml`` (``nccl_nvls.gpus``), more GPUs per node than a board without
    NVSwitch has, one node. Channels x per-channel bytes x local ranks: the per-channel bytes of the NCCL that
    ``torch_version``'s wheels ship (advisor/data/stacks.yaml, issue 17), or without a version the smallest over
    NCCL versions (overhead.yaml).
    """
    n = _nvls()
    if hw.gpu is None or hw.gpu.name not in n.gpus or hw.nodes != 1 or hw.gpus_per_node < n.min_gpus_per_node:
        return 0
    per_channel = n.bytes_per_channel_per_rank
    if torch_version is not None:
        from ..stacks import nvls_bytes_per_channel_per_rank

        per_channel = nvls_bytes_per_channel_per_rank(torch_version)
    return n.channels * per_channel * hw.gpus_per_node
