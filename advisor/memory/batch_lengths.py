"""Variable-length batches (``--batch-lengths variable``, issue 17, helper L): the estimate of a run whose batches
are each padded to their own longest sample, ``--seq-len`` being the longest.

Loops without packing that pad each batch to its longest sample (HF ``DataCollatorWithPadding`` /
``DataCollatorForSeq2Seq`` with ``padding=True``, TRL's ``DataCollatorForLanguageModeling``, LLaMA-Factory's SFT
collator, axolotl without ``sample_packing`` / ``pad_to_sequence_len``, PEFT's method-comparison ``run.py``) run a
different step shape every step. dsadvise replays one shape through its model of the CUDA caching allocator, and
that model's ``max_memory_reserved`` is not monotonic in the length (best fit places the step's blocks differently
at each shape: docs/memory-model.md, "Variable-length batches"), so the estimate at ``--seq-len`` alone is no upper
bound for such a run. Here the whole fixed-length estimate is made at every length of a grid and the one with the
largest per-GPU total is reported whole (its breakdown sums to its total), with ``allocated`` the largest over the
grid and the CPU side the largest over the grid. The step time stays the fixed-length one at ``--seq-len`` (an
upper bound: the distribution of lengths is not an input).
"""

from __future__ import annotations

from collections.abc import Callable
from math import gcd

from ..estimate_result import BatchLengthsInfo, Estimate
from ..specs import HardwareSpec, StrategySpec, TrainingSpec

# The grid: every seq_len/32 from seq_len/4 (25 lengths), each rounded up to a multiple of PAD_MULTIPLE.
# - PAD_MULTIPLE = 8: collators that pad for tensor cores pad to a multiple of 8 (LLaMA-Factory's SFT workflow passes
#   pad_to_multiple_of=8 when training, src/llamafactory/train/sft/workflow.py; transformers' DataCollatorWithPadding
#   / DataCollatorForSeq2Seq take pad_to_multiple_of "to enable the use of Tensor Cores", data/data_collator.py;
#   axolotl pads to 64, a multiple of 8), so such runs only see multiples of 8; collators without it (TRL's, HF's by
#   default) can produce any length, which a grid samples (said in the note).
# - 1/32 of the maximum: 25 lengths keep an estimate under a second (~20-50 ms per length, measured on the corpus
#   shapes); session 10's probe of the corpus row peft-mc-llama-3.2-3b-full-l40s at every multiple of 8 found the
#   largest reserved at 728 tokens (37.96 GiB), the 1/32 grid at 720 (37.73): the grid is a sample, not a bound.
# - From 1/4 of the maximum: a batch of a quarter the length holds a quarter of the activations; on the same probe
#   no length below 192 (768/4) reserved more than 31.15 GiB against the grid's 37.73 (session 10's probe: a plain
#   loop of advisor.api.estimate over every multiple of 8 from 8 to 768; docs/memory-model.md).
GRID_STEPS = 32
GRID_FIRST = 8          # the first grid point: GRID_FIRST/GRID_STEPS = 1/4 of seq_len
PAD_MULTIPLE = 8

NOTE_PREFIX = "--batch-lengths variable:"
GROWTH_PREFIX = "not counted (--batch-lengths variable):"
EXPANDABLE_PREFIX = "--batch-lengths variable with expandable_segments:"


def batch_length_notes(est: Estimate | None) -> list[str]:
    """The notes a variable-length estimate carries (what the recommender repeats among its assumptions)."""
    if est is None or est.batch_lengths is None:
        return []
    return [n for n in est.notes if n.startswith((NOTE_PREFIX, GROWTH_PREFIX, EXPANDABLE_PREFIX))]


def pad_multiple(strategy: StrategySpec) -> int:
    """Tokens every padded length is a multiple of: 8 (pad_to_multiple_of), and what the layout splits the sequence
    by (Ulysses --sp must divide it, ring attention --cp splits it in 2 x cp chunks: advisor/layout.py)."""
    m = PAD_MULTIPLE
    for d in (strategy.sp_size, 2 * strategy.cp_size if strategy.cp_size > 1 else 1):
        m = m * d // gcd(m, d)
    return m


