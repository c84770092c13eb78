"""ZeRO-3's gathered 16-bit parameters over one training step: DeepSpeed's parameter coordinator replayed (bytes).

What a ZeRO-3 rank holds gathered at once is decided by ``PartitionedParameterCoordinator`` (DeepSpeed
``runtime/zero/partitioned_param_coordinator.py``) from element counts only, once the first step has recorded the
module trace. Replayed here as DeepSpeed 0.13.3 does it (the release of the PEFT docs' 70B runs; line numbers of
that release):

* ``fetch_sub_module`` (l. 261), at every module's forward or backward hook, containers included: the module's own
  parameters are gathered in one ``all_gather_coalesced`` call and waited for; the trace queue is advanced past
  them; then the next parameters in the trace are prefetched in one call while the running count is below
  ``min(stage3_max_live_parameters - available, stage3_prefetch_bucket_size)`` (l. 354: whole parameters, so
  one large parameter overshoots it), every parameter scanned noting its next use.
* ``release_sub_module`` / ``__params_to_release`` (l. 487): a parameter is released unless a scanned use lies
  ahead, or it recurs within the next ``stage3_max_reuse_distance`` elements of the trace (a checkpointed layer
  is recomputed and back-propagated at once). Persistent parameters (``ds_numel <=
  stage3_param_persistence_threshold``, ``parameter_offload.py mark_persistent_parameters``) stay gathered; their
  bytes are counted apart (``ZeRO-3 persistent small parameters``).
* carry-over: ``reset_step`` (l. 204; ``stage3.py backward``, l. 2215) zeroes the available count after the
  backward, then ``step()``'s ``partition_all_parameters`` -> ``release_and_reset_all`` (l. 407) subtracts every
  parameter still gathered: the embedding, whose post-backward hook never fires (its input, the token ids, needs
  no gradient), and every persistent parameter (gathered again by ``stage3.py _post_step``, l. 1986, outside the
  count). Every later step starts that far below zero and prefetches that far past max_live.
* memory (``partition_parameters.py all_gather_coalesced``): one parameter is gathered into a buffer of its
  size rounded up to a multiple of the world size, which becomes its data (l. 1202); several go through one flat
  buffer (l. 1266) that the first ``AllGatherCoalescedHandle.wait`` copies each parameter out of (``torch.cat``,
  l. 694) and that lives until every parameter of the call has been waited for (the in-flight registry holds
  the handle): a LoRA B above the persistence threshold shares a prefetch with the next base weight, which then
  exists twice for a while.

* the all-gather stream's pool: the gathers and waits run on the coordinator's own CUDA stream, whose cached blocks
  the compute stream cannot reuse (:func:`gathered_pool`: the replayed allocations through dsadvise's allocator
  simulator).

DeepSpeed 0.16 moved ``reset_step`` to the start of every forward (PR #6662): no carry-over. The estimate counts
the larger of the two (:func:`gathered_peaks`) and its note gives both; ``--deepspeed-version`` (advisor/stacks.py
``zero3_reset_step_at_forward``) counts the stated version's (both peak and the all-gather pool), except LoRA under
full checkpointing on >= 0.16, which 0.19.8 was measured to hold above the replay: the < 0.16 count is kept, said.

Measured on a real engine (``python benchmarks/zero3_live_params.py [--deepspeed-site DIR --reentrant] [--full]``,
Llama-2-70B's shape with widths / 16 and the element-count knobs / 256, 2 CPU processes): DeepSpeed 0.13.3 gathers
exactly what this replay gives with the carry-over, LoRA and full fine-tuning; DeepSpeed 0.19.8 exactly what it gives
without, for full fine-tuning (tests/memory/test_deepspeed_zero3_gather.py). With LoRA under non-reentrant
checkpointing 0.19.8 gathers 3.0 % more than the replay without carry-over (its recompute attribution, 2025, ties
recomputed frozen weights to the checkpoint's backward module) and 19 % less than the count with it. Left out: biases (below the persistence
threshold for the catalog's models: they would only add to the carry-over) and learned position embeddings
(GPT-2, OPT: a few MiB).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import defaultdict, deque
from dataclasses import dataclass, field
from functools import lru_cache

from ..architecture import Architecture
from ..param_count import linear_shapes
from ..specs import LoraSpec, TrainingSpec
from .zero_sizes import DeepSpeedSizes


@dataclass
class _Handle:
    params: list[int]
    flat: int                      # bytes of the flat buffer (coalesced) or the single parameter's buffer
    coalesced: bool
    pending: set[int] = field(default_factory=set)
    done: bool = False
    key: object = None


def module_trace(arch: Architecture, training: TrainingSpec) -> tuple[list[int], list[list[int]]] | None:
    """(element count of each parameter, the step's module trace as lists of parameter ids) of a dense decoder
    in the order ZeRO-3's hooks fetch them: embedding, each layer's norms and linears (a LoRA-wrapped linear as
    base, A, B: ``peft.tuners.lora.Linear.forward``), final norm, lm_head; then the backward from lm_head down,
    each checkpointed layer recomputed (its forward order) before its backward (reverse order). Recorded from a
    real engine by ``benchmarks/zero3_live_params.py`` (``TRACE_ORDER=1``). None for what it does not cover
    (MoE experts, multi-head latent attention)."""
    if arch.is_moe or arch.kv_lora_rank:
        return None
    numel: list[int] = []

    def new(n: int) -> int:
        numel.append(int(n))
        return len(numel) - 1

    h, r = arch.hidden_size, training.lora.rank
    lora = training.method in ("lora", "qlora")
    targets = set(training.lora.target_modules)
    none: list[int] = []                                   # a module without parameters of its own

    def linear(name: str, fan_in: int, fan_out: int) -> tuple[list[list[int]], list[list[int]]]:
        """(forward, backward) modules of one linear: peft's wrapper, base, A, B (backward: wrapper, B, A, base)"""
        base = [new(fan_in * fan_out // (4 if training.method == "qlora" else 1))]   # NF4 packed in 16-bit
        if not (lora and ("all-linear" in targets or name in targets)):
            return [base], [base]
        a, b = [new(r * fan_in)], [new(fan_out * r)]
        return [none, base, a, b], [none, b, a, base]

    embed = new(arch.vocab_size * h)
    attn_names = ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj")
    layers = []
    for _ in range(arch.num_layers):
        fwd_attn, bwd_attn, fwd_mlp, bwd_mlp = [], [], [], []
        for i, (name, (fan_in, fan_out, copies)) in enumerate(linear_shapes(arch).items()):
            for _ in range(copies):
                f, b = linear(name, fan_in, fan_out)
                if name in attn_names:
                    fwd_attn += f
                    bwd_attn = b + bwd_attn
                else:
                    fwd_mlp += f + ([none] if not fwd_mlp else [])       # the activation after the first MLP linear
                    bwd_mlp = b + bwd_mlp if bwd_mlp else [none] + b
        in_norm, post_norm = [new(h)], [new(h)]
        forward_ = [none, in_norm, none] + fwd_attn + [post_norm, none] + fwd_mlp
        backward_ = [none] + bwd_mlp + [post_norm, none] + bwd_attn + [in_norm]
        layers.append((forward_, backward_))
    final = [new(h)]
    head = [embed] if arch.tie_word_embeddings else [new(arch.vocab_size * h)]
    # root, model, embedding, rotary embedding; the layers; final norm, lm_head
    forward = [none, none, [embed], none] + [m for f, _ in layers for m in f] + [final, head]
    backward = [none, head, none, final]                   # root, lm_head, model, final norm
    ckpt = training.activation_checkpointing == "full"
    for f, b in reversed(layers):
        backward += (f if ckpt else []) + b
    backward.append([embed])
    return numel, forward + backward


def gathered_peak(numel: list[int], trace: list[list[int]], ds: DeepSpeedSizes, world: int, elem_bytes: int,
                  log: list | None = None) -> int:
    """Peak bytes of gathered parameters over a step whose trace is complete, the larger of the two coordinator
    versions (:func:`gathered_peaks`): what a GPU must hold whichever DeepSpeed runs."""
    return max(gathered_peaks(numel, trace, ds, world, elem_bytes, log))


def gathered_peaks(numel: list[int], trace: list[list[int]], ds: DeepSpeedSizes, world: int, elem_bytes: int,
                   log: list | None = None) -> tuple[int, int]:
    """(DeepSpeed < 0.16, DeepSpeed >= 0.16) peak bytes of gathered parameters over a step whose trace is complete.
    Before 0.16 the coordinator's available count is reset after the backward (0.13.3 ``stage3.py backward``,
    l. 2215: ``reset_step``) and the parameters still gathered then are released afterwards by ``step()``
    (``partition_all_parameters`` -> ``release_and_reset_all``), which subtracts them from the fresh count: every
    later step starts that many elements below zero, and its prefetch holds that much more than
    ``stage3_max_live_parameters``. From 0.16 on ``reset_step`` runs at the start of every forward
    (``parameter_offload.py _start_of_forward_hook``, DeepSpeed PR #6662 of 2024-11-05): every step starts at zero."""
    return gathered_pool(numel, trace, ds, world, elem_bytes, log)[:2]


def gathered_pool(numel: list[int], trace: list[list[int]], ds: DeepSpeedSizes, world: int, elem_bytes: int,
                  log: list | None = None) -> tuple[int, int, int]:
    """(DeepSpeed < 0.16 peak, DeepSpeed >= 0.16 peak, reserved peak of the pool they are allocated in), bytes.
    The coordinator gathers on its own CUDA stream (``__all_gather_params_`` and the waits in ``fetch_sub_module``
    run under ``get_accelerator().stream(self.__allgather_stream)``) and the caching allocator reuses a cached
    block only for the stream it was allocated on (``CUDACachingAllocator.cpp get_free_block``: a block of
    another stream is skipped), so the gathered buffers form a pool of their own: its reserved peak is two
    replayed steps (the second with the carry-over) run through dsadvise's allocator simulator, the larger of the
    two versions."""
    old, new, old_reserved, new_reserved = _versions(numel, trace, ds, world, elem_bytes, log)
    return old, new, max(old_reserved, new_reserved)


def _versions(numel: list[int], trace: list[list[int]], ds: DeepSpeedSizes, world: int, elem_bytes: int,
              log: list | None = None) -> tuple[int, int, int, int]:
    """(DeepSpeed < 0.16 peak, >= 0.16 peak, < 0.16 pool reserved peak, >= 0.16 pool reserved peak), bytes: two
    replayed steps each, the second with the carry-over (< 0.16) or starting at zero again (>= 0.16)."""
    from .caching_allocator import simulate

    first_events: list = []
    first, left = _step(numel, trace, ds, world, elem_bytes, 0, None, first_events)
    carried_events: list = []
    carried, _ = _step(numel, trace, ds, world, elem_bytes, -left, log, carried_events)
    again = [(op, ("again", key), b) for op, key, b in first_events]
    return (max(first, carried), first, simulate(first_events + carried_events).peak_reserved,
            simulate(first_events + again).peak_reserved)


def _step(numel: list[int], trace: list[list[int]], ds: DeepSpeedSizes, world: int, elem_bytes: int, carry: int,
          log: list | None, events: list | None = None) -> tuple[int, int]:
    """(peak bytes of gathered non-persistent parameters and in-flight flat buffers, elements still gathered at
    the end) over one step whose trace is complete, replaying the coordinator's fetch / prefetch / release
    decisions; ``events`` receives the allocations and frees in :func:`advisor.memory.allocator.simulate`'s form."""
    persist = [n <= ds.param_persistence_threshold for n in numel]
    order = [(p, step) for step, mod in enumerate(trace) for p in sorted(set(mod))]
    queue = deque(order)
    recent: dict[int, float] = defaultdict(lambda: -1e10)
    # persistent parameters: gathered again right after each step() (stage3.py _post_step:
    # persistent_parameters[0].all_gather(...), outside the coordinator's count)
    available = list(persist)
    inflight: dict[int, _Handle] = {}
    data: dict[int, int] = {}
    flats: set[int] = set()          # ids of live handles
    handles: dict[int, _Handle] = {}
    storage: dict[int, object] = {}  # parameter -> the key of the allocation its data lives in
    ev = events if events is not None else []
    n_avail = 0
    peak = 0

    def aligned(p: int) -> int:
        return math.ceil(numel[p] / world) * world

    def live() -> int:                      # persistent parameters are counted apart (whole on every GPU)
        return sum(b for p, b in data.items() if not persist[p]) + sum(handles[i].flat for i in flats)

    def gather(ps) -> None:
        nonlocal n_avail
        todo = sorted(p for p in ps if not available[p] and p not in inflight)
        if not todo:
            return
        n_avail += sum(numel[p] for p in todo)
        if log is not None:
            log.append(("gather", todo, sum(numel[p] for p in todo), round(live() / 2**20, 2)))
        h = _Handle(todo, sum(aligned(p) for p in todo) * elem_bytes, len(todo) > 1, set(todo))
        handles[id(h)] = h
        flats.add(id(h))
        h.key = ("gather", len(ev))
        ev.append(("a", h.key, h.flat))
        for p in todo:
            inflight[p] = h

    def wait(p: int) -> None:
        h = inflight.pop(p)
        if not h.done:
            h.done = True
            for q in h.params:
                available[q] = True
                data[q] = (numel[q] if h.coalesced else aligned(q)) * elem_bytes
                if h.coalesced:             # torch.cat of the parameter's pieces
                    storage[q] = ("copy", len(ev))
                    ev.append(("a", storage[q], data[q]))
                else:                       # the buffer is the parameter's data now
                    storage[q] = h.key
            if not h.coalesced:
                flats.discard(id(h))
        h.pending.discard(p)
        if not h.pending and id(h) in flats:
            flats.discard(id(h))
            ev.append(("f", h.key, 0))

    # __params_to_release walks the trace from the current step while fewer than stage3_max_reuse_distance
    # elements have been traversed (checked before each module): the modules m >= step with
    # cum[m] - cum[step] < distance, i.e. [step, end); a parameter used in that window is kept.
    cum = [0]
    for m in trace:
        cum.append(cum[-1] + sum(numel[p] for p in m))
    uses: dict[int, list[int]] = defaultdict(list)
    for i, m in enumerate(trace):
        for p in m:
            uses[p].append(i)

    def to_release(step: int, mod: list[int]) -> set[int]:
        end = bisect_left(cum, cum[step] + ds.max_reuse_distance, lo=step)
        out = set()
        for p in mod:
            if persist[p] or recent[p] > step:
                continue
            u = uses[p]
            k = bisect_left(u, step)
            if not (k < len(u) and u[k] < end):
                out.add(p)
        return out

    n_avail = carry
    step = 0
    last = len(trace) - 1
    for mod in trace:
        params = set(mod)
        gather(params)
        for p in params:
            if p in inflight:
                wait(p)
        peak = max(peak, live())
        fresh = [p for p in params if recent[p] < step]
        for _ in range(len(fresh)):
            p, s = queue.popleft()
            recent[p] = s
        budget = min(ds.max_live_parameters - n_avail, ds.prefetch_bucket_size)
        prefetch, count = set(), 0
        while queue and count < budget:
            p, s = queue.popleft()
            if not available[p] and p not in inflight and p not in prefetch:
                prefetch.add(p)
                count += numel[p]
            recent[p] = max(recent[p], s)
        if count:
            gather(prefetch)
            peak = max(peak, live())
        step += 1
        if step - 1 == last:
            break                   # the embedding's backward: its input (token ids) needs no gradient, so
            # DeepSpeed's post-backward hook never fires; step() releases it (partition_all_parameters)
        for p in to_release(step, mod):
            if available[p] and not persist[p]:
                available[p] = False
                del data[p]
                ev.append(("f", storage.pop(p), 0))
                n_avail -= numel[p]
                if log is not None:
                    log.append(("release", p, round(live() / 2**20, 2)))
    # step()'s partition_all_parameters -> release_and_reset_all releases every available parameter, persistent
    # ones included, and subtracts each from the count reset_step has just zeroed
    left = sum(numel[p] for p in range(len(numel)) if available[p])
    ev += [("f", storage.pop(p), 0) for p in list(storage)]                 # step() releases the rest
    if log is not None:
        log.append(("end", [p for p in range(len(numel)) if available[p] and not persist[p]], n_avail))
    return peak, left


@lru_cache(maxsize=256)
def _cached_peaks(arch: Architecture, method: str, rank: int, targets: tuple[str, ...], checkpointing: str,
                  ds: DeepSpeedSizes, world: int, elem_bytes: int) -> tuple[int, int, int, int] | None:
    training = TrainingSpec(seq_len=1, micro_batch_size=1, method=method,
                            lora=LoraSpec(rank=rank, target_modules=targets),
                            activation_checkpointing=checkpointing)
    traced = module_trace(arch, training)
    if traced is None:
        return None
    numel, trace = traced
    return _versions(numel, trace, ds, world, elem_bytes)


def _recompute_above_replay(training: TrainingSpec) -> bool:
    """LoRA under full checkpointing: DeepSpeed 0.19.8 measured 3.0 % above the replay without carry-over (its
    recompute attribution, module docstring): a >= 0.16 version keeps the < 0.16 count, which covers it."""
    return training.method in ("lora", "qlora") and training.activation_checkpointing != "none"


def _peaks(arch: Architecture, training: TrainingSpec, ds: DeepSpeedSizes, world: int,
           elem_bytes: int) -> tuple[int, int, int] | None:
    """(counted peak, the other version's peak, counted pool reserved peak) for the run's --deepspeed-version
    (advisor/stacks.py ``zero3_reset_step_at_forward``): before 0.16 the carry-over replay, from 0.16 the replay
    without it (unless :func:`_recompute_above_replay`), none given: the larger of the two (peak and pool)."""
    from ..stacks import zero3_reset_step_at_forward

    peaks = _cached_peaks(arch, training.method, training.lora.rank, tuple(training.lora.target_modules),
                          training.activation_checkpointing, ds, world, elem_bytes)
    if peaks is None:
        return None
    old, new, old_reserved, new_reserved = peaks
    at_forward = zero3_reset_step_at_forward(getattr(training, "deepspeed_version", None))
    if at_forward is None or (at_forward and _recompute_above_replay(training)):
        return old, new, max(old_reserved, new_reserved)
    if at_forward:
        return new, old, new_reserved
    return old, new, old_reserved


def zero3_gather_pool_cached_bytes(arch: Architecture, training: TrainingSpec, ds: DeepSpeedSizes, world: int,
                                   elem_bytes: int) -> int | None:
    """Cached free bytes of the all-gather stream's pool at its reserved peak (reserved minus the gathered peak,
    :func:`gathered_pool`): memory the compute stream cannot reuse; None where the module trace is not modeled."""
    peaks = _peaks(arch, training, ds, world, elem_bytes)
    return None if peaks is None else max(peaks[2] - peaks[0], 0)


def zero3_gathered_bytes(arch: Architecture, training: TrainingSpec, ds: DeepSpeedSizes, world: int,
                         elem_bytes: int) -> int | None:
    """Peak bytes of ZeRO-3's gathered parameters (and in-flight gather buffers) on one GPU over a training step,
    replayed from DeepSpeed's coordinator: the stated --deepspeed-version's behaviour, else the larger of the two
    (:func:`gathered_peaks`); None where the module trace is not modeled."""
    peaks = _peaks(arch, training, ds, world, elem_bytes)
    return None if peaks is None else peaks[0]


def zero3_gather_note(arch: Architecture, training: TrainingSpec, ds: DeepSpeedSizes, world: int, elem_bytes: int,
                      counted: int) -> str | None:
    """The estimate's note when the replay (not the max_live bound) set the ``counted`` gathered bytes."""
    peaks = _peaks(arch, training, ds, world, elem_bytes) if world > 1 else None
    if peaks is None or peaks[0] != counted or peaks[0] <= ds.max_live_parameters * elem_bytes:
        return None
    from ..stacks import zero3_reset_step_at_forward

    shown, other, _ = peaks
    old, new = max(shown, other), min(shown, other)     # before 0.16 the carry-over only adds
    version = getattr(training, "deepspeed_version", None)
    gib = 2 ** 30
    text = (f"ZeRO-3 gathered parameters: DeepSpeed's prefetch and release replayed over this model's module "
            f"trace, {shown / gib:.2f} GiB per GPU (stage3_max_live_parameters alone: "
            f"{ds.max_live_parameters * elem_bytes / gib:.2f} GiB)")
    lora_ckpt = (" (LoRA under checkpointing: DeepSpeed 0.19.8 measured 3 % above that, its recompute "
                 "attribution; benchmarks/zero3_live_params.py)")
    if new == old:
        return text
    if version is None:
        return text + (f"; counted as DeepSpeed < 0.16 holds it (each step starts below zero by what step() releases "
                       f"after the count was reset: the embedding, the persistent parameters); DeepSpeed >= 0.16 "
                       f"resets at each forward and holds {new / gib:.2f} GiB"
                       f"{lora_ckpt if _recompute_above_replay(training) else ''}; --deepspeed-version counts one")
    if not zero3_reset_step_at_forward(version):
        return text + (f"; DeepSpeed {version} (< 0.16) starts each step below zero by what step() released after "
                       f"the count was reset; >= 0.16 resets at each forward and holds {new / gib:.2f} GiB")
    if shown == new:
        return text + (f"; DeepSpeed {version} resets the count at each forward (>= 0.16); before 0.16 each step "
                       f"started below zero by what step() released and held {old / gib:.2f} GiB")
    return text + (f"; counted as DeepSpeed < 0.16 holds it, although DeepSpeed {version} resets at each forward and "
                   f"the replay gives {new / gib:.2f} GiB{lora_ckpt}, which that count covers")
