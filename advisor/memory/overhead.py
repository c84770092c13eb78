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
    """NCCL communicators a rank of a data-parallel run opens: one per process group a collective runs on
    (ProcessGroupNCCL creates them lazily at a group's first collective: ProcessGroupNCCL.cpp ``getNCCLComm``).

    DeepSpeed (any ZeRO stage): two. Its data-parallel group is a clone of the world group
    (deepspeed/utils/groups.py ``_clone_world_group``, ``_get_data_parallel_group``): ZeRO-1/2 broadcast, all_gather
    and all_reduce on the clone while accelerate's / the HF Trainer's barriers (``wait_for_everyone``) and
    ``deepspeed.comm``'s init run on the world group; ZeRO-3's ``zero.Init`` gathers over the world group
    (runtime/zero/partition_parameters.py) and its optimizer's group is the clone. DDP, FSDP1/FSDP2: one, the world
    group (their ``process_group`` / mesh default). Measured: benchmarks/nccl_communicators.py (DeepSpeed 0.19.8,
    torch 2.13, gloo, 2 ranks, one step: ZeRO-1/2 two groups; ZeRO-3 two when the model is not built under
    ``zero.Init`` (the engine broadcasts over the clone), one when it is (its parameters carry the world group; the
    clone still serves stage3.py's fp16 overflow all_reduce and its fallback group): counted two, never under;
    DDP, FSDP1, FSDP2 one; no point-to-point in any).
    """
    return 2 if strategy is not None and strategy.backend == "deepspeed" else 1


def nccl_communicators_note(comms: int) -> str:
    """Why DeepSpeed opens ``comms`` (> 1) communicators: its process groups (benchmarks/nccl_communicators.py)."""
    return (f"{comms} NCCL communicators per GPU: DeepSpeed's data-parallel group is a clone of the world group "
            "(deepspeed/utils/groups.py _clone_world_group) and the world group also runs collectives "
            "(accelerate's wait_for_everyone, zero.Init's gathers); ProcessGroupNCCL opens one per group "
            "(benchmarks/nccl_communicators.py)")


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


# --- issue 17 (session 10, helper C): the CUDA context and NCCL per card, from published measurements ---
# overhead.yaml ``context_classes`` / ``nccl_classes``; the measurements are benchmarks/gpu_overhead_corpus.yaml.
_GENERATIONS = frozenset({"volta", "turing", "ampere", "ampere-consumer", "ada", "hopper", "blackwell", "cdna2",
                          "cdna3", "cdna4", "unknown"})
_LINKS = frozenset({"nvlink", "pcie", "infinity-fabric"})


@dataclass(frozen=True)
class ContextClass:
    """The CUDA context (+ cuBLAS handle) one process holds on a card generation, bytes, and where it comes from;
    ``nccl_init_included``: the measurement also holds a NCCL communicator's init."""

    generation: str
    bytes: int
    nccl_init_included: bool
    source: str


@dataclass(frozen=True)
class NcclClass:
    """NCCL device memory of one communicator (bytes) on the given generations / links and world sizes."""

    generations: frozenset[str]
    links: frozenset[str]
    min_world: int
    max_world: int | None
    bytes: int
    source: str

    def applies(self, generation: str | None, link: str | None, world: int) -> bool:
        """True for a card of ``generation`` over ``link`` at ``world`` ranks (a card not named: any card)."""
        in_range = self.min_world <= world and (self.max_world is None or world <= self.max_world)
        return in_range and (generation is None or (generation in self.generations and link in self.links))


@dataclass(frozen=True)
class OverheadTable:
    """The per-card figures of overhead.yaml with the defaults for cards no class names (bytes)."""

    default_context: int
    default_nccl: int
    contexts: dict[str, ContextClass]
    nccl: tuple[NcclClass, ...]
    single_rank_buffer: int


def _bad(where: str, what: str) -> ValueError:
    return ValueError(f"advisor/data/overhead.yaml gpu.{where}: {what}")


