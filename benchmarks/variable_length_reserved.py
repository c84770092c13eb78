"""Variable-length batches through dsadvise's caching-allocator model: evidence (issue 17, V; session 10's
``--batch-lengths variable``, advisor/memory/batch_lengths.py, takes the worst single length of a grid, part 1 below).

Run: python benchmarks/variable_length_reserved.py [--setup NAME] [--step 32] [--steps 200] [--seed 0]
     python benchmarks/variable_length_reserved.py --grid-check   (the estimate's grid vs every multiple of 8)

dsadvise replays ONE step shape (``--micro-batch`` x ``--seq-len``) through its model of PyTorch's CUDA caching
allocator (advisor/memory/allocator.py over advisor/memory/caching_allocator.py). Loops that pad each batch to its
own longest sample (PEFT's method comparison run.py, HF Trainer with dynamic padding, LLaMA-Factory, axolotl without
sample packing) run a different shape every step. This script asks two questions of the allocator model itself:

1. Is the simulated reserved monotonic in the length? For each length on a grid up to the stated maximum it prints
   dsadvise's own ``per_gpu.allocated`` / ``per_gpu.reserved`` (``advisor.api.estimate``) and the simulations behind
   them: the persistent model states (``_persistent_stats``) and the step's churn from an empty pool
   (``churn_events`` through ``simulate``). dsadvise's reserved is peak.py's tensor bytes plus those simulations'
   rounding and cached bytes, so the "sim total" column (the simulations' own reserved) can differ from it.
2. What does one allocator reach over a run of varying lengths? It drives ONE ``CachingAllocator`` through N
   consecutive steps (the persistent states simulated apart and added, as the estimate does) with lengths drawn
   from a fixed seeded distribution, and prints the reserved peak next to the largest single-length peak, for three
   cache policies: never ``empty_cache``, every 10th step (PEFT run.py's ``ACCELERATOR_EMPTY_CACHE_SCHEDULE`` since
   PEFT #2894 / 90d3fc05), every step (PEFT run.py before #2894: ``torch.cuda.empty_cache()`` + ``gc.collect()``
   after each step), each with memory to spare and capped at the card (the OOM retry); then the same lengths in
   PEFT's BucketIterator order (:func:`bucketed`) and once with ``expandable_segments:True`` (no ``empty_cache``).

The first step of the run is the single-length replay's first iteration (cuBLAS workspaces placed, AdamW's lazy
states created after its backward: ``churn_events(iterations=1)``); every later step is that replay's second
iteration (``churn_events(iterations=2)`` minus the first): the same keys, all freed by the step's end.

Caching allocator rules used (c10/cuda/CUDACachingAllocator.cpp, as modelled and cited in
advisor/memory/caching_allocator.py): requests rounded to 512 B; <= 1 MiB small pool (2 MiB segments), larger the
large pool (20 MiB segments below 10 MiB, else the request rounded to 2 MiB); best-fit free block of the pool;
a large block is split when the remainder is > 1 MiB; freed blocks merge with free neighbours of their segment;
segments are never returned to CUDA within a run. ``empty_cache()`` (``emptyCache`` -> ``release_cached_blocks``
-> ``release_blocks`` for the large and the small pool) returns exactly the free blocks that are a whole segment
(``!block->prev && !block->next``); a segment with any live block, or split into free pieces around a live one,
stays: :func:`empty_cache` below applies that rule to the simulator's free lists. Default allocator configuration
(no expandable segments, no max_split_size), one stream, memory to spare (no OOM retry). The length distribution
is an assumption (a triangular draw over the grid, see :func:`draw_lengths`), not a measured corpus histogram.
Results and what a model of them would need: docs/memory-model.md, "Variable-length batches".
"""

from __future__ import annotations

import argparse
from bisect import bisect_left
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from advisor.api import estimate  # noqa: E402
from advisor.memory.activations import allocation_key  # noqa: E402
from benchmarks.allocator_extrapolation import capture  # noqa: E402  (the one spy on core.gpu_allocation)
from advisor.memory.allocator import (_activation_segments, _fsdp_init_modelled, _persistent_stats,  # noqa: E402
                                      blas_workspace_bytes, churn_events, state_layout)
from advisor.memory.caching_allocator import (K_SMALL_SIZE, CachingAllocator, allocation_size,  # noqa: E402
                                              round_size, simulate)

GIB = 2 ** 30

