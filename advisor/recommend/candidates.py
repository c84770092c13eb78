"""The search space: parallel layouts (strategy + offload), configurations and micro-batch sizes.

A *layout* is a :class:`StrategySpec` (backend, ZeRO stage / FSDP sharding, offload targets). A *group*
adds precision, method and activation checkpointing; the search then finds each group's largest
micro-batch that fits. Impossible combinations (``StrategySpec`` validation) are never generated; the
rules prune the rest (one GPU: no DDP; NVMe only with a path; ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, lru_cache

from ..batching import dividing_micro_batches, gradient_accumulation
from ..specs import HardwareSpec, StrategySpec
from .step_time import guidance_rank

# (strategy name, offload_optimizer, offload_param) in DeepSpeed-guidance order.
_LAYOUTS: tuple[tuple[str, str, str], ...] = (
    ("single", "none", "none"),
    ("ddp", "none", "none"),
    ("zero0", "none", "none"),
    ("fsdp-no-shard", "none", "none"),
    ("zero1", "none", "none"),
    ("zero2", "none", "none"),
    ("fsdp-grad-op", "none", "none"),
    ("zero1", "cpu", "none"),
    ("zero2", "cpu", "none"),
    ("zero1", "nvme", "none"),
    ("zero2", "nvme", "none"),
    ("zero3", "none", "none"),
    ("fsdp-hybrid", "none", "none"),
    ("fsdp-full", "none", "none"),
    ("zero3", "cpu", "none"),
    ("zero3", "nvme", "none"),
    ("zero3", "cpu", "cpu"),
    ("fsdp-hybrid", "cpu", "cpu"),
    ("fsdp-full", "cpu", "cpu"),
    ("zero3", "nvme", "nvme"),
)


@dataclass(frozen=True)
class Layout:
    """One strategy with its offload targets."""

    strategy: StrategySpec
    rank: int = field(compare=False)

    @cached_property
    def label(self) -> str:
        """Short name used in reports and ``rules_fired``: ``zero3+opt:cpu+param:cpu``."""
        s = self.strategy
        out = s.name
        if s.offload_optimizer != "none":
            out += f"+opt:{s.offload_optimizer}"
        if s.offload_param != "none":
            out += f"+param:{s.offload_param}"
        return out

    @property
    def offloads(self) -> bool:
        return self.strategy.offload_optimizer != "none" or self.strategy.offload_param != "none"

    def settings(self) -> dict[str, object]:
        """The values require/forbid rules test."""
        s = self.strategy
        return {"strategy": s.name, "backend": s.backend, "zero_stage": s.zero_stage,
                "fsdp_sharding": s.fsdp_sharding, "offload_optimizer": s.offload_optimizer,
                "offload_param": s.offload_param}

    def facts(self) -> dict[str, object]:
        s = self.strategy
        shards_params = s.zero_stage == 3 or s.fsdp_sharding in ("FULL_SHARD", "HYBRID_SHARD")
        return {"candidate.strategy": s.name, "candidate.backend": s.backend, "candidate.zero_stage": s.zero_stage,
                "candidate.fsdp_sharding": s.fsdp_sharding, "candidate.offload_optimizer": s.offload_optimizer,
                "candidate.offload_param": s.offload_param, "candidate.offload": self.offloads,
                "candidate.shards_parameters": shards_params}


@lru_cache(maxsize=1)
def all_layouts() -> tuple[Layout, ...]:
    """Every layout the search knows, in DeepSpeed-guidance order (built once; layouts are frozen)."""
    out = []
    for name, opt, param in _LAYOUTS:
        strategy = StrategySpec.from_name(name, opt, param)
        out.append(Layout(strategy, guidance_rank(strategy)))
    return tuple(out)


@dataclass(frozen=True)
class MicroBatches:
    """Micro-batch sizes the search may use, smallest first; with a global batch, only those that reach it."""

    values: tuple[int, ...]
    global_batch: int | None
    world: int

    def accumulation(self, micro: int) -> int:
        """gradient_accumulation_steps for ``micro`` (:func:`advisor.batching.gradient_accumulation`)."""
        return gradient_accumulation(self.global_batch, micro, self.world)

    def effective_global(self, micro: int) -> int:
        return micro * self.world * self.accumulation(micro)


def micro_batches(start: int, cap: int, global_batch: int | None, hw: HardwareSpec) -> MicroBatches:
    """Valid micro-batch sizes in [start, cap]; with a global batch, those that divide global / world.

    ``--micro-batch`` is the smallest size searched; the search goes up to ``cap``
    (``--max-micro-batch``, else global / world, else the rules' ``const.max_micro_batch``). A global batch
    no micro-batch in range reaches exactly is an InputError (:mod:`advisor.batching`).
    """
    from ..specs import MAX_MICRO_BATCH

    world = hw.world_size
    cap = min(cap, MAX_MICRO_BATCH)    # global / world can exceed what a TrainingSpec holds: accumulation covers it
    if global_batch is None:
        cap = max(cap, start)
        return MicroBatches(tuple(range(start, cap + 1)), None, world)
    return MicroBatches(dividing_micro_batches(global_batch, world, start, cap), global_batch, world)