def padded_lengths(seq_len: int, multiple: int = PAD_MULTIPLE) -> tuple[int, ...]:
    """The grid of padded lengths (tokens) estimated for a maximum of ``seq_len``: k x seq_len / 32 for
    k = 8..32, each rounded up to ``multiple`` and capped at ``seq_len`` (which is always in it), ascending."""
    out = set()
    for k in range(GRID_FIRST, GRID_STEPS + 1):
        length = -(-k * seq_len // GRID_STEPS)
        out.add(min(-(-length // multiple) * multiple, seq_len))
    return tuple(sorted(out))


def variable_length_estimate(model, hw: HardwareSpec, training: TrainingSpec, strategy: StrategySpec,
                             estimate_fn: Callable[..., Estimate]) -> Estimate:
    """The estimate of a run whose batches are padded to any grid length up to ``training.seq_len``: the whole
    fixed-length estimate (``estimate_fn``, :func:`advisor.memory.core.estimate_memory`) at the length with the
    largest per-GPU total (bytes), ``per_gpu.allocated`` the largest over the grid, the per-node CPU the largest
    over the grid, ``fits`` only if every length fits; notes say which lengths."""
    fixed = training.model_copy(update={"batch_lengths": "fixed"})
    multiple = pad_multiple(strategy)
    grid = padded_lengths(training.seq_len, multiple)
    runs = [(n, estimate_fn(model, hw, fixed.model_copy(update={"seq_len": n}), strategy)) for n in grid]
    peak_len, peak = max(runs, key=lambda r: (r[1].per_gpu.total, r[0]))    # ties: the longer
    alloc_len, alloc = max(runs, key=lambda r: (r[1].per_gpu.allocated, r[0]))
    _, cpu = max(runs, key=lambda r: (r[1].per_node_cpu.total, r[0]))
    at_max = runs[-1][1]
    per_gpu = peak.per_gpu.model_copy(update={"allocated": alloc.per_gpu.allocated})
    gib = 2 ** 30
    step = training.seq_len / GRID_STEPS
    notes = [f"{NOTE_PREFIX} each batch padded to its own longest sample, --seq-len {training.seq_len} "
             f"the longest; memory is the largest over {len(grid)} padded lengths ({grid[0]}-{grid[-1]} tokens, "
             f"every {step:g} rounded up to a multiple of {multiple}: a grid, lengths between its points are not "
             f"estimated): the peak is at {peak_len} tokens (per-GPU total {peak.per_gpu.total / gib:.2f} GiB, "
             f"reserved {peak.per_gpu.reserved / gib:.2f}"
             + (f"; at {training.seq_len} tokens {at_max.per_gpu.total / gib:.2f} / "
                f"{at_max.per_gpu.reserved / gib:.2f}: the caching allocator's reserved is not monotonic in the "
                f"length" if peak_len != training.seq_len else "")
             + "), the whole estimate taken at that length; "
             f"max_memory_allocated the largest over the grid, at {alloc_len} tokens "
             f"({alloc.per_gpu.allocated / gib:.2f} GiB); step time with every batch at {training.seq_len} tokens "
             f"(an upper bound: the distribution of lengths is not an input)"]
    if training.expandable_segments:
        notes.append(f"{EXPANDABLE_PREFIX} in dsadvise's allocator model the reserved follows the allocated bytes "
                     "across lengths (segments "
                     "grow and shrink in place instead of being cut to one length's blocks)")
    else:
        notes.append(f"{GROWTH_PREFIX} a run whose batch lengths change without torch.cuda.empty_cache() can reserve "
                     "more than any single length, because blocks cached for one length do not fit the next "
                     "(dsadvise's allocator model, not GPU measurements: 7-12 GiB more over 200 steps in random "
                     "order, benchmarks/variable_length_reserved.py); PYTORCH_CUDA_ALLOC_CONF="
                     "expandable_segments:True (--expandable-segments) is torch's mitigation for changing "
                     "allocation sizes such as a changing batch size (docs/source/notes/cuda.rst)")
    info = BatchLengthsInfo(grid=list(grid), peak_seq_len=peak_len, allocated_seq_len=alloc_len,
                            step_time_seq_len=training.seq_len)
    return peak.model_copy(update={
        "strategy": peak.strategy.model_copy(update={"seq_len": training.seq_len}),
        "per_gpu": per_gpu, "per_node_cpu": cpu.per_node_cpu,
        "fits": all(e.fits for _, e in runs), "headroom_bytes": hw.vram_bytes - per_gpu.total,
        "notes": list(peak.notes) + notes, "batch_lengths": info})