# Corpus-like setups: the estimate() keywords at the stated maximum length. peft-3b-full is the corpus row
# peft-mc-llama-3.2-3b-full-l40s (benchmarks/gpu_memory_corpus.yaml); the 7B LoRA / QLoRA are the usual
# single-GPU SFT shapes (Trainer or LLaMA-Factory with dynamic padding) on a card large enough for no OOM retry.
SETUPS = {
    "peft-3b-full": dict(model="llama-3.2-3b", gpus=1, gpu="l40s", strategy="single", method="full",
                         precision="pure-bf16", micro_batch=4, seq_len=768, checkpointing="none", loss="plain",
                         torch_version="2.13", transformers_version="5.13"),
    "7b-lora": dict(model="llama-2-7b", gpus=1, gpu="a100-80g", strategy="single", method="lora",
                    precision="pure-bf16", micro_batch=1, seq_len=2048, checkpointing="none", loss="plain",
                    lora_rank=16, lora_targets=("all-linear",)),
    "7b-qlora": dict(model="llama-2-7b", gpus=1, gpu="l40s", strategy="single", method="qlora",
                     precision="pure-bf16", micro_batch=1, seq_len=2048, checkpointing="none", loss="plain",
                     lora_rank=16, lora_targets=("all-linear",)),
}

def shape_of(kw: dict, seq_len: int):
    """dsadvise's estimate at ``seq_len`` and the allocator model's sequences for it: the persistent states' sizes
    and the churn events of the first step (``iterations=1``) and of a later step (the second iteration)."""
    seen = capture(kw["model"], {**{k: v for k, v in kw.items() if k != "model"}, "seq_len": seq_len})
    est = seen["estimate"]
    arch, training, strategy, hw, ms, buffers, formed, mode, _tensor_bytes = seen["args"]
    held_fp32 = seen["kwargs"].get("held_fp32", 0)
    if _fsdp_init_modelled(training, strategy):
        raise SystemExit("FSDP setups take another allocator path (allocator._fsdp_allocation): not replayed here")
    trace_training, ckpt = allocation_key(arch, training)
    n = arch.num_layers
    full = state_layout(arch, training, strategy, hw, ms, buffers, formed, n)
    dyn = replace(full, persistent_outside=(), persistent_layer=())
    segs, leftovers, held = _activation_segments(arch, trace_training, mode, ckpt, n)
    ws = blas_workspace_bytes(hw)
    first = churn_events(segs, leftovers, held, n, dyn, iterations=1, held_fp32=held_fp32, blas_workspace=ws)
    both = churn_events(segs, leftovers, held, n, dyn, iterations=2, held_fp32=held_fp32, blas_workspace=ws)
    assert both[:len(first)] == first
    persistent = (full.persistent_outside, full.persistent_layer, n)
    return est, persistent, first, both[len(first):], both


def empty_cache(al: CachingAllocator) -> int:
    """``torch.cuda.empty_cache()`` on the simulated allocator: release every free block that is a whole segment
    (CUDACachingAllocator ``release_blocks``: ``if (!block->prev && !block->next) release_block(block)``); returns
    the bytes released. Default configuration only (no expandable segments)."""
    released = 0
    for small in (True, False):
        keep = []
        for size, addr in al._free[small]:
            b = al._by_addr[addr]
            if b.prev is None and b.next is None:
                del al._by_addr[addr]
                al.reserved -= size
                released += size
            else:
                keep.append((size, addr))
        al._free[small] = keep
    return released


def run_sequence(shapes: dict, lengths: list[int], every: int | None,
                 capacity: int | None = None, expandable: bool = False) -> tuple[int, int, int, int]:
    """One allocator through ``len(lengths)`` steps' churn (the first step's sequence for the first length, the
    later-step sequence after), ``empty_cache`` after every ``every``-th step (None: never). The persistent model
    states are simulated apart, as :func:`advisor.memory.allocator.gpu_allocation` does (their segments hold only
    live blocks and split tails, which ``empty_cache`` keeps), and their reserved added by the caller.
    ``capacity`` (bytes the churn may reserve): a request with no cached fit whose new segment would pass it first
    releases the whole free segments (CUDACachingAllocator ``malloc``: ``alloc_block`` fails ->
    ``release_cached_blocks`` -> ``alloc_block`` again, :func:`empty_cache`'s rule); if it still does not fit the
    step is out of memory (counted, and the segment taken anyway so that the run goes on).
    Returns the churn's (peak reserved, peak allocated, reserved at the end, OOM-retry count), bytes."""
    al = CachingAllocator(expandable_segments=expandable)
    retries = 0
    for s, length in enumerate(lengths):
        evs = shapes[length][1] if s == 0 else shapes[length][2]
        for op, key, nb in evs:
            if op == "a":
                if capacity is not None:
                    size = round_size(nb)
                    lst = al._free[size <= K_SMALL_SIZE]
                    if bisect_left(lst, (size, -1)) == len(lst) and al.reserved + allocation_size(size) > capacity:
                        empty_cache(al)
                        retries += 1
                al.malloc(key, nb)
            else:
                al.free(key)
        if every and (s + 1) % every == 0:
            empty_cache(al)
    return al.peak_reserved, al.peak_allocated, al.reserved, retries


