"""Why the caching-allocator model simulates every decoder layer: whole-depth simulation vs extrapolating
linearly from 8/16 or 4/8 simulated layers (an earlier design), and the cost of one whole-depth simulation.

Run: python benchmarks/allocator_extrapolation.py

For each case the step's allocation sequence (advisor/memory/allocator.py) is simulated over all decoder
layers and over the layer counts the estimator extrapolates from; "cached" is max_memory_reserved −
max_memory_allocated of the step's churn (GiB), "error" the extrapolated minus the whole-depth value as a
percentage of the estimate's total (negative = the extrapolation would under-estimate), "ms" the time of the
whole-depth simulation (sequence building included).
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from advisor.api import estimate  # noqa: E402
from advisor.memory import allocator as al  # noqa: E402
from advisor.memory import core  # noqa: E402
from advisor.memory.activations import allocation_key  # noqa: E402

GiB = 2 ** 30
CASES = [
    ("llama-3-8b", dict(gpu="a100-80g", strategy="single", seq_len=4096)),
    ("llama-3-8b", dict(gpus=8, gpu="a100-80g", strategy="zero3", seq_len=4096, micro_batch=2)),
    ("llama-3-8b", dict(gpus=8, gpu="a100-80g", strategy="fsdp-full", seq_len=2048, micro_batch=4,
                        checkpointing="full")),
    ("llama-2-7b", dict(gpus=4, gpu="a100-80g", strategy="ddp", seq_len=2048, method="lora")),
    ("llama-2-7b", dict(gpus=1, gpu="a100-80g", strategy="single", seq_len=2048, method="qlora", micro_batch=4)),
    ("llama-2-7b", dict(gpus=8, gpu="a100-40g", strategy="zero2", seq_len=1024, micro_batch=8)),
    ("mistral-7b", dict(gpus=2, gpu="a100-80g", strategy="zero3", seq_len=8192, checkpointing="full")),
    ("qwen2.5-7b", dict(gpus=1, gpu="h100-sxm", strategy="single", seq_len=2048, method="lora", micro_batch=8)),
    ("llama-2-13b", dict(gpus=8, gpu="a100-80g", strategy="zero3", seq_len=4096, checkpointing="full",
                         micro_batch=4)),
    ("llama-3-70b", dict(gpus=8, gpu="h100-sxm", strategy="zero3", seq_len=4096, checkpointing="full")),
]


def capture(model: str, kw: dict) -> dict:
    """``estimate(model=model, **kw)`` with the arguments of its (last) ``core.gpu_allocation`` call recorded:
    ``args`` / ``kwargs`` (the estimate's arch, specs, model states, buffers, held fp32 logits) and ``estimate``.
    Shared with benchmarks/variable_length_reserved.py."""
    seen: dict = {}
    orig = core.gpu_allocation

    def spy(*args, **kwargs):
        seen["args"], seen["kwargs"] = args, kwargs
        return orig(*args, **kwargs)

    core.gpu_allocation = spy
    try:
        est = estimate(model=model, **kw)
    finally:
        core.gpu_allocation = orig
    seen["estimate"] = est
    return seen


def main() -> None:
    print(f"{'case':<64}{'layers':>7}{'whole':>8}{'8/16':>8}{'4/8':>8}{'err 8/16':>10}{'err 4/8':>9}{'ms':>7}")
    worst = {"8/16": 0.0, "4/8": 0.0}
    for model, kw in CASES:
        c = capture(model, kw)
        arch, training, strategy, hw, ms, buffers, fib, mode, _ = c["args"]
        n = arch.num_layers
        tk, ckpt = allocation_key(arch, training)
        full = al.state_layout(arch, training, strategy, hw, ms, buffers, fib, n)
        dyn = replace(full, persistent_outside=(), persistent_layer=())

        def cached(k: int) -> int:
            st = al._churn_stats(arch, tk, mode, ckpt, k, dyn, False)
            return st.peak_reserved - st.peak_allocated

        t0 = time.perf_counter()
        whole = cached(n)
        ms_whole = (time.perf_counter() - t0) * 1000
        ext = {}
        for a, b in ((8, 16), (4, 8)):
            ca, cb = cached(a), cached(b)
            ext[f"{a}/{b}"] = cb + (n - b) * max(cb - ca, 0) // (b - a)
        total = c["estimate"].per_gpu.total
        errs = {k: 100 * (v - whole) / total for k, v in ext.items()}
        for k, e in errs.items():
            worst[k] = min(worst[k], e)
        label = f"{model} " + " ".join(f"{k}={v}" for k, v in kw.items())
        print(f"{label[:63]:<64}{n:>7}{whole / GiB:>8.2f}{ext['8/16'] / GiB:>8.2f}{ext['4/8'] / GiB:>8.2f}"
              f"{errs['8/16']:>+9.2f}%{errs['4/8']:>+8.2f}%{ms_whole:>7.0f}")
    print(f"\nworst low (extrapolated below whole depth, % of total): 8/16 {worst['8/16']:+.2f} %, "
          f"4/8 {worst['4/8']:+.2f} %")


if __name__ == "__main__":
    main()
