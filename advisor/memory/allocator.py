"""dsadvise's allocation sequences of a training step, run through PyTorch's CUDA caching allocator
(:mod:`advisor.memory.caching_allocator`, the simulator; its names are re-exported here).

The simulation assumes memory to spare (no OOM retries): its ``reserved`` is what ``max_memory_reserved``
reports when the card is large enough, an upper bound of what a tighter card would need. Free blocks belong to
the stream that allocated them (``BlockComparatorSize`` orders by stream first and ``get_free_block`` takes
no block of another stream): FSDP's all-gathers allocate in its unshard stream, so the gathered units form a
pool of their own that the compute stream's tensors never reuse (and vice versa); so do the pre-unshard stream's
shard copies (CPU offload) and the post-backward stream's gradient shards; everything else is one stream. The
unshard and pre-unshard streams' sequences follow FSDP's order of all-gathers, prefetches and rate-limited frees
(:func:`fsdp_stream_events`). FSDP (v1) initialization runs on the compute stream before the first step and
leaves its transients cached there (:func:`fsdp_init_events`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from functools import lru_cache

from ..datacache import computed
from .caching_allocator import (K_LARGE_BUFFER, K_MIN_BLOCK, K_MIN_LARGE_ALLOC, K_ROUND_LARGE,  # noqa: F401
                                K_SMALL_BUFFER, K_SMALL_SIZE, NO_MAX_SPLIT, AllocatorStats, CachingAllocator,
                                _simulate_default, allocation_size, round_size, simulate)
from .zero_sizes import ZERO3_GATHER_POOL_CACHED   # issue 17 (Z): a reserved-only pool
from ..stacks import quant_states_moved_at_wrap   # issue 17 (helper P): QuantStates at the wrap

@dataclass(frozen=True)
class StateLayout:
    """Model-state tensors (bytes each) in the order the engine allocates them; ``*_layer`` lists are one
    decoder layer's tensors, repeated per layer, ``*_outside`` the rest (embeddings, head, final norm,
    fixed-size buffers).

    * ``persistent``: allocated before the first forward and never freed (parameters, DeepSpeed's flat
      partitions, FSDP flat shards, persistent gradient buffers, communication buckets);
    * ``grads``: parameter gradients formed during backward (AccumulateGrad) and freed by
      ``zero_grad(set_to_none=True)`` after the step; a layer's when its backward starts, the head's when
      the loss backward starts, the embedding's at the end of backward;
    * ``lazy``: optimizer states torch optimizers create at the first ``step()`` (torch.optim.AdamW
      ``_init_group``: ``zeros_like`` per parameter), after the first backward;
    * ``step_temp``: foreach temporaries of each step (one list over all tensors, then freed)."""

    persistent_outside: tuple[int, ...] = ()
    persistent_layer: tuple[int, ...] = ()
    grads_head: tuple[int, ...] = ()
    grads_end: tuple[int, ...] = ()
    grads_layer: tuple[int, ...] = ()
    lazy_outside: tuple[int, ...] = ()
    lazy_layer: tuple[int, ...] = ()
    step_temp_outside: tuple[int, ...] = ()
    step_temp_layer: tuple[int, ...] = ()
    # issue 17 (G4): autocast's 16-bit copy of the output projection's fp32 weight (bytes; 0: none, or kept in
    # ``persistent_layer``), placed where a real step allocates and frees it (see :func:`churn_events`).
    copy_head: int = 0


def step_events(activation_events: list[tuple[str, object, int]], layers: int, layout: StateLayout,
                iterations: int | None = None) -> list[tuple[str, object, int]]:
    """The allocation sequence of training steps of a ``layers``-layer model: model states, then per step
    the forward and backward of :func:`advisor.memory.activations._trace_events` with the gradients placed
    where backward forms them, the optimizer step (lazy states at the first one, foreach temporaries),
    ``zero_grad(set_to_none=True)`` and the held logits released last (``outputs`` stays in scope through
    the step in accelerate's loop). Two steps when the first one allocates optimizer states (the second
    then runs on a pool whose freed activation blocks the states took), else one: a step that starts and
    ends with the same live tensors finds its own freed blocks again."""
    if iterations is None:
        iterations = 2 if (layout.lazy_outside or layout.lazy_layer) else 1
    out: list[tuple[str, object, int]] = []
    out += [("a", ("P", i), n) for i, n in enumerate(layout.persistent_outside)]
    out += [("a", ("P", l, i), n) for l in range(layers) for i, n in enumerate(layout.persistent_layer)]
    for it in range(iterations):
        live: dict = {}
        grads: list = []
        held = None
        for op, key, n in activation_events:
            if op == "a":
                k = (it, key)
                live[k] = None
                out.append(("a", k, n))
            elif op == "f":
                k = (it, key)
                del live[k]
                out.append(("f", k, 0))
            elif op == "t":
                if key == "logits_and_loss":
                    new = [(("G", it, "head", i), n) for i, n in enumerate(layout.grads_head)]
                elif key[0] == "L" and key[1:].isdigit():
                    new = [(("G", it, key, i), n) for i, n in enumerate(layout.grads_layer)]
                else:
                    new = []
                for k, n in new:
                    grads.append(k)
                    out.append(("a", k, n))
            elif op == "h":
                held = (it, key)
        for i, n in enumerate(layout.grads_end):
            grads.append(("G", it, "end", i))
            out.append(("a", ("G", it, "end", i), n))
        out += [("f", k, 0) for k in live if k != held]                  # leftovers of autograd
        if it == 0:
            out += [("a", ("S", i), n) for i, n in enumerate(layout.lazy_outside)]
            out += [("a", ("S", l, i), n) for l in range(layers) for i, n in enumerate(layout.lazy_layer)]
        temps = [(("T", it, i), n) for i, n in enumerate(layout.step_temp_outside)]
        temps += [(("T", it, l, i), n) for l in range(layers) for i, n in enumerate(layout.step_temp_layer)]
        out += [("a", k, n) for k, n in temps]
        out += [("f", k, 0) for k, _ in temps]
        out += [("f", k, 0) for k in grads]
        if held is not None:
            out.append(("f", held, 0))
    return out


# ---------------------------------------------------------------------------------------------------------
# From an estimate's terms to allocated / reserved
# ---------------------------------------------------------------------------------------------------------
# Buffers whose size grows with the model (split over the layers in the sequence); the others are fixed-size
# buckets allocated once.
AUTOCAST_COPIES_BUFFER = "autocast 16-bit weight copies"      # advisor.memory.core's buffer name
ROTARY_CACHES = "per-layer rotary caches"      # advisor.memory.buffers.ROTARY_CACHES_BUFFER (issue 17, helper T)
# the buffers FSDP moves with their module's unit (advisor.memory.buffers: ROTARY_CACHES_BUFFER, CAUSAL_MASK_BUFFER)
_MODULE_BUFFERS = (ROTARY_CACHES, "LlamaModel.causal_mask buffer")
_PER_LAYER_BUFFERS = (AUTOCAST_COPIES_BUFFER, "DDP reducer buckets", "whole model",
                      "mixed-precision parameter copy", ROTARY_CACHES)


@dataclass(frozen=True)
class GpuAllocation:
    """What PyTorch's allocator reports for one estimate, in bytes per GPU: ``allocated`` =
    max_memory_allocated (tensor bytes + 512-byte rounding + unsplit block remainders), ``reserved`` =
    max_memory_reserved (+ cached free blocks of its segments)."""

    allocated: int
    reserved: int
    rounding: int            # allocated - tensor bytes
    cached: int              # reserved - allocated - stream_pool
    simulated_layers: tuple[int, ...]
    oom_retries: bool = False  # fits only because the allocator releases cached segments when cudaMalloc fails
    workspaces: int = 0      # the cuBLAS workspaces (part of allocated; see BLAS_WORKSPACE_KEYS)
    stream_pool: int = 0     # cached free blocks of a side stream's pool (ZeRO-3's all-gather stream): reserved only


def _tensor_elements(arch) -> tuple[list[int], list[int], int, int, int]:
    """Parameter tensors (elements) of one decoder layer in module order, and the embedding, lm_head and
    final-norm elements (advisor.param_count)."""
    from ..param_count import count_parameters, linear_shapes

    counts = count_parameters(arch)
    layer: list[int] = []
    for i, o, c in linear_shapes(arch).values():
        layer.append(i * o * c)                # biases and norms: the rest of the layer, below
    rest = counts.per_layer - sum(layer)
    norms = max(arch.norms_per_layer, 1)
    if rest > 0:
        layer += [rest // norms] * (norms - 1) + [rest - (rest // norms) * (norms - 1)]
    return layer, [counts.per_layer], counts.embedding, counts.lm_head, counts.final


def state_layout(arch, training, strategy, hw, ms, buffers: dict[str, int], formed_in_backward: bool,
                 layers: int) -> StateLayout:
    """The model-state tensors of a ``layers``-layer slice of the model, sized from the estimate's own
    per-GPU terms (``ms``: ModelStates, ``buffers``), in each engine's allocation granularity:
    torch optimizers and DDP/single keep one tensor per parameter; DeepSpeed ZeRO-0/1/2 flattens the 16-bit
    parameters, gradients and optimizer partitions into one buffer each (stage_1_and_2
    ``flatten_dense_tensors_aligned``), ZeRO-3 one partition per parameter plus flat gradient/optimizer
    partitions; FSDP one flat parameter per wrapped decoder layer (FlatParameter)."""
    from ..param_count import count_parameters

    counts = count_parameters(arch)
    n = max(arch.num_layers, 1)
    layer_t, _, emb, head, final = _tensor_elements(arch)
    outside_t = [e for e in (emb, head, final) if e]
    total = max(counts.total, 1)
    full = training.method == "full"
    frac = (sum(outside_t) + layers * counts.per_layer) / total if full else layers / n
    deepspeed = strategy.backend == "deepspeed"
    stage = strategy.zero_stage or 0
    fsdp = strategy.backend == "fsdp"

    def scaled(elems: list[int], per_elem: float) -> tuple[int, ...]:
        return tuple(max(int(e * per_elem), 1) for e in elems if e * per_elem >= 1)

    step_temporaries = ms.step.step_temporaries if ms.step is not None else 0   # the optimizer step's transient
    p_elem = ms.parameters / total
    persistent_out: list[int] = []
    persistent_layer: list[int] = []
    if deepspeed and stage <= 2:
        persistent_out.append(int(ms.parameters * frac))
    elif fsdp:
        persistent_out += scaled([sum(outside_t)], p_elem)
        persistent_layer += scaled([counts.per_layer], p_elem)
    else:
        persistent_out += scaled(outside_t, p_elem)
        persistent_layer += scaled(layer_t, p_elem)

    g = dict(grads_head=(), grads_end=(), grads_layer=())
    if ms.gradients:
        if formed_in_backward:
            g_elem = ms.gradients / total
            g = dict(grads_head=scaled([head or emb], g_elem),
                     grads_end=scaled([emb if head else 0, final], g_elem), grads_layer=scaled(layer_t, g_elem))
        elif deepspeed:
            persistent_out.append(int(ms.gradients * frac))
        elif full and not fsdp:
            g_elem = ms.gradients / total
            persistent_out += scaled(outside_t, g_elem)
            persistent_layer += scaled(layer_t, g_elem)
        else:
            # issue 17: FSDP's unsharded gradients under no_sync (model_states.fsdp_no_sync_gradient_bytes) are
            # formed in the first micro-batch's backward, layer by layer, and freed by the last one's
            # reduce-scatter: allocated in the step's backward, freed at the step, like gradients formed there.
            from .model_states import FSDP_NO_SYNC_GRADIENTS

            nosync = ms.gpu_breakdown.get(FSDP_NO_SYNC_GRADIENTS, 0) if fsdp else 0
            if ms.gradients - nosync > 0:
                persistent_layer.append(max((ms.gradients - nosync) // n, 1))
            if nosync:
                g["grads_layer"] = (max(nosync // n, 1),)

    lazy_out: list[int] = []
    lazy_layer: list[int] = []
    temp_out: list[int] = []
    temp_layer: list[int] = []
    if deepspeed:
        for name, v in ms.gpu_breakdown.items():
            if name not in ("parameters", "gradients") and v:
                persistent_out.append(int(v * frac))
    elif ms.optimizer_states:
        k = 1 if training.optimizer in ("lion", "sgd", "adafactor") else 2
        trainable_elems = total if full else None
        if full and not fsdp:
            s_elem = ms.optimizer_states / trainable_elems / k
            for _ in range(k):
                lazy_out += scaled(outside_t, s_elem)
                lazy_layer += scaled(layer_t, s_elem)
            if step_temporaries:
                t_elem = step_temporaries / trainable_elems
                temp_out += scaled(outside_t, t_elem)
                temp_layer += scaled(layer_t, t_elem)
        else:
            per_layer_states = ms.optimizer_states / n / k
            lazy_layer += [max(int(per_layer_states), 1)] * k
            if step_temporaries:
                temp_layer.append(max(step_temporaries // n, 1))

    copy_head = 0
    for name, v in buffers.items():
        if name == ZERO3_GATHER_POOL_CACHED:
            continue        # cached free blocks of the all-gather stream's pool: reserved, never allocated
        if name.startswith(AUTOCAST_COPIES_BUFFER) and g["grads_head"]:
            # issue 17 (G4): the head's copy (V x h, 16-bit: the output projection's weight, cast by autocast
            # like every linear's) is not alive through the step: the forward allocates it just before the
            # logits and the head's backward frees it (see churn_events). The decoder layers' copies stay here.
            copy_head = min(v, arch.vocab_size * arch.hidden_size * 2)
            v -= copy_head
            if v <= 0:
                continue
        if any(tag in name for tag in _PER_LAYER_BUFFERS):
            persistent_layer.append(max(v // n, 1))
        else:
            persistent_out.append(v)
    return StateLayout(persistent_outside=tuple(persistent_out), persistent_layer=tuple(persistent_layer),
                       lazy_outside=tuple(lazy_out), lazy_layer=tuple(lazy_layer),
                       step_temp_outside=tuple(temp_out), step_temp_layer=tuple(temp_layer),
                       copy_head=copy_head, **g)


@lru_cache(maxsize=512)
def _activation_segments(arch, trace_training, mode: str, ckpt: str, layers: int):
    """The trace's events cut where backward enters a new term: ``[(term, events)]`` (the first term is None:
    the forward), the frees of what autograd leaves behind, the held logits' key. A key may be allocated again
    after its free (a checkpointed layer's recompute): the simulator allows that."""
    from .activations import allocation_trace

    segs: list = []
    cur: list = []
    term = None
    held = None
    alive: dict = {}
    for ev in allocation_trace(arch, trace_training, mode, ckpt, layers):
        op = ev[0]
        if op == "a":
            alive[ev[1]] = None
            cur.append(ev)
        elif op == "f":
            del alive[ev[1]]
            cur.append(ev)
        elif op == "t":
            segs.append((term, cur))
            cur, term = [], ev[1]
        elif op == "h":
            held = ev[1]
    segs.append((term, cur))
    leftovers = [("f", k, 0) for k in alive if k != held]
    return segs, leftovers, held


# The key of accelerate's fp32 copy of the model output's logits in the step's sequence.
ACCELERATE_FP32_LOGITS = ("accelerate fp32 logits",)

# cuBLAS workspaces. aten/src/ATen/cuda/CublasHandlePool.cpp: ``getNewWorkspace`` takes the workspace from the
# caching allocator (``CUDACachingAllocator::get()->allocate(getChosenWorkspaceSize())``), one per (cuBLAS handle,
# stream), kept for the process; handles come from a per-thread pool window (``getCurrentCUDABlasHandle``), so
# the forward (the training loop's thread) and the backward (autograd's device thread) each get one, at their first
# matmul. ``parseChosenWorkspaceSize`` default: 4096 * 8 * 1024 (32 MiB) on compute capability 9.x-12.x (Hopper,
# Blackwell), else 4096 * 1024 * 2 + 16 * 1024 * 8; ROCm (hipBLAS) 32 MiB, 128 MiB on gfx94x/gfx95x (MI300, MI350).
# The H200 of docs/calibration.md reserved 98 MiB after one 4096^2 bf16 matmul: two 32 MiB tensors + 32 MiB.
BLAS_WORKSPACE_KEYS = (("cuBLAS workspace", "forward"), ("cuBLAS workspace", "backward"))
_WORKSPACE_32MIB = 4096 * 8 * 1024
_WORKSPACE_BY_GENERATION = {"hopper": _WORKSPACE_32MIB, "blackwell": _WORKSPACE_32MIB, "cdna2": 32 << 20,
                            "cdna3": 128 << 20, "cdna4": 128 << 20}
_WORKSPACE_OLDER_NVIDIA = 4096 * 1024 * 2 + 16 * 1024 * 8


def blas_workspace_bytes(hw) -> int:
    """Bytes of one cuBLAS/hipBLAS workspace on ``hw``'s GPU (see ``BLAS_WORKSPACE_KEYS``); a GPU of unknown
    generation (``--vram`` only) takes the 32 MiB of current NVIDIA data-center GPUs."""
    gen = getattr(getattr(hw, "gpu", None), "generation", None) or "unknown"
    if gen in _WORKSPACE_BY_GENERATION:
        return _WORKSPACE_BY_GENERATION[gen]
    return _WORKSPACE_32MIB if gen == "unknown" else _WORKSPACE_OLDER_NVIDIA


def churn_events(segments, leftovers, held, layers: int, layout: StateLayout,
                 iterations: int | None = None, held_fp32: int = 0,
                 blas_workspace: int = 0) -> list[tuple[str, object, int]]:
    """:func:`step_events` without the persistent states, from :func:`_activation_segments`.

    ``held_fp32`` (bytes, :func:`advisor.memory.core.accelerate_fp32_logits`): the training loop's output is
    accelerate's fp32 copy of the 16-bit logits, not the logits themselves. ``Accelerator.prepare_model``
    wraps the forward in ``convert_outputs_to_fp32`` (accelerate utils/operations.py ``ConvertOutputsToFp32``:
    ``convert_to_fp32(self.model_forward(...))``, ``.float()`` of every 16-bit tensor of the output), so when
    the forward (loss included) returns, an fp32 copy of the logits is allocated and the 16-bit output, which
    nothing saved, is dropped; the copy is what the caller holds through the optimizer step. Recorded on a real
    step (``benchmarks/allocator_sequence.py``): the copy takes the block the loss's upcast freed and the
    backward's two fp32 logit gradients then need segments of their own (four fp32 logit-sized segments; the
    H200 allocator snapshot of docs/calibration.md shows the same four).

    ``blas_workspace`` (bytes, :func:`blas_workspace_bytes`): the two cuBLAS workspaces, allocated in the first
    step and kept: the forward's at its first matmul, the backward's at the output projection's backward (its
    first matmul: after the loss's fp32 logit gradients are freed and the input gradient is allocated). There
    only the freed logit-sized blocks are large enough, so the workspace splits one of them and a later step's
    logit gradient needs a segment of its own: with it the CPU-recorded full fine-tuning step at the H200's
    shape simulates to 13.50 GiB reserved (H200: 13.53; without: 12.38)."""
    if iterations is None:
        iterations = 2 if (layout.lazy_outside or layout.lazy_layer) else 1
    held_logits = 0
    if held is not None:
        held_logits = next((n for _, evs in segments for op, k, n in evs if op == "a" and k == held), 0)
    held_size = held_logits if held_fp32 else 0         # accelerate's copy replaces the held logits
    bwd_placed = False
    out: list = []
    for it in range(iterations):
        grads: list = []
        for term, evs in segments:
            head_grads = ()
            if term == "logits_and_loss" and layout.copy_head:
                head_grads, new = [(("G", "head", i), n) for i, n in enumerate(layout.grads_head)], ()
                grads += [k for k, _ in head_grads]
            elif term == "logits_and_loss":
                new = [(("G", "head", i), n) for i, n in enumerate(layout.grads_head)]
            elif term is not None and term[0] == "L" and term[1:].isdigit():
                new = [(("G", term, i), n) for i, n in enumerate(layout.grads_layer)]
            else:
                new = ()
            for k, n in new:
                grads.append(k)
                out.append(("a", k, n))
            if it == 0 and blas_workspace and term is None:
                first = next((i for i, e in enumerate(evs) if e[0] == "a"), len(evs) - 1)
                evs = [*evs[:first + 1], ("a", BLAS_WORKSPACE_KEYS[0], blas_workspace), *evs[first + 1:]]
            elif it == 0 and blas_workspace and term is not None and not bwd_placed:
                evs = _with_backward_workspace(evs, term, held_logits, blas_workspace)
                bwd_placed = True
            if layout.copy_head and term is None:
                evs = _with_head_copy(evs, held, layout.copy_head)
            elif head_grads:
                evs = _head_backward(evs, held_logits, layout.copy_head, head_grads)
            out.extend(evs)
            if term is None and held_size:                  # the forward returned: accelerate's copy
                out += [("a", ACCELERATE_FP32_LOGITS, held_size + held_fp32), ("f", held, 0)]
        for i, n in enumerate(layout.grads_end):
            grads.append(("G", "end", i))
            out.append(("a", ("G", "end", i), n))
        out.extend(leftovers)
        if it == 0:
            out += [("a", ("S", i), n) for i, n in enumerate(layout.lazy_outside)]
            out += [("a", ("S", l, i), n) for l in range(layers) for i, n in enumerate(layout.lazy_layer)]
        temps = [(("T", i), n) for i, n in enumerate(layout.step_temp_outside)]
        temps += [(("T", l, i), n) for l in range(layers) for i, n in enumerate(layout.step_temp_layer)]
        out += [("a", k, n) for k, n in temps]
        out += [("f", k, 0) for k, _ in temps]
        out += [("f", k, 0) for k in grads]
        if held_size:
            out.append(("f", ACCELERATE_FP32_LOGITS, 0))
        elif held is not None:
            out.append(("f", held, 0))
    return out


# issue 17 (G4): autocast's 16-bit copy of the output projection's weight and the 16-bit weight gradient its
# backward computes (see _head_backward).
HEAD_COPY_KEYS = (("autocast head weight copy",), ("head 16-bit weight gradient",))


def _with_head_copy(evs: list, held, copy: int) -> list:
    """The forward segment with autocast's 16-bit copy of the head's fp32 weight allocated where the head's
    linear runs: just before its output, the 16-bit logits (``held``; else at the forward's end). torch.autocast
    casts a linear's fp32 weight when the op runs (aten/src/ATen/autocast_mode.cpp ``cached_cast``; the cache
    lives until the autocast region exits) and MmBackward saves the copy, so it lives until the head's backward.
    Recorded at the H200's full fine-tuning shape (benchmarks/allocator_sequence.py): allocated right before
    the 16-bit logits, freed in the head's backward."""
    key = HEAD_COPY_KEYS[0]
    at = next((i for i, e in enumerate(evs) if e[0] == "a" and e[1] == held), len(evs))
    return [*evs[:at], ("a", key, copy), *evs[at:]]


def _head_backward(evs: list, logits_bytes: int, copy: int, head_grads: list) -> list:
    """The loss/head backward segment with the head's gradient formed where autograd forms it (full fine-tuning
    under autocast over fp32 weights). The output projection's MmBackward computes the input gradient and the
    16-bit weight gradient (the size of the 16-bit weight copy it saved); when the node has run, its saved copy
    is released, the cast's backward (ToCopyBackward of autocast's ``to(bf16)``) makes the fp32 gradient that
    AccumulateGrad keeps as ``.grad`` (torch/csrc/autograd/functions/accumulate_grad.h: the incoming gradient
    is stolen, not copied), and the 16-bit one dies. The order recorded on a real step at the H200's shape
    (benchmarks/allocator_sequence.py): input gradient, 16-bit weight gradient, the logits gradient freed, the
    copy freed, the fp32 gradient, the 16-bit gradient freed. The node's input gradient is the segment's first
    allocation below the 16-bit logits' size (its loss gradients are logit-sized); the node ends at the next
    allocation that is not its temporary or the cuBLAS workspace."""
    hc, dw = HEAD_COPY_KEYS
    formed = [("a", k, n) for k, n in head_grads]
    dx = next((i for i, e in enumerate(evs)
               if e[0] == "a" and (not logits_bytes or e[2] < logits_bytes)), None)
    if dx is None:
        return [("f", hc, 0), *formed, *evs]
    rest = evs[dx + 1:]
    end = next((i for i, e in enumerate(rest) if e[0] == "a" and not (
        isinstance(e[1], tuple) and (e[1][0] == "tmp" or e[1] in BLAS_WORKSPACE_KEYS))), len(rest))
    return [*evs[:dx + 1], ("a", dw, copy), *rest[:end], ("f", hc, 0), *formed, ("f", dw, 0), *rest[end:]]


def _with_backward_workspace(evs: list, term, logits_bytes: int, workspace: int) -> list:
    """``evs`` (the first backward segment) with the backward's cuBLAS workspace after the output projection's
    input gradient: the first allocation below the 16-bit logits' size in the loss/head segment (its loss
    gradients are logit-sized), else the segment's first allocation."""
    key = BLAS_WORKSPACE_KEYS[1]
    at = None
    for i, e in enumerate(evs):
        if e[0] == "a" and (term != "logits_and_loss" or not logits_bytes or e[2] < logits_bytes):
            at = i
            break
    if at is None:
        return [*evs, ("a", key, workspace)]
    return [*evs[:at + 1], ("a", key, workspace), *evs[at + 1:]]


# torch/distributed/fsdp/_init_utils.py PARAM_BROADCAST_BUCKET_SIZE: the bucket of sync_module_states' broadcast.
FSDP_BROADCAST_BUCKET = 250 * 1024 * 1024
# torch/csrc/distributed/c10d/comm.cpp broadcast_coalesced: "a maximum of 2 in flight broadcast operations".
FSDP_BROADCAST_IN_FLIGHT = 2


def _broadcast_buckets(tensors) -> list[int]:
    """The flat buckets (bytes) ``dist._broadcast_coalesced`` allocates for ``tensors`` (one dtype):
    take_tensors closes a bucket once it reaches PARAM_BROADCAST_BUCKET_SIZE; flatten_dense_tensors of a one-tensor
    bucket is a view of it (torch/csrc/utils/tensor_flatten.h): only multi-tensor buckets allocate."""
    buckets: list[int] = []
    acc, count = 0, 0
    for n in tensors:
        acc, count = acc + n, count + 1
        if acc >= FSDP_BROADCAST_BUCKET:
            buckets.append(acc if count > 1 else 0)
            acc, count = 0, 0
    if acc:
        buckets.append(acc if count > 1 else 0)
    return [n for n in buckets if n]


def fsdp_init_events(units: list[tuple[int, ...]], world: int, sync_module_states: bool,
                     offload_params: bool = False, buffers=(), nccl: bool = True,
                     loaded_per_layer: tuple[int, ...] = (), layers: int = 0) -> list[tuple[str, object, int]]:
    """The allocation sequence of FSDP (v1) wrapping, one unit after the other (bytes per GPU): ``units`` are
    the wrapped modules' parameter tensors, unsharded, in wrap order (auto-wrap wraps the decoder layers
    bottom-up, the root last); ``world`` the ranks a unit is sharded over (1: NO_SHARD). Per unit (torch/distributed/fsdp/_init_utils.py ``_init_param_handle_from_module``):

    * ``_move_module_to_device`` (or ``param_init_fn``'s ``to_empty`` on the meta-device ranks) puts each of the
      unit's parameters on the GPU, whole;
    * ``sync_module_states`` (with more than one process, whatever the sharding): ``_sync_params_and_buffers`` ->
      ``dist._broadcast_coalesced`` flattens them into buckets of ``PARAM_BROADCAST_BUCKET_SIZE``, at most two
      alive at once (comm.cpp ``broadcast_coalesced``);
    * ``FlatParamHandle`` flattens the parameters into one tensor (``flatten_tensors``: ``torch.cat``) and the
      originals are dropped (the module's parameters become views of the flat one);
    * ``FlatParamHandle.shard`` clones this rank's chunk (``_get_shard``: ``chunk.clone()``, padded) and frees
      the unsharded storage; with one shard (NO_SHARD) the flat tensor itself stays;
    * ``CPUOffload(offload_params=True)``: ``_init_param_handle_from_params`` then moves the shard to the CPU
      (``handle.flat_param_to(cpu_device)``): the unit still passed through the GPU whole.

    The shards stay (keys ``("P", unit)``); every transient is freed into the compute stream's pool, where it
    stays cached into training (nothing calls ``empty_cache``).

    ``buffers`` (issue 17): per unit (empty: none), the bytes of each buffer its module holds outside nested units
    (an old transformers' per-layer rotary caches, advisor.memory.buffers). ``_move_module_to_device`` moves them
    with the parameters (``_move_states_to_device`` chains params, then buffers), ``sync_module_states``
    broadcasts them too (``_sync_module_params_and_buffers``: a dtype group of their own in take_tensors), and they
    stay whole on the GPU (keys ``("B", unit, i)``): FSDP flattens and shards parameters only.

    ``nccl`` (issue 17, helper D): the broadcast runs on NCCL (a GPU run), whose buckets cannot be reused before
    the unit's end: ProcessGroupNCCL records each collective's input on its NCCL stream
    (torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp ``collective``: ``recordStream(input.storage().data_ptr(),
    ncclStream)`` unless TORCH_NCCL_AVOID_RECORD_STREAMS, torch 2.2 ... 2.13), so when comm.cpp's ``BroadcastWork``
    drops a bucket, CUDACachingAllocator ``free`` parks its block behind an event on that stream
    (``insert_events``) and ``malloc`` only takes it back once ``process_events`` sees the event completed. The
    flattened copy and the shard are allocated microseconds after the broadcast is launched, long before it
    completes; the next unit's first host-to-device copy (a pageable ``.to(device)``: cudaStreamSynchronize on the
    compute stream, which waited on the broadcast) is the first point where it has. So the buckets are freed at
    the unit's end here. False: the order a gloo (CPU) run makes, freed at once
    (benchmarks/fsdp_wrap_sequence.py).

    ``loaded_per_layer`` (issue 17, helper P; empty: none): one decoder layer's QLoRA QuantState tensors (bytes
    each, :func:`qlora_quant_state_tensors`) when they come to the GPU with the layer's unit rather than before the
    wrap (advisor.stacks.quant_states_moved_at_wrap: PEFT < 0.12 moved them to the CPU with the layer;
    ``_move_module_to_device`` -> bitsandbytes ``Params4bit.to`` brings each back): allocated (keys ``("L", u,
    i)``, kept) just before the unit's parameters, for the last unit of each of the ``layers`` groups (a layer's
    adapter units, then the layer: :func:`_fsdp_units`). ``Params4bit.to`` interleaves them linear by linear with
    the packed data; here the unit's QuantStates come first, together."""
    out: list[tuple[str, object, int]] = []
    group = (len(units) - 1) // layers if loaded_per_layer and layers else 0
    for u, tensors in enumerate(units):
        total = sum(tensors)
        bufs = tuple(buffers[u]) if buffers else ()
        if group and u < group * layers and u % group == group - 1:
            out += [("a", ("L", u, i), n) for i, n in enumerate(loaded_per_layer)]
        out += [("a", ("init", u, i), n) for i, n in enumerate(tensors)]
        out += [("a", ("B", u, i), n) for i, n in enumerate(bufs)]
        parked: list[tuple[str, object, int]] = []
        if sync_module_states:
            buckets = _broadcast_buckets(tensors) + _broadcast_buckets(bufs)
            for b, n in enumerate(buckets):
                if b >= FSDP_BROADCAST_IN_FLIGHT:
                    (parked if nccl else out).append(("f", ("bcast", u, b - FSDP_BROADCAST_IN_FLIGHT), 0))
                out.append(("a", ("bcast", u, b), n))
            (parked if nccl else out).extend(
                ("f", ("bcast", u, b), 0) for b in range(max(len(buckets) - FSDP_BROADCAST_IN_FLIGHT, 0),
                                                          len(buckets)))
        if world > 1:
            # The originals are freed after the shard exists: _init_param_handle_from_module keeps them in its
            # ``managed_params`` list until _init_param_handle_from_params (FlatParamHandle(...), then
            # handle.shard()) has returned (torch/distributed/fsdp/_init_utils.py, torch 2.2 ... 2.13). Recorded:
            # benchmarks/fsdp_wrap_sequence.py (flat copy, shard, flat copy freed, the originals freed).
            out.append(("a", ("flat", u), total))
            out.append(("a", ("P", u), -(-total // world)))
            out.append(("f", ("flat", u), 0))
            out += [("f", ("init", u, i), 0) for i in range(len(tensors))]
        else:
            out.append(("a", ("P", u), total))
            out += [("f", ("init", u, i), 0) for i in range(len(tensors))]
        if offload_params:
            out.append(("f", ("P", u), 0))
        out += parked
    return out


def fsdp_lazy_init_events(units: list[tuple[int, ...]], world: int) -> list[tuple[str, object, int]]:
    """What FSDP (v1)'s lazy init allocates on the compute stream at the first forward (bytes per GPU), ``units`` as
    in :func:`fsdp_init_events` (the root last): ``_lazy_init`` -> ``_share_state_and_init_handle_attrs`` calls
    ``handle.init_flat_param_attributes()`` for the root's handle, then for every other state's
    (``_all_fsdp_states``: pre-order, the root first), and with a sharded strategy that allocates the unit's
    padded unsharded flat parameter (``flat_param._full_param_padded = torch.empty(flat_param.numel() *
    world_size, device=self.device)``) and frees its storage at once (``_free_storage``): the all-gather later
    resizes that storage back, under the unshard stream (torch/distributed/fsdp/_flat_param.py,
    ``FlatParamHandle.init_flat_param_attributes``; _runtime_utils.py ``_lazy_init``; torch 2.2 ... 2.13; with
    ``CPUOffload(offload_params=True)`` too: the padded tensor is on ``self.device``, the GPU). So each unit's
    whole size passes through the compute stream's pool once, one after the other (recorded on the CPU stand-in,
    benchmarks/fsdp_qlora_step.py: the root's 500 MiB, then each unit's, allocated and freed before the first
    all-gather). Parameter MixedPrecision adds the same-sized full-precision twin and a low-precision shard, each
    freed at once (not listed: none is larger than the unit's full-precision size, which the entry gives)."""
    if world < 2 or not units:
        return []
    order = [len(units) - 1] + list(range(len(units) - 1))
    out: list[tuple[str, object, int]] = []
    for u in order:
        full = -(-sum(units[u]) // world) * world
        out += [("a", ("lazy", u), full), ("f", ("lazy", u), 0)]
    return out


@lru_cache(maxsize=1024)
@computed("allocator", asdict, lambda d: AllocatorStats(**d))    # kept across runs (datacache)
def _fsdp_default_pool_stats(init: tuple[tuple[int, ...], ...], world: int, sync: bool, offload: bool,
                             outside: tuple[int, ...], per_layer: tuple[int, ...], layers: int,
                             arch, trace_training, mode: str, ckpt: str, dyn: StateLayout,
                             held_fp32: int = 0, blas_workspace: int = 0,
                             loaded: tuple[int, ...] = (), capacity: int | None = None,
                             unit_buffers: tuple = (), cast_buffers: tuple = (),
                             loaded_at_wrap: bool = False) -> AllocatorStats:
    """The compute stream's pool of an FSDP run: what loading left on the GPU (``loaded``, per layer: see
    :func:`qlora_quant_state_tensors`), the wrapping (:func:`fsdp_init_events`, with each unit's ``unit_buffers``),
    the buffers' cast at the first forward (``cast_buffers``: their bytes after it, per unit, or empty: not cast),
    the other states, then the step's churn, in one sequence: the step reuses what the wrapping left cached.
    ``capacity``: the bytes cudaMalloc can give this pool (see :func:`simulate`). ``loaded_at_wrap`` (issue 17,
    helper P): ``loaded`` comes to the GPU unit by unit at the wrap, not before it (see :func:`fsdp_init_events`)."""
    if loaded_at_wrap:
        events = fsdp_init_events([list(u) for u in init], world, sync, offload, unit_buffers,
                                  loaded_per_layer=loaded, layers=layers)
    else:
        events = loaded_events(loaded, layers)
        events += fsdp_init_events([list(u) for u in init], world, sync, offload, unit_buffers)
    # issue 17: MixedPrecision(buffer_dtype) casts every buffer at the root's lazy init, one after the other
    # (_runtime_utils._cast_buffers_to_dtype_and_device: buffer.data = buffer.to(dtype)): the new one, then the old freed
    for u, bufs in enumerate(cast_buffers):
        for i, n in enumerate(bufs):
            events += [("a", ("B16", u, i), n), ("f", ("B", u, i), 0)]
    events += [("a", ("Q", i), n) for i, n in enumerate(outside)]
    events += [("a", ("Q", l, i), n) for l in range(layers) for i, n in enumerate(per_layer)]
    events += fsdp_lazy_init_events([list(u) for u in init], world)
    segs, leftovers, held = _activation_segments(arch, trace_training, mode, ckpt, layers)
    events += churn_events(segs, leftovers, held, layers, dyn, held_fp32=held_fp32, blas_workspace=blas_workspace)
    return simulate(events, capacity=capacity)


@lru_cache(maxsize=1024)
@computed("allocator", asdict, lambda d: AllocatorStats(**d))    # kept across runs (datacache)
def _fsdp_init_stats(init: tuple[tuple[int, ...], ...], world: int, sync: bool, offload: bool,
                     loaded: tuple[int, ...] = (), layers: int = 0, unit_buffers: tuple = (),
                     loaded_at_wrap: bool = False) -> AllocatorStats:
    """The FSDP wrapping alone (:func:`fsdp_init_events`, with each unit's ``unit_buffers``) after what loading
    left (``loaded``; ``loaded_at_wrap``: brought to the GPU unit by unit during it instead, issue 17, helper P):
    its own peak of tensor bytes."""
    if loaded_at_wrap:
        return simulate(fsdp_init_events([list(u) for u in init], world, sync, offload, unit_buffers,
                                         loaded_per_layer=loaded, layers=layers))
    return simulate(loaded_events(loaded, layers)
                    + fsdp_init_events([list(u) for u in init], world, sync, offload, unit_buffers))


def _fsdp_unit_buffers(arch, training, strategy, units) -> tuple[tuple, tuple]:
    """(per unit: the bytes of each buffer it holds when wrapped, per unit: their bytes once FSDP's MixedPrecision
    cast them at the first forward, empty where it does not) for the buffers an old transformers' decoder layers
    own (advisor.memory.buffers.rotary_cache_bytes: cos and sin, half each), held by the decoder layers' units
    only (their adapters' units come first in each layer's group, :func:`_fsdp_units`), and for transformers
    4.38's ``LlamaModel.causal_mask`` (advisor.memory.buffers.causal_mask_buffer_bytes), held by the root unit."""
    from .buffers import causal_mask_buffer_bytes, rotary_cache_bytes

    at_wrap, steady = rotary_cache_bytes(arch, training, strategy)
    mask = causal_mask_buffer_bytes(arch, training)       # the model's own buffer: the root unit's (wrapped last)
    if not at_wrap and not mask:
        return (), ()
    group = (len(units) - 1) // max(arch.num_layers, 1)     # a layer's adapter units and the layer itself
    layer_unit = {g * group + group - 1 for g in range(arch.num_layers)} if at_wrap else set()
    root = {len(units) - 1: (mask,)} if mask else {}
    wrap = tuple((at_wrap // 2, at_wrap - at_wrap // 2) if u in layer_unit else root.get(u, ())
                 for u in range(len(units)))
    cast = () if steady == at_wrap else tuple(      # the bool mask is not floating: FSDP does not cast it
        (steady // 2, steady - steady // 2) if u in layer_unit else () for u in range(len(units)))
    return wrap, cast


def loaded_events(loaded: tuple[int, ...], layers: int) -> list[tuple[str, object, int]]:
    """Allocations of the tensors loading leaves on the GPU before the engine wraps the model (``loaded``: one
    decoder layer's, bytes each), layer after layer; never freed."""
    return [("a", ("L", l, i), n) for l in range(layers) for i, n in enumerate(loaded)]


def qlora_quant_state_tensors(arch, double_quant: bool, total: int) -> tuple[int, ...]:
    """One decoder layer's bitsandbytes quantization state as the tensors ``quantize_4bit`` leaves on the GPU
    (bytes each), per quantized linear: the absmax of every 64-block (uint8 with double quantization, fp32
    without) and the rest of its QuantState (the nested fp32 absmax per 256 absmax, the offset, the code) as
    one block (bitsandbytes/functional.py ``quantize_4bit`` with ``compress_statistics``: ``quantize_blockwise``
    of ``absmax - offset``; nn/modules.py ``Params4bit._quantize``). ``total``: the layer's quantization state
    in bytes (advisor.memory.model_states); the blocks sum to it. They are created when the weight is
    quantized, i.e. while the model loads, before any engine wraps it (transformers' quantize-on-load,
    Answer.AI fsdp_qlora ``load_and_quantize``), and stay there: Params4bit.to moves the quant_state along,
    FSDP shards only the packed data."""
    from ..param_count import linear_shapes

    sizes = [i * o for i, o, c in linear_shapes(arch).values() for _ in range(c)]
    n_all = sum(sizes)
    if not n_all or total <= 0:
        return ()
    out: list[int] = []
    for n in sizes:
        share = total * n // n_all
        absmax = min(n // 64 * (1 if double_quant else 4), share)
        out += [absmax] + ([share - absmax] if share > absmax else [])
    out[-1] += total - sum(out)
    return tuple(b for b in out if b > 0)


def _fsdp_adapter_units(arch, training, weight_bytes: float) -> tuple[tuple[int, ...], ...]:
    """One decoder layer's LoRA adapters as FSDP wraps them: each ``lora_A`` / ``lora_B`` linear a unit of its
    own (bytes of its weight), in module order (each targeted linear's A then B). The auto-wrap policies of
    LoRA runs wrap every leaf module whose weight requires grad (PEFT ``fsdp_auto_wrap_policy``
    ``lambda_policy_fn``, which accelerate and HF Trainer use; Answer.AI fsdp_qlora train.py
    ``get_wrapping_policy``), and FSDP wraps children before their parent (torch/distributed/fsdp/wrap.py
    ``_recursive_wrap``), so a layer's adapters are wrapped just before the layer. Empty where the adapters are
    not per-linear ``nn.Linear`` pairs dsadvise can list (traced models, PEFT's MoE parameter adapters, adapters
    outside the decoder layers) or do not add up to the trainable count: they are then left out."""
    from ..param_count import (ALL_LINEAR, peft_moe_params, all_linear_excludes, linear_shapes, lora_head_elements,
                               lora_targets_head, lora_trainable_parameters, native_linear_names)

    if training.method not in ("lora", "qlora") or arch.traced or peft_moe_params(arch) or arch.dense_layers:
        return ()
    rank, targets = training.lora.rank, tuple(training.lora.target_modules)
    shapes = linear_shapes(arch)
    native = native_linear_names(arch.family)
    chosen: set[str] = set()
    for t in targets:
        if t == ALL_LINEAR:
            chosen.update(n for n in shapes if n not in all_linear_excludes(arch))
        elif t in shapes:
            chosen.add(t)
        elif t in native:
            chosen.update(native[t])
    units = [(int(e * weight_bytes),) for name, (i, o, c) in shapes.items() if name in chosen
             for _ in range(c) for e in (i * rank, rank * o)]
    per_layer = sum(rank * (i + o) * c for name, (i, o, c) in shapes.items() if name in chosen)
    # issue 17 (L): an lm_head adapter (outside the decoder layers) is not among these units
    head = lora_head_elements(arch, rank) if lora_targets_head(targets) else 0
    if not units or per_layer * arch.num_layers != lora_trainable_parameters(arch, rank, targets) - head:
        return ()
    return tuple(units)


def _fsdp_units(arch, training, strategy) -> tuple[tuple[int, ...], ...]:
    """The unsharded bytes of each FSDP unit's parameter tensors in wrap order: every decoder layer (LoRA/QLoRA:
    its adapters' units first, :func:`_fsdp_adapter_units`), then the root (embeddings, lm_head, final norm).
    Weights as loaded: 16-bit under bf16/fp16/pure-bf16 with a LoRA/QLoRA base (NF4 for QLoRA's decoder
    linears), the weight dtype of full fine-tuning otherwise (advisor.memory.bytes_per_param)."""
    from ..param_count import linear_shapes
    from .bytes_per_param import fp32_lora_base, state_bytes

    sb = state_bytes(training, strategy)
    layer_t, _, emb, head, final = _tensor_elements(arch)
    n_lin = len(linear_shapes(arch))
    if training.method in ("lora", "qlora", "freeze"):
        # QLoRA: the packed 4-bit data (half a byte per weight) is what FSDP flattens and shards; the
        # quantization state stays whole on the module (see _fsdp_allocation).
        lin_b = 0.5 if training.method == "qlora" else sb.frozen_weight
        other_b = 4 if training.precision == "fp32" or fp32_lora_base(training, strategy) else 2
    else:
        lin_b = other_b = sb.weight
    layer = tuple(int(e * (lin_b if i < n_lin else other_b)) for i, e in enumerate(layer_t) if e)
    # the root's own parameters in module order, as FSDP flattens them (``_get_orig_params``: module.parameters()):
    # model.embed_tokens, model.norm, then lm_head (recorded: benchmarks/fsdp_qlora_wrap.py); the broadcast
    # buckets follow that order ([embed] alone, a view; [norm, lm_head] flattened)
    root = tuple(int(e * other_b) for e in (emb, final, head) if e)
    adapters = _fsdp_adapter_units(arch, training, sb.weight)
    return tuple([*adapters, layer] * arch.num_layers + [root])


@lru_cache(maxsize=4096)
def _persistent_stats(outside: tuple[int, ...], per_layer: tuple[int, ...], layers: int,
                      expandable: bool) -> AllocatorStats:
    """The model states allocated before the first step, alone (nothing is freed among them)."""
    events = [("a", ("P", i), n) for i, n in enumerate(outside)]
    events += [("a", ("P", l, i), n) for l in range(layers) for i, n in enumerate(per_layer)]
    return simulate(events, expandable_segments=expandable)


@lru_cache(maxsize=4096)
@computed("allocator", asdict, lambda d: AllocatorStats(**d))    # kept across runs (datacache)
def _churn_stats(arch, trace_training, mode: str, ckpt: str, layers: int, layout: StateLayout,
                 expandable: bool, capacity: int | None = None, held_fp32: int = 0,
                 blas_workspace: int = 0) -> AllocatorStats:
    """The step's allocations and frees (activations, gradients formed in backward, lazy optimizer states,
    step temporaries) from an empty pool (``capacity``: what is left for them, see :func:`simulate`;
    ``held_fp32``: accelerate's fp32 logits, see :func:`churn_events`)."""
    segs, leftovers, held = _activation_segments(arch, trace_training, mode, ckpt, layers)
    return simulate(churn_events(segs, leftovers, held, layers, layout, held_fp32=held_fp32,
                                 blas_workspace=blas_workspace),
                    expandable_segments=expandable,
                    capacity=None if expandable else capacity)


def oom_retry_reserved(limit: int, allocated: int) -> int:
    """max_memory_reserved (bytes per GPU) of a step that is over ``limit`` with every cached block kept and
    completes only through the caching allocator's OOM retry (both paths of :func:`gpu_allocation`): ``limit``
    itself (or ``allocated``, were that above it).

    CUDACachingAllocator ``malloc`` (c10/cuda/CUDACachingAllocator.cpp): ``alloc_block`` fails ->
    ``release_cached_blocks`` -> ``release_blocks`` frees every free block with no ``prev``/``next`` (an unsplit
    cached segment) -> ``alloc_block`` again (``release_available_cached_blocks`` first returns false under the
    default ``max_split_size``). The retry comes at the first cudaMalloc that fails, with reserved anywhere
    between the true free memory less that segment (up to the largest tensor's size, the fp32 logits here) and
    the true free memory, which ``limit`` (the card less the CUDA context and NCCL) only estimates: a replay
    capped at ``limit`` reserves what that exact capacity leaves and can be well below what the run reaches
    (Llama-2-7B QLoRA, batch 12 x 2048 on one 26.49 GiB card: 24.47 GiB capped, limit 25.82 GiB). Only the limit
    bounds max_memory_reserved from above (Answer.AI's Llama-2-7B / Mistral-7B QLoRA + CPU offload at 12 x 2048
    on RTX 4090s under FSDP: 25.2 / 25.8 GiB simulated with every cached block kept, 22.38 / 22.54 measured,
    22.78 the limit), so that bound is the estimate."""
    return max(limit, allocated)


def gpu_allocation(arch, training, strategy, hw, ms, buffers: dict[str, int], formed_in_backward: bool,
                   mode: str, tensor_bytes: int, limit: int | None = None, held_fp32: int = 0) -> GpuAllocation:
    """max_memory_allocated and max_memory_reserved (bytes per GPU) for an estimate whose tensors peak at
    ``tensor_bytes``: the caching allocator simulated over the step's allocation sequence (two steps when
    the first allocates torch optimizers' states), its rounding and cached-block overheads added on top.
    When ``tensor_bytes`` alone exceed ``limit`` (the bytes the allocator can have) nothing is simulated
    and ``simulated_layers`` is empty. ``held_fp32``: bytes accelerate's fp32 copy of the logits adds to the
    16-bit logits the loop would hold (:func:`advisor.memory.core.accelerate_fp32_logits`), placed in the
    sequence where accelerate allocates it (:func:`churn_events`)."""
    from .activations import allocation_key

    if limit is not None and tensor_bytes > limit:
        # the tensors alone exceed what the allocator may reserve: the verdict cannot change, skip the work
        return GpuAllocation(allocated=tensor_bytes, reserved=tensor_bytes, rounding=0, cached=0,
                             simulated_layers=())
    trace_training, ckpt = allocation_key(arch, training)
    expandable = training.expandable_segments
    ws = blas_workspace_bytes(hw)
    n = arch.num_layers
    # Model states allocated before the first step fill their own segments (nothing among them is freed);
    # the step's churn then runs in segments of its own. Simulating the two apart ignores the step's use of
    # the persistent segments' leftover space (at most a 20 MiB or 2 MiB segment's tail each), which can
    # only make the churn need more: an upper bound that lets every strategy sharing a trace and a dynamic
    # layout share one simulation.
    full = state_layout(arch, training, strategy, hw, ms, buffers, formed_in_backward, n)
    dyn = replace(full, persistent_outside=(), persistent_layer=())
    if _fsdp_init_modelled(training, strategy) and not expandable:
        return _fsdp_allocation(arch, training, strategy, hw, ms, buffers, formed_in_backward, n, dyn,
                                trace_training, mode, ckpt, tensor_bytes, held_fp32, ws, limit)
    ps = _persistent_stats(full.persistent_outside, full.persistent_layer, n, expandable)
    # The whole depth is simulated: extrapolating from fewer layers misses patterns that repeat every 12 or
    # more layers and was up to 4 % of the total low (benchmarks/allocator_extrapolation.py). The layers'
    # allocation sequence itself is built from a 4-layer trace (activations.allocation_trace).
    st = _churn_stats(arch, trace_training, mode, ckpt, n, dyn, expandable, held_fp32=held_fp32, blas_workspace=ws)
    # ZeRO-3's all-gather stream pool (buffers.ZERO3_GATHER_POOL_CACHED): its cached free blocks are counted among
    # the buffers (so in tensor_bytes) but are reserved only, never allocated; they take their share of the card
    pool = buffers.get(ZERO3_GATHER_POOL_CACHED, 0)
    retried = False
    if limit is not None and ps.peak_reserved + pool + st.peak_reserved > limit and not expandable:
        # Over the card with every cached block kept: the real allocator then releases its unsplit cached
        # segments and retries cudaMalloc. Replay with the capacity the step has, to know whether the step
        # completes that way (else the estimate stays over the card: out of memory); reserved is then the limit
        # (oom_retry_reserved), not the replay's own peak.
        capped = _churn_stats(arch, trace_training, mode, ckpt, n, dyn, expandable, limit - ps.peak_reserved - pool,
                              held_fp32=held_fp32, blas_workspace=ws)
        if not capped.oom:
            st, retried = capped, True
    rounding = st.peak_allocated - st.peak_requested
    cached = st.peak_reserved - st.peak_allocated
    rounding += ps.peak_allocated - ps.peak_requested
    cached += ps.peak_reserved - ps.peak_allocated
    rounding, cached = max(rounding, 0), max(cached, 0)
    allocated = tensor_bytes - pool + rounding + 2 * ws
    if retried:
        # the capped replay says the step completes; its own reserved peak is not the bound (oom_retry_reserved)
        cached = oom_retry_reserved(limit, allocated + pool) - allocated - pool
    return GpuAllocation(allocated=allocated, reserved=allocated + pool + cached, rounding=rounding, cached=cached,
                         simulated_layers=(n,), oom_retries=retried, workspaces=2 * ws, stream_pool=pool)


@lru_cache(maxsize=1024)
def _unshard_pool_stats(held: tuple[int, ...], pending: tuple[int, ...]) -> AllocatorStats:
    """A stream's pool of blocks held at the peak, and blocks freed but not yet reusable (pending their
    record_stream event): allocated, then freed, so they count in reserved only. The post-backward stream's
    gradient shards, and the unshard stream of a strategy that does not reshard (SHARD_GRAD_OP); the resharding
    ones follow the engine's order (:func:`fsdp_stream_events`)."""
    events = [("a", ("G", i), v) for i, v in enumerate(held)]
    events += [("a", ("pending", i), v) for i, v in enumerate(pending)]
    events += [("f", ("pending", i), 0) for i in range(len(pending))]
    return simulate(events)


# torch/distributed/fsdp/_limiter_utils.py _FreeEventQueue._max_num_inflight_all_gathers (torch 2.0 ... 2.13)
FSDP_INFLIGHT_ALL_GATHERS = 2


def fsdp_stream_events(units: tuple[int, ...], layer_units: tuple[int, ...], world: int, copies: bool,
                       recompute: bool, steps: int = 2) -> tuple[list, list]:
    """The allocation sequences of FSDP (v1)'s unshard stream and pre-unshard stream (bytes per GPU) over ``steps``
    training steps of a FULL_SHARD / HYBRID_SHARD model with ``limit_all_gathers=True`` and BACKWARD_PRE prefetch
    (the defaults; Answer.AI train.py, accelerate). ``units``: each unit's gathered bytes in wrap order (a decoder
    layer's LoRA adapter units, then the layer, ..., the root last: :func:`_fsdp_units`); ``layer_units``: for each
    decoder layer, the number of units it has (its adapters + itself). ``copies``: the pre-unshard stream makes a
    copy of each shard first (CPU offload, or MixedPrecision over fp32 shards); ``recompute``: activation
    checkpointing re-runs each layer's forward in its backward. From the engine (torch/distributed/fsdp, read at
    torch 2.13; the 2.2 of the Answer.AI runs has the same functions since the 2.0 refactor):

    * ``_runtime_utils._unshard``: ``handle.pre_unshard()`` under the pre-unshard stream (``flat_param_to(device)``
      of a CPU-offloaded shard, or ``_use_low_precision_shard``: a copy of the shard, _flat_param.py
      ``pre_unshard``), then the rate limiter (``_free_event_queue.dequeue_if_needed()``: with 2 or more free
      events queued, ``synchronize()`` on the oldest), then under the unshard stream the padded unsharded
      parameter (``_alloc_padded_unsharded_flat_param``) and the all-gather; the copy is dropped once gathered,
      recorded on the unshard stream (``_all_gather_flat_param``: ``_no_dispatch_record_stream``; ProcessGroupNCCL
      records a collective's input on its NCCL stream too), so CUDACachingAllocator parks its block until the
      all-gather has completed (``insert_events`` / ``process_events``);
    * ``_reshard``: ``_free_unsharded_flat_param`` records the gathered block on the compute stream and frees it
      (parked until the compute stream passes that point), and enqueues a free event recorded there, one per
      freeing reshard of ANY unit, LoRA adapter units included (one queue shared by all units: ``_lazy_init``);
    * forward: the root is gathered first and kept (``_post_forward_reshard`` frees no root); each decoder layer's
      unit is gathered at its pre-forward, then each of its adapter units (gathered, freed after its forward),
      then the layer is freed at its post-forward;
    * backward: ``_pre_backward_hook`` gathers the unit unless prefetched, then prefetches the unit before it in
      post-forward order (``_exec_order_utils.get_handle_to_backward_prefetch``): the root prefetches the last
      layer, a layer its last adapter, an adapter the one before it, the first adapter the previous layer; with
      ``recompute`` the layer's forward runs again first (its adapters gathered and freed again, but the prefetched
      one, whose handle is in BACKWARD_PRE: ``_pre_forward``/``_post_forward`` skip it); each adapter is
      freed after its backward (``_post_backward_reshard``), the layer at the end of its backward (the
      reshard-only hook of a frozen unit, ``_register_post_backward_reshard_only_hook``), the root last.

    A block parked behind an event is released at the latest when the CPU synchronizes on a later free event (the
    compute stream is in order, and a unit's compute follows its own all-gather, NCCL's stream being in order too):
    here exactly then (a faster GPU only releases sooner), and at the end of each step, where the training loop
    reads the loss (``loss.item()``: a synchronization with the compute stream; under CPU offload FSDP synchronizes
    itself at the end of the backward, ``_post_backward_final_callback``: ``current_stream().synchronize()``,
    _runtime_utils.py l.1107-1111 at 2.13). Returns (unshard stream's events, pre-unshard stream's events)."""
    unshard: list = []
    pre: list = []
    n = len(units)
    root = n - 1
    shard = [-(-b // world) for b in units]
    full = [s * world for s in shard]
    layers: list[tuple[int, list[int]]] = []
    at = 0
    for k in layer_units:
        layers.append((at + k - 1, list(range(at, at + k - 1))))
        at += k
    post_order = [u for layer, ads in layers for u in (*ads, layer)] + [root]
    before = {u: post_order[i - 1] for i, u in enumerate(post_order) if i > 0}
    st = {"t": 0, "gid": 0}
    gathered: dict[int, object] = {}
    gathered_at: dict[int, int] = {}
    parked_u: list = []          # (time freed, key)
    parked_c: list = []          # (time its all-gather was issued, key)
    queue: list = []             # (time recorded, time of the freed unit's all-gather)

    def release(t_free: int, t_gather: int) -> None:
        for lst, out, limit in ((parked_u, unshard, t_free), (parked_c, pre, t_gather)):
            keep = [(t, k) for t, k in lst if t > limit]
            out += [("f", k, 0) for t, k in lst if t <= limit]
            lst[:] = keep

    def gather(u: int) -> None:
        if u in gathered:
            return
        st["t"] += 1
        st["gid"] += 1
        copy = ("copy", st["gid"])
        if copies:
            pre.append(("a", copy, shard[u]))
        if len(queue) >= FSDP_INFLIGHT_ALL_GATHERS:
            release(*queue.pop(0))
        key = ("gathered", u, st["gid"])
        unshard.append(("a", key, full[u]))
        gathered[u], gathered_at[u] = key, st["t"]
        if copies:
            parked_c.append((st["t"], copy))

    def free(u: int) -> None:
        st["t"] += 1
        parked_u.append((st["t"], gathered.pop(u)))
        queue.append((st["t"], gathered_at[u]))

    for _ in range(steps):
        gather(root)
        for layer, ads in layers:
            gather(layer)
            for a in ads:
                gather(a)
                free(a)
            free(layer)
        if layers:
            gather(before[root])                            # the root's pre-backward prefetch
        for layer, ads in reversed(layers):
            gather(layer)
            if ads:
                gather(before[layer])                       # the layer's last adapter
            if recompute:
                # the recomputed forward runs each adapter's pre/post-forward (gathered, freed) except the one the
                # layer prefetched, whose handle is in BACKWARD_PRE and skips both (_pre_forward / _post_forward:
                # "skip ... logic in the recomputed forward"), staying gathered into its backward
                for a in ads[:-1]:
                    gather(a)
                    free(a)
            for a in reversed(ads):
                gather(a)
                if a in before:
                    gather(before[a])
                free(a)
            if not ads and layer in before:
                gather(before[layer])
            free(layer)
        free(root)
        # the loop's sync between steps (train.py ``loss.item()``; HF Trainer's logging_nan_inf_filter test of the
        # step's loss): every parked block is released; the queue keeps its (completed) events
        release(st["t"], st["t"])
    return unshard, pre


@lru_cache(maxsize=256)
def _fsdp_stream_stats(units: tuple[int, ...], layer_units: tuple[int, ...], world: int, copies: bool,
                       recompute: bool) -> tuple[AllocatorStats, AllocatorStats]:
    """The peaks of the unshard stream's and the pre-unshard stream's pools (:func:`fsdp_stream_events`), each a
    pool of its own (CUDACachingAllocator keys free blocks by stream)."""
    u, c = fsdp_stream_events(units, layer_units, world, copies, recompute)
    return simulate(u), simulate(c)


def _fsdp_gathered_units(arch, training, strategy) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Each FSDP unit's bytes once all-gathered, in wrap order (:func:`_fsdp_units`: adapters, layer, ..., root),
    and the number of units of each decoder layer, in the gathered dtype the buffers count
    (advisor.memory.buffers: the root in the 16-bit param dtype or fp32, each layer's
    ``fsdp_gathered_layer_bytes``, the adapters at the same bytes per element)."""
    from ..param_count import count_parameters
    from .buffers import fsdp_gathered_layer_bytes

    counts = count_parameters(arch)
    gathered_b = 2 if training.precision in ("fp16", "bf16", "pure-bf16") else 4
    adapters = tuple(u[0] for u in _fsdp_adapter_units(arch, training, gathered_b))
    layer = fsdp_gathered_layer_bytes(arch, counts, training)
    root = (counts.embedding + counts.lm_head + counts.final) * gathered_b
    n = arch.num_layers
    return (*adapters, layer) * n + (root,), (len(adapters) + 1,) * n


def _fsdp_init_modelled(training, strategy) -> bool:
    """FSDP (v1): the wrapping's transients and the unshard stream's pool are simulated
    (:func:`_fsdp_allocation`); with CPU offload too (each unit passes through the GPU before its shard moves to
    the CPU). FSDP2 (``fully_shard``) shards per parameter: not modelled there."""
    return strategy.backend == "fsdp" and getattr(strategy, "fsdp_version", 1) in (None, 1)


# The buffers FSDP's all-gathers allocate: in its unshard stream (torch/distributed/fsdp/_runtime_utils.py
# ``_unshard``: ``with state._device_handle.stream(unshard_stream): handle.unshard()``), a pool of their own.
_UNSHARD_STREAM_BUFFERS = ("FSDP gathered",
                           # the pre-unshard stream's shard copies (buffers.py): a pool of its own as well
                           # (fsdp_stream_events simulates the two apart)
                           "FSDP shard copied")


def _fsdp_wrap_inputs(arch, training, strategy, hw, parameters: int):
    """What the FSDP (v1) wrapping of an estimate works on: its units (:func:`_fsdp_units`), whether it broadcasts
    (``sync_module_states``), offloads, what loading left on the GPU before it (per layer, bytes each), and the
    per-GPU parameter bytes (of ``parameters``) the shards do not hold."""
    from .model_states import fsdp_shard_degree

    n = arch.num_layers
    world = fsdp_shard_degree(strategy, hw)
    units = _fsdp_units(arch, training, strategy)
    # What of the per-GPU parameter bytes the shards do not hold (QLoRA's quantization state, kept whole on
    # every GPU, offload or not: advisor.memory.model_states), one block per layer, allocated after the wrapping.
    offload = strategy.offload_param != "none"
    unsharded = parameters - (0 if offload else sum(-(-sum(u) // world) for u in units))
    # issue 17 (G3): QLoRA's quantization state exists from loading on, before the wrapping (in bitsandbytes'
    # own tensors: qlora_quant_state_tensors), so the wrapping's cached blocks cannot hold it.
    loaded: tuple[int, ...] = ()
    if training.method == "qlora" and unsharded > n:
        loaded = qlora_quant_state_tensors(arch, training.double_quant, unsharded // n)
    sync = hw.world_size > 1        # rendered with fsdp_cpu_ram_efficient_loading: sync_module_states
    return units, sync, offload, loaded, unsharded


def fsdp_after_wrap(arch, training, strategy, hw, parameters: int) -> AllocatorStats | None:
    """The compute stream's allocator right after FSDP (v1) wraps the model (bytes per GPU; None where the wrapping
    is not modelled): what loading left, then :func:`fsdp_init_events`. Its ``peak_reserved`` is what
    ``torch.cuda.memory_reserved()`` reads after ``FSDP(...)`` returns (segments are only released by
    ``empty_cache``), e.g. Answer.AI fsdp_qlora's ``reserved_after_model_wrap``. ``parameters``: the estimate's
    per-GPU parameter bytes (``per_gpu.parameters``)."""
    from .model_states import fsdp_shard_degree

    if not _fsdp_init_modelled(training, strategy) or training.expandable_segments:
        return None
    units, sync, offload, loaded, _ = _fsdp_wrap_inputs(arch, training, strategy, hw, parameters)
    unit_buffers, _ = _fsdp_unit_buffers(arch, training, strategy, units)      # issue 17 (helper T)
    # issue 17 (helper P): PEFT < 0.12 -> the busier of the two QuantState orders, as in _fsdp_allocation
    orders = (False, True) if loaded and quant_states_moved_at_wrap(training.transformers_version) else (False,)
    return max((_fsdp_init_stats(units, fsdp_shard_degree(strategy, hw), sync, offload, loaded, arch.num_layers,
                                 unit_buffers, loaded_at_wrap=w) for w in orders), key=lambda s: s.peak_reserved)


def _post_backward_grad_shards(arch, training, strategy, hw, ms, world: int) -> tuple[int, ...]:
    """The sharded gradients FSDP (v1) keeps per unit (bytes each; empty where none): with a sharded strategy over
    2+ ranks and no parameter offload, ``_post_backward_hook`` runs the reduce-scatter under
    ``state._post_backward_stream`` and ``_get_reduce_scatter_tensors`` allocates the shard there
    (``new_sharded_grad = torch.empty_like(chunks[0])``), which ``_accumulate_sharded_grad`` keeps as
    ``_saved_grad_shard`` and ``_finalize_params`` makes the ``.grad`` (torch/distributed/fsdp/_runtime_utils.py,
    torch 2.2 ... 2.13): a pool of that stream's own (CUDACachingAllocator's free blocks are per stream), which no
    compute-stream block can serve. LoRA/QLoRA: one shard per adapter unit (:func:`_fsdp_adapter_units`); else one
    per decoder layer."""
    from .model_states import FSDP_NO_SYNC_GRADIENTS

    if strategy.fsdp_sharding not in ("FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD") or world < 2:
        return ()
    if strategy.offload_param != "none":
        # issue 17 (helper D): with CPUOffload(offload_params=True) the reduce-scattered shard is still allocated
        # on the GPU and kept: _accumulate_sharded_grad sets flat_param._saved_grad_shard = sharded_grad whatever
        # the offload, _offload_grad copies it into the pinned _cpu_grad (non_blocking, record_stream on the
        # post-backward stream), and only prepare_gradient_for_optim (the backward's final callback) deletes
        # _saved_grad_shard, making _cpu_grad the .grad (torch/distributed/fsdp/_runtime_utils.py, _flat_param.py;
        # torch 2.1 ... 2.13, 2.0 inline in _post_backward_hook). Its bytes per GPU: the CPU gradient's.
        sharded = ms.cpu_per_node.get("gradients", 0) // max(hw.gpus_per_node, 1)
    else:
        sharded = ms.gradients - ms.gpu_breakdown.get(FSDP_NO_SYNC_GRADIENTS, 0)
    n = max(arch.num_layers, 1)
    if sharded <= n:
        return ()
    per_layer = sharded // n
    shards = _adapter_unit_split(arch, training, per_layer)
    return (shards or (per_layer,)) * n


def _adapter_unit_split(arch, training, per_layer: int) -> tuple[int, ...]:
    """``per_layer`` bytes split over one decoder layer's LoRA adapter units (:func:`_fsdp_adapter_units`) in
    proportion to their sizes, the remainder on the last (empty where dsadvise cannot list the units)."""
    adapters = _fsdp_adapter_units(arch, training, 1.0)
    if not adapters:
        return ()
    elems = [u[0] for u in adapters]
    total = sum(elems)
    shards = [per_layer * e // total for e in elems]
    shards[-1] += per_layer - sum(shards)
    return tuple(shards)


def _fsdp_adapter_states(arch, training, strategy, dyn: StateLayout) -> StateLayout:
    """FSDP (v1) with LoRA/QLoRA: the torch optimizer's states one tensor per adapter unit's flat shard, not one
    block per layer. ``optimizer.step()``'s first call builds each state with ``torch.zeros_like(p)`` for every
    parameter it is given (torch/optim/adamw.py ``_init_group``: ``exp_avg``, ``exp_avg_sq``, torch 2.2 ... 2.13),
    and with ``use_orig_params=False`` those parameters are the units' FlatParameters, whose local shards are a
    unit's bytes over the ranks: under 1 MiB each for r64 adapters of a 7B-70B model, so CUDACachingAllocator
    serves them from its small pool (``get_pool``: size <= kSmallSize, 2 MiB segments), which no cached block of
    the wrapping (all large) can serve. Recorded on the CPU stand-in (benchmarks/fsdp_qlora_step.py): the first
    optimizer step adds ~10 MiB reserved per Llama-2-7B layer (two states of 12 shards, 4.25 MiB each) to what the
    wrap left, where per-layer blocks fitted in the wrap's cached blocks and added nothing.

    Issue 17 (helper A): the step's foreach temporaries likewise, one per shard. On CUDA torch's AdamW takes the
    foreach path by default (torch/optim/optimizer.py ``_default_to_fused_or_foreach``: foreach when every tensor
    is on a foreach device, CUDA; torch 2.2 the same), whose ``exp_avg_sq_sqrt = torch._foreach_sqrt(
    device_exp_avg_sqs)`` makes one tensor per parameter, all alive until the step ends (torch 2.13
    torch/optim/adam.py ``_multi_tensor_adam`` l.762/790, which AdamW runs; torch 2.2 torch/optim/adamw.py
    ``_multi_tensor_adamw``): small-pool blocks again, not one per layer. Recorded on the CPU stand-in with CUDA's
    foreach path forced (benchmarks/fsdp_qlora_step.py --foreach): the second optimizer step allocates the 12 shards'
    sizes (9 x 256 KiB + 3 x 688 KiB, 4.27 MiB) all at once, then frees them."""
    if strategy.backend != "fsdp" or not dyn.lazy_layer:
        return dyn
    split = [_adapter_unit_split(arch, training, b) for b in dyn.lazy_layer]
    if not all(split):
        return dyn
    temps = [_adapter_unit_split(arch, training, b) for b in dyn.step_temp_layer]
    if temps and all(temps):
        return replace(dyn, lazy_layer=tuple(x for part in split for x in part),
                       step_temp_layer=tuple(x for part in temps for x in part))
    return replace(dyn, lazy_layer=tuple(x for part in split for x in part))


def _fsdp_allocation(arch, training, strategy, hw, ms, buffers: dict[str, int], formed_in_backward: bool, n: int,
                     dyn: StateLayout, trace_training, mode: str, ckpt: str, tensor_bytes: int,
                     held_fp32: int = 0, ws: int = 0, limit: int | None = None) -> GpuAllocation:
    """max_memory_allocated / max_memory_reserved of an FSDP (v1) run (bytes per GPU), with two pools:

    * the compute stream's: the wrapping (:func:`fsdp_init_events`: whole units on the GPU, broadcast buckets,
      the flattened copy, the shard) leaves its transients cached, then the other states and the step's churn
      reuse them (``sync_module_states`` as dsadvise renders it: ``fsdp_cpu_ram_efficient_loading``);
    * the unshard stream's: the gathered units, which no compute-stream tensor can reuse.

    ``allocated`` is the larger of the step's tensors and the wrapping's own peak (whichever is later reset
    or not, ``max_memory_allocated`` has seen it unless the run calls ``reset_peak_memory_stats``).

    ``limit`` (bytes the allocator can have, as in :func:`gpu_allocation`): when the two pools' reserved peaks
    exceed it, the compute stream's sequence is replayed with the capacity the unshard pool leaves, releasing
    the unsplit cached segments and retrying where a cudaMalloc would fail (CUDACachingAllocator ``malloc``:
    ``alloc_block`` fails -> ``release_cached_blocks`` -> ``release_blocks`` frees every free block with no
    ``prev``/``next`` -> ``alloc_block`` again; ``release_available_cached_blocks`` returns false under the
    default ``max_split_size``). The unshard pool is kept at its own peak (its cached blocks are released
    too: an upper bound). ``reserved`` is then the limit itself (:func:`oom_retry_reserved`)."""
    from .model_states import fsdp_shard_degree

    world = fsdp_shard_degree(strategy, hw)
    gathered = {k: v for k, v in buffers.items() if k.startswith(_UNSHARD_STREAM_BUFFERS)}
    # issue 17 (helper T): the decoder layers' own buffers reach the GPU with their units (fsdp_init_events)
    others = {k: v for k, v in buffers.items() if k not in gathered and not k.startswith(_MODULE_BUFFERS)}
    pb_grads = _post_backward_grad_shards(arch, training, strategy, hw, ms, world)
    dyn = _fsdp_adapter_states(arch, training, strategy, dyn)          # issue 17 (helper D): the step
    on_gpu = pb_grads if strategy.offload_param == "none" else ()     # offload: the GPU copy of a CPU gradient
    ms_rest = replace(ms, parameters=0, gradients=ms.gradients - sum(on_gpu)) if on_gpu else replace(ms, parameters=0)
    rest = state_layout(arch, training, strategy, hw, ms_rest, others, formed_in_backward, n)
    units, sync, offload, loaded, unsharded = _fsdp_wrap_inputs(arch, training, strategy, hw, ms.parameters)
    unit_buffers, cast_buffers = _fsdp_unit_buffers(arch, training, strategy, units)
    per_layer = rest.persistent_layer + ((unsharded // n,) if unsharded > n and not loaded else ())
    # issue 17 (helper P): under PEFT < 0.12 the QuantStates come back to the GPU with their unit at the wrap on a
    # rank whose loading left them where PEFT moved them (the PEFT docs' stack: every rank), while a rank that kept
    # them (Answer.AI train.py's low_memory ranks > 0: setup_quantized_meta_for_peft patches QuantState.to away)
    # has them before the wrap: the busier of the two orders (dsadvise cannot tell the loaders apart).
    orders = (False, True) if loaded and quant_states_moved_at_wrap(training.transformers_version) else (False,)
    st, at_wrap = max(((_fsdp_default_pool_stats(units, world, sync, offload, rest.persistent_outside, per_layer, n,
                                                 arch, trace_training, mode, ckpt, dyn, held_fp32, ws, loaded,
                                                 unit_buffers=unit_buffers, cast_buffers=cast_buffers,
                                                 loaded_at_wrap=w), w) for w in orders),
                      key=lambda sw: sw[0].peak_reserved)
    # The unshard stream's pool. FSDP frees an unsharded unit with record_stream on the compute stream (flat_param.py
    # _free_unsharded_flat_param -> _no_dispatch_record_stream) and CUDACachingAllocator's free() returns such a
    # block to the pool only once that stream's event has completed (insert_events / process_events); the rate
    # limiter (limit_all_gathers: _runtime_utils._unshard synchronizes on the oldest of 2 queued free events) bounds
    # how long. Resharded units (FULL_SHARD / HYBRID_SHARD): issue 17 (helper A), the unshard stream's and the
    # pre-unshard stream's shard copies, each a pool of its own, simulated over the engine's order of all-gathers
    # and frees, LoRA adapter units included (fsdp_stream_events); formerly one pool of root + 2 layers + one layer
    # block pending (helper D), which a LoRA model's adapter units, whose frees fill the rate limiter's queue,
    # release sooner. Otherwise (SHARD_GRAD_OP: nothing resharded until the backward) the gathered units, held.
    if gathered and strategy.fsdp_sharding in ("FULL_SHARD", "HYBRID_SHARD") and world > 1:
        units_g, layer_units = _fsdp_gathered_units(arch, training, strategy)
        copies = any(k.startswith(_UNSHARD_STREAM_BUFFERS[1]) for k in gathered)
        gu, gc = _fsdp_stream_stats(units_g, layer_units, world, copies, ckpt == "full")
        gp = AllocatorStats(gu.peak_allocated + gc.peak_allocated, gu.peak_reserved + gc.peak_reserved,
                            gu.peak_requested + gc.peak_requested, gu.segments + gc.segments)
    else:
        gp = _unshard_pool_stats(tuple(gathered.values()), ())
    pb = _unshard_pool_stats(pb_grads, ())
    retried = False
    if limit is not None and st.peak_reserved + gp.peak_reserved + pb.peak_reserved > limit:
        # issue 17: over the card with every cached block kept, the real allocator frees its unsplit cached
        # segments and retries cudaMalloc (see the docstring); replayed with what the unshard pool leaves, to
        # know whether the step completes that way (else the estimate stays over the card: out of memory).
        capped = _fsdp_default_pool_stats(units, world, sync, offload, rest.persistent_outside, per_layer, n,
                                          arch, trace_training, mode, ckpt, dyn, held_fp32, ws, loaded,
                                          limit - gp.peak_reserved - pb.peak_reserved, unit_buffers=unit_buffers,
                                          cast_buffers=cast_buffers, loaded_at_wrap=at_wrap)
        # reserved is then the limit (oom_retry_reserved), as on the other engines' path
        retried = not capped.oom
    # The wrapping's peak of tensor bytes (its own sequence, shards included).
    init_peak = max(_fsdp_init_stats(units, world, sync, offload, loaded, n, unit_buffers,
                                     loaded_at_wrap=w).peak_requested for w in orders)
    rounding = (max(st.peak_allocated - st.peak_requested, 0) + max(gp.peak_allocated - gp.peak_requested, 0)
                + max(pb.peak_allocated - pb.peak_requested, 0))
    allocated = max(tensor_bytes, init_peak) + rounding + 2 * ws
    reserved = oom_retry_reserved(limit, allocated) if retried else max(
        st.peak_reserved + gp.peak_reserved + pb.peak_reserved, allocated)
    return GpuAllocation(allocated=allocated, reserved=reserved, rounding=allocated - tensor_bytes - 2 * ws,
                         cached=reserved - allocated, simulated_layers=(n,), oom_retries=retried,
                         workspaces=2 * ws)