def draw_lengths(grid: list[int], steps: int, seed: int) -> list[int]:
    """``steps`` padded batch lengths from the grid: a fixed seeded draw, weighted towards the middle of the grid
    (a triangular distribution over the grid's indices, mode at 60 % of the maximum): an assumption standing for a
    corpus's padded-length histogram, not a measured one."""
    rng = random.Random(seed)
    hi = len(grid) - 1
    return [grid[min(hi, max(0, round(rng.triangular(0, hi, 0.6 * hi))))] for _ in range(steps)]


# PEFT method_comparison/MetaMathQA run.py BUCKET_FACTOR = 20 with utils.py BucketIterator (PEFT 5d602fdb; since the
# suite's first commit, PEFT #2395 / 41921013): buckets of
# batch_size * 20 samples, each sorted long to short ("to encounter possible OOM errors as early as possible"), so
# 20 consecutive batches of falling padded length, then a jump to the next bucket's longest. HF Trainer's
# group_by_length (LengthGroupedSampler, megabatches of 50 batches sorted by length, longest first) is alike.
BUCKET_BATCHES = 20


def bucketed(lengths: list[int], batches: int = BUCKET_BATCHES) -> list[int]:
    """``lengths`` in PEFT's BucketIterator order: every run of ``batches`` consecutive steps sorted longest first
    (the batch lengths stand for their samples: sorting samples then batching them gives falling batch maxima)."""
    return [L for i in range(0, len(lengths), batches) for L in sorted(lengths[i:i + batches], reverse=True)]


