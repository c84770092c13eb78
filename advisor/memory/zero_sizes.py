"""DeepSpeed ZeRO bucket and group sizes (elements) as the engine reads them from ``zero_optimization``."""

from __future__ import annotations

from dataclasses import dataclass

from ..architecture import Architecture
from ..specs import StrategySpec


@dataclass(frozen=True)
class DeepSpeedSizes:
    """ZeRO knobs in elements, as DeepSpeed reads them from ``zero_optimization``."""

    reduce_bucket_size: int
    allgather_bucket_size: int
    prefetch_bucket_size: int
    max_live_parameters: int
    param_persistence_threshold: int
    sub_group_size: int
    overlap_comm: bool
    # DeepSpeedZeroConfig.max_reuse_distance (stage3_max_reuse_distance) default; the HF "auto" values leave it
    max_reuse_distance: int = 1_000_000_000


def deepspeed_sizes(arch: Architecture, strategy: StrategySpec) -> DeepSpeedSizes:
    """DeepSpeed's bucket sizes: its built-in defaults, or the HF integration's ``"auto"`` values."""
    stage = strategy.zero_stage or 0
    # DeepSpeedZeroConfig: overlap_comm defaults to True for stage 3 and False otherwise.
    overlap = stage == 3
    sub_group = strategy.sub_group_size or 1_000_000_000      # DeepSpeedZeroConfig.sub_group_size default 1e9
    if strategy.bucket_sizes == "default":
        # deepspeed/runtime/zero/config.py defaults.
        return DeepSpeedSizes(500_000_000, 500_000_000, 50_000_000, 1_000_000_000, 100_000, sub_group, overlap)
    h = arch.hidden_size
    # transformers/integrations/deepspeed.py trainer_config_finalize: reduce_bucket_size = h*h,
    # stage3_prefetch_bucket_size = 0.9*h*h (int), stage3_param_persistence_threshold = 10*h.
    return DeepSpeedSizes(h * h, 500_000_000, int(0.9 * h * h), 1_000_000_000, 10 * h, sub_group, overlap)


# issue 17 (Z): the breakdown item of ZeRO-3's all-gather stream pool's cached free blocks (memory/buffers.py,
# zero3_gather.py): reserved, not allocated (memory/allocator.py); here so that the allocator needs no import of
# the modules that use it
ZERO3_GATHER_POOL_CACHED = "ZeRO-3 all-gather stream: cached free blocks (reserved - allocated)"
