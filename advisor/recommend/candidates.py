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
        """Short name used in reports and ``rules_fired``: ``zero3+opt:cpu+param:cpu``, ``zero3+sp4``."""
        s = self.strategy
        out = s.name
        if s.offload_optimizer != "none":
            out += f"+opt:{s.offload_optimizer}"
        if s.offload_param != "none":
            out += f"+param:{s.offload_param}"
        out += parallel_suffix(s)          # issue 15
        return out

    @property
    def parallel(self) -> bool:
        """A tensor/sequence/context-parallel layout (issue 15)."""
        return self.strategy.tp_size * self.strategy.sp_size * self.strategy.cp_size > 1

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
                "candidate.shards_parameters": shards_params,
                # issue 15: parallel layouts
                "candidate.tp_size": s.tp_size, "candidate.sp_size": s.sp_size, "candidate.cp_size": s.cp_size,
                "candidate.model_parallel": self.parallel}


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


# ---------------------------------------------------------------- issue 15: tensor / sequence / context parallel

def parallel_suffix(s: StrategySpec) -> str:
    """``+tp8``, ``+sp4``, ``+cp2`` (and ``(fsdp2)``) for a layout's label; empty for data parallelism."""
    out = "".join(f"+{k}{v}" for k, v in (("tp", s.tp_size), ("sp", s.sp_size), ("cp", s.cp_size)) if v > 1)
    if s.backend == "fsdp" and s.fsdp_version == 2:
        out += "(fsdp2)"
    return out


# The data-parallel strategy each layout composes with, in the engine that runs it: DeepSpeed AutoTP with ZeRO-1
# (states sharded, weights whole on each tp rank) or ZeRO-3 (all sharded); Ulysses/ALST with ZeRO-3 (the ALST
# recipe, arXiv 2506.13996 §4); ring attention with FSDP2 FULL_SHARD (accelerate's context parallelism).
# Offloading variants are kept: a 70B full fine-tune does not hold its optimizer states on 8 GPUs whatever the
# layout (16 bytes x 70.6B parameters > 8 x 80 GB), so long context there is SP/CP + ZeRO-3 + CPU offload.
PARALLEL_BASES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "tp": (("zero1", "none", "none"), ("zero3", "none", "none"), ("zero3", "cpu", "none")),
    "sp": (("zero3", "none", "none"), ("zero3", "cpu", "none"), ("zero3", "cpu", "cpu")),
    "cp": (("fsdp-full", "none", "none"), ("fsdp-full", "cpu", "cpu")),
}
# Guidance rank added to a parallel layout: after every data-parallel layout, so that within the model's time
# resolution data parallelism alone is preferred (TP/SP/CP add collectives on the critical path).
PARALLEL_RANK_OFFSET = 100


def parallel_layouts(arch, hw: HardwareSpec, training) -> tuple[Layout, ...]:
    """The tensor-, sequence- and context-parallel layouts the engines accept for this problem: sizes 2, 4, 8, ...
    that pass :func:`advisor.layout.check_layout` (heads, kv heads, GPUs per node, sequence length), each with its
    engine's base strategies (:data:`PARALLEL_BASES`). One dimension at a time (the product of all sizes is not
    searched), sizes up to one node, and context parallelism only at a size Ulysses cannot take (heads or
    sequence not divisible): both split the sequence the same way."""
    from ..errors import InputError
    from ..layout import check_layout

    out: list[Layout] = []
    # Sizes up to one node: TP must stay inside it (advisor/layout.py), and Ulysses' all-to-alls and the ring's
    # K/V all-gathers on every layer run at the intra-node rate only there (advisor/recommend/step_time.py).
    sizes = [2 ** k for k in range(1, 13) if 2 ** k <= min(hw.world_size, hw.gpus_per_node)]
    sp_sizes: set[int] = set()
    for dim, bases in PARALLEL_BASES.items():
        for n in sizes:
            if dim == "cp" and n in sp_sizes:
                continue      # the same sequence split as Ulysses at this size: one of the two is searched
            for name, opt, param in bases:
                extra = {f"{dim}_size": n}
                if name.startswith("fsdp"):
                    extra["fsdp_version"] = 2
                try:
                    strategy = StrategySpec.from_name(name, opt, param, **extra)
                    check_layout(arch, hw, training, strategy)
                except (InputError, ValueError):
                    continue
                if dim == "sp":
                    sp_sizes.add(n)
                out.append(Layout(strategy, guidance_rank(strategy) + PARALLEL_RANK_OFFSET))
    return tuple(out)