def grid_check(names: list[str]) -> None:
    """Session 10 (L): ``--batch-lengths variable`` (advisor/memory/batch_lengths.py) samples the padded lengths on a
    grid (every seq_len/32 from seq_len/4, multiples of 8). Per setup: its estimate (worst grid length, reserved and
    total) next to the worst over EVERY multiple of 8 from 8 to the maximum, split at a quarter of it, so the table
    shows what the grid misses (a grid is a sample, not a bound)."""
    print(f"{'setup':14s} {'grid: at':>9} {'reserved':>9} {'total':>8} | {'every 8 >= max/4: at':>21} {'reserved':>9} "
          f"{'total':>8} | {'< max/4: at':>12} {'reserved':>9} | {'at max':>7}   GiB")
    for name in names:
        kw = SETUPS[name]
        top = kw["seq_len"]
        var = estimate(**kw, batch_lengths="variable")
        every = {n: estimate(**{**kw, "seq_len": n}).per_gpu for n in range(8, top + 1, 8)}
        hi = max((n for n in every if n >= top // 4), key=lambda n: every[n].reserved)
        lo = max((n for n in every if n < top // 4), key=lambda n: every[n].reserved)
        print(f"{name:14s} {var.batch_lengths.peak_seq_len:9d} {var.per_gpu.reserved / GIB:9.2f} "
              f"{var.per_gpu.total / GIB:8.2f} | {hi:21d} {every[hi].reserved / GIB:9.2f} "
              f"{every[hi].total / GIB:8.2f} | "
              f"{lo:12d} {every[lo].reserved / GIB:9.2f} | {every[top].reserved / GIB:7.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--grid-check", action="store_true", help="only compare --batch-lengths variable's grid with "
                                                               "every multiple of 8 (estimates only, ~1 min)")
    ap.add_argument("--setup", choices=sorted(SETUPS), action="append", help="default: all")
    ap.add_argument("--step", type=int, default=0, help="grid step in tokens (default: 32, 128 for 2048)")
    ap.add_argument("--steps", type=int, default=200, help="steps of the variable-length run")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.grid_check:
        grid_check(args.setup or list(SETUPS))
        return
    for name in args.setup or list(SETUPS):
        kw = SETUPS[name]
        top = kw["seq_len"]
        step = args.step or (32 if top <= 1024 else 128)
        grid = list(range(top, top // 4 - 1, -step))[::-1]     # from a quarter of the maximum up to it
        t0 = time.time()
        print(f"\n== {name}: {kw['model']} {kw['method']} {kw['micro_batch']} x up-to-{top} on {kw['gpu']} "
              f"(grid every {step} tokens)")
        print(f"{'len':>6} {'est alloc':>10} {'est resv':>10} {'sim persist':>11} {'sim churn':>10} "
              f"{'sim total':>10}   GiB")
        shapes = {}
        for length in grid:
            est, persistent, first, later, both = shape_of(kw, length)
            ps = _persistent_stats(*persistent, False)
            st = simulate(both)
            shapes[length] = (persistent, first, later, ps, st)
            if length == top:
                est_top = est
            g = est.per_gpu
            print(f"{length:6d} {g.allocated / GIB:10.2f} {g.reserved / GIB:10.2f} {ps.peak_reserved / GIB:11.2f} "
                  f"{st.peak_reserved / GIB:10.2f} {(ps.peak_reserved + st.peak_reserved) / GIB:10.2f}")
        single = {L: v[3].peak_reserved + v[4].peak_reserved for L, v in shapes.items()}
        argmax = max(single, key=single.get)
        drops = [(a, b) for a, b in zip(grid, grid[1:]) if single[b] < single[a]]
        print(f"single-length simulated reserved: max {single[argmax] / GIB:.2f} GiB at {argmax}, "
              f"at the stated maximum {top}: {single[top] / GIB:.2f} GiB; "
              f"{len(drops)} of {len(grid) - 1} grid steps lower than the previous length")
        lengths = draw_lengths(grid, args.steps, args.seed)
        base = shapes[top][3].peak_reserved            # the persistent states' reserved (the same at every length)
        assert all(v[3].peak_reserved == base for v in shapes.values())
        seq_shapes = {L: (None, v[1], v[2]) for L, v in shapes.items()}
        # the run's machinery reproduces the single-length replay: two steps of one length = simulate(both)
        assert run_sequence(seq_shapes, [top, top], None)[0] == shapes[top][4].peak_reserved
        print(f"run of {args.steps} steps, lengths drawn with seed {args.seed} "
              f"(min {min(lengths)}, median {sorted(lengths)[len(lengths) // 2]}, max {max(lengths)}; "
              f"longest-in-run single-length max {max(single[L] for L in set(lengths)) / GIB:.2f} GiB):")
        limit = est_top.hardware.vram_bytes - est_top.per_gpu.breakdown.get("CUDA context", 0)
        print(f"  (card limit for reserved: {limit / GIB:.2f} GiB = VRAM less dsadvise's CUDA context)")
        for label, every in (("no empty_cache", None), ("empty_cache every 10th step", 10),
                             ("empty_cache every step", 1)):
            for capped in (False, True):
                peak_r, peak_a, end_r, retries = run_sequence(seq_shapes, lengths, every,
                                                              limit - base if capped else None)
                peak_r, end_r = peak_r + base, end_r + base
                how = f"capped at the card, {retries} OOM retries" if capped else "memory to spare"
                print(f"  {label:28s} {how:34s} reserved peak {peak_r / GIB:6.2f} GiB "
                      f"({(peak_r - single[argmax]) / GIB:+.2f} vs the single-length max, "
                      f"{(peak_r - single[top]) / GIB:+.2f} vs {top}); reserved at the end {end_r / GIB:.2f}")
        print(f"  the same lengths in PEFT's BucketIterator order ({BUCKET_BATCHES}-step buckets, longest first), "
              f"memory to spare:")
        for label, every in (("no empty_cache", None), ("empty_cache every 10th step", 10),
                             ("empty_cache every step", 1)):
            peak_r = run_sequence(seq_shapes, bucketed(lengths), every)[0] + base
            print(f"  {label:28s} {'bucketed':34s} reserved peak {peak_r / GIB:6.2f} GiB "
                  f"({(peak_r - single[argmax]) / GIB:+.2f} vs the single-length max, "
                  f"{(peak_r - single[top]) / GIB:+.2f} vs {top})")
        # PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True, the mitigation torch's docs give for changing shapes
        # (docs/source/notes/cuda.rst, "Optimizing memory usage with PYTORCH_CUDA_ALLOC_CONF"); no empty_cache
        ex_single = max(_persistent_stats(*shapes[L][0], True).peak_reserved
                        + simulate(shapes[L][1] + shapes[L][2], expandable_segments=True).peak_reserved
                        for L in sorted(set(lengths)))
        ex_base = _persistent_stats(*shapes[top][0], True).peak_reserved
        peak_r = run_sequence(seq_shapes, lengths, None, expandable=True)[0] + ex_base
        print(f"  {'expandable_segments:True':28s} {'memory to spare, no empty_cache':34s} reserved peak "
              f"{peak_r / GIB:6.2f} GiB ({(peak_r - ex_single) / GIB:+.2f} vs its own single-length max over the "
              f"run's lengths, {ex_single / GIB:.2f})")
        print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
