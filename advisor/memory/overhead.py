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