def _bytes(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _bad(where, f"expected a positive number of bytes, got {value!r}")
    return value


def _source(value, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _bad(where, "every figure needs its source (a non-empty string)")
    return " ".join(value.split())


def parse_overhead_table(gpu: dict) -> OverheadTable:
    """The per-card context / NCCL figures of overhead.yaml's ``gpu`` mapping; raises ValueError naming the key of
    anything malformed (unknown generation or link, a non-positive byte count, a missing source, a bad world range)."""
    contexts: dict[str, ContextClass] = {}
    for gen, c in (gpu.get("context_classes") or {}).items():
        where = f"context_classes.{gen}"
        if gen not in _GENERATIONS:
            raise _bad(where, f"unknown generation (advisor/data/gpus.yaml knows {', '.join(sorted(_GENERATIONS))})")
        if not isinstance(c, dict):
            raise _bad(where, "expected a mapping with bytes, nccl_init_included, source")
        included = c.get("nccl_init_included")
        if not isinstance(included, bool):
            raise _bad(f"{where}.nccl_init_included", f"expected true or false, got {included!r}")
        contexts[gen] = ContextClass(generation=gen, bytes=_bytes(c.get("bytes"), f"{where}.bytes"),
                                     nccl_init_included=included, source=_source(c.get("source"), f"{where}.source"))
    nccl = []
    for i, c in enumerate(gpu.get("nccl_classes") or []):
        where = f"nccl_classes[{i}]"
        if not isinstance(c, dict):
            raise _bad(where, "expected a mapping with generations, links, min_world, max_world, bytes, source")
        gens, links = c.get("generations"), c.get("links")
        if not isinstance(gens, list) or not gens or not set(gens) <= _GENERATIONS:
            raise _bad(f"{where}.generations", f"expected a list of {', '.join(sorted(_GENERATIONS))}, got {gens!r}")
        if not isinstance(links, list) or not links or not set(links) <= _LINKS:
            raise _bad(f"{where}.links", f"expected a list of {', '.join(sorted(_LINKS))}, got {links!r}")
        lo, hi = c.get("min_world"), c.get("max_world")
        if isinstance(lo, bool) or not isinstance(lo, int) or lo < 2:
            raise _bad(f"{where}.min_world", f"expected a world size of 2 or more, got {lo!r}")
        if hi is not None and (isinstance(hi, bool) or not isinstance(hi, int) or hi < lo):
            raise _bad(f"{where}.max_world", f"expected null or a world size >= min_world {lo}, got {hi!r}")
        nccl.append(NcclClass(generations=frozenset(gens), links=frozenset(links), min_world=lo, max_world=hi,
                              bytes=_bytes(c.get("bytes"), f"{where}.bytes"),
                              source=_source(c.get("source"), f"{where}.source")))
    return OverheadTable(default_context=_bytes(gpu.get("cuda_context_bytes"), "cuda_context_bytes"),
                         default_nccl=_bytes(gpu.get("nccl_bytes"), "nccl_bytes"), contexts=contexts,
                         nccl=tuple(nccl),
                         single_rank_buffer=_bytes(gpu.get("nccl_single_rank_buffer_bytes"),
                                                   "nccl_single_rank_buffer_bytes"))


@lru_cache(maxsize=1)
def overhead_table() -> OverheadTable:
    """overhead.yaml's per-card context / NCCL figures, parsed and checked once."""
    return parse_overhead_table(load_data("overhead.yaml")["gpu"])


DEFAULT_CONTEXT_SOURCE = ("the H200's 621 MiB CUDA context + 64 MiB cuBLAS handle (driver 580, CUDA 13.0, torch "
                          "2.11, nvidia-smi, docs/calibration.md)")
DEFAULT_NCCL_SOURCE = ("the H200's 558 MiB for a one-GPU NCCL 2.28.9 communicator after one all_reduce (nvidia-smi, "
                       "docs/calibration.md)")


@dataclass(frozen=True)
class OutsideAllocator:
    """What one GPU of a run holds outside PyTorch's caching allocator, bytes: the CUDA context (with the cuBLAS
    handle) and NCCL's communicator (0 on one GPU), each with the text saying where it comes from."""

    context_bytes: int
    context_source: str
    nccl_bytes: int
    nccl_source: str

    @property
    def total(self) -> int:
        """Context + NCCL, bytes."""
        return self.context_bytes + self.nccl_bytes

    def note(self) -> str:
        """The estimate's note: both figures in MiB and their sources."""
        text = f"outside PyTorch's caching allocator, per GPU: CUDA context {self.context_bytes / 2**20:.0f} MiB " \
               f"({self.context_source})"
        if self.nccl_source:
            text += f"; NCCL communicator {self.nccl_bytes / 2**20:.0f} MiB ({self.nccl_source})"
        return text + " (benchmarks/gpu_overhead_corpus.yaml)"


SINGLE_RANK_SOURCE = ("one GPU under DeepSpeed: deepspeed.initialize makes a NCCL group, broadcasts the model and "
                      "all_reduces ZeRO's gradient norm on it (runtime/engine.py _broadcast_model, "
                      "zero/stage_1_and_2.py, stage3.py)")


def outside_allocator(hw, strategy=None, table: OverheadTable | None = None) -> OutsideAllocator:
    """The CUDA context and NCCL bytes one GPU of ``hw`` holds outside the caching allocator: the context once and
    one communicator's bytes (``_one_communicator``) per communicator the engine opens (``nccl_communicators``)."""
    one = _one_communicator(hw, strategy, table)
    comms = nccl_communicators(strategy)
    if one.nccl_bytes == 0 or comms == 1:
        return one
    return OutsideAllocator(one.context_bytes, one.context_source, comms * one.nccl_bytes,
                            f"{comms} x {one.nccl_bytes / 2**20:.0f} MiB: {nccl_communicators_note(comms)}; "
                            f"each {one.nccl_source}")


def _one_communicator(hw, strategy=None, table: OverheadTable | None = None) -> OutsideAllocator:
    """The CUDA context and NCCL bytes one GPU of ``hw`` holds outside the caching allocator (``strategy``: the
    run's StrategySpec, which decides whether one GPU still holds a NCCL communicator: DeepSpeed's).

    Per card generation (overhead.yaml ``context_classes`` / ``nccl_classes``, the largest published measurement
    that applies); a card no class names keeps the H200 figures, said "not measured for this card"; no card named
    (``--vram`` alone): the largest figure of any class. NCCL is 0 on one GPU; on a card whose context measurement
    holds a NCCL communicator's init, the NCCL term is what more ranks add (``nccl_classes``) or, where no class
    covers the world size, the default again (counting the init twice: never under).
    """
    t = table or overhead_table()
    gpu = getattr(hw, "gpu", None)
    if gpu is None:
        ctx_bytes = max([t.default_context] + [c.bytes for c in t.contexts.values()])
        ctx_source = ("no GPU named (--vram alone): the largest figure measured on any card, "
                      + (DEFAULT_CONTEXT_SOURCE if ctx_bytes == t.default_context else
                         next(c.source for c in t.contexts.values() if c.bytes == ctx_bytes)))
        generation = link = None
        included = False
    elif gpu.generation in t.contexts:
        c = t.contexts[gpu.generation]
        ctx_bytes, ctx_source, included = c.bytes, f"{gpu.generation} class: {c.source}", c.nccl_init_included
        generation, link = gpu.generation, gpu.intra_node_link
    else:
        ctx_bytes, included = t.default_context, False
        ctx_source = f"not measured for this card ({gpu.name}, {gpu.generation}): {DEFAULT_CONTEXT_SOURCE}"
        generation, link = gpu.generation, gpu.intra_node_link
    world = hw.world_size
    if world <= 1:
        if strategy is None or strategy.backend != "deepspeed":
            return OutsideAllocator(ctx_bytes, ctx_source, 0, "")
        if included:   # the context figure holds the communicator's init: what its first collective maps
            return OutsideAllocator(ctx_bytes, ctx_source, t.single_rank_buffer,
                                    f"{SINGLE_RANK_SOURCE}; NCCL >= 2.25 maps a 512 MiB shared buffer for it at "
                                    "its first collective (NVIDIA/nccl#2363; 996 - 484 MiB on an RTX 3090, "
                                    "NVIDIA/nccl#2366)")
        return OutsideAllocator(ctx_bytes, ctx_source, max(t.default_nccl, t.single_rank_buffer),
                                f"{SINGLE_RANK_SOURCE}; {DEFAULT_NCCL_SOURCE}")
    matches = [c for c in t.nccl if c.applies(generation, link, world)]
    if gpu is None:
        nccl_bytes = max([t.default_nccl] + [c.bytes for c in matches])
        nccl_source = (f"no GPU named: the largest figure measured for {world} GPUs on any card, "
                       + (DEFAULT_NCCL_SOURCE if nccl_bytes == t.default_nccl else
                          next(c.source for c in matches if c.bytes == nccl_bytes)))
    elif matches:
        best = max(matches, key=lambda c: c.bytes)
        nccl_bytes, nccl_source = best.bytes, best.source
    else:
        nccl_bytes = t.default_nccl
        nccl_source = (f"not measured for {world} x {gpu.name} ({gpu.generation}, {gpu.intra_node_link}): "
                       f"{DEFAULT_NCCL_SOURCE}, a floor for more ranks")
        if included:
            nccl_source += "; this card's context figure already holds a communicator's init, counted again"
    return OutsideAllocator(ctx_bytes, ctx_source, nccl_bytes, nccl_source)
