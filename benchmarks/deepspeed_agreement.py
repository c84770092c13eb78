"""Agreement of dsadvise's per-GPU model states with DeepSpeed's own estimators.

Run: python benchmarks/deepspeed_agreement.py
Prints: model | stage | offload | GPUs | DeepSpeed GiB | dsadvise GiB (comparable terms) | diff %.
Comparable terms: parameters + gradients + optimizer states, plus for ZeRO-3 the gathered module and its
gradient buffers, minus the 16-bit gradient partition DeepSpeed's ZeRO-3 estimator omits
(docs/memory-model.md explains each difference).
"""

from __future__ import annotations

import os
import statistics

os.environ.setdefault("DS_ACCELERATOR", "cpu")

from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs  # noqa: E402
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs  # noqa: E402

from advisor.api import estimate  # noqa: E402
from advisor.catalog.models import resolve_model  # noqa: E402
from advisor.param_count import count_parameters  # noqa: E402

GiB = 1024**3
MODELS = ["gpt2-xl", "llama-3.2-3b", "llama-2-7b", "mistral-7b-v0.1", "qwen2.5-14b", "mixtral-8x7b",
          "llama-2-70b", "qwen2.5-72b"]
WORLDS = [(1, 1), (4, 1), (8, 1), (8, 4)]


def main() -> None:
    rows = []
    for name in MODELS:
        counts = count_parameters(resolve_model(name).architecture)
        for gpus, nodes in WORLDS:
            for offload in (False, True):
                _, ds2 = estimate_zero2_model_states_mem_needs(counts.total, gpus, nodes, cpu_offload=offload)
                e2 = estimate(name, gpus=gpus, nodes=nodes, vram=80, strategy="zero2",
                              offload_optimizer="cpu" if offload else "none").per_gpu
                ours2 = e2.parameters + e2.gradients + e2.optimizer_states
                rows.append((name, 2, offload, gpus * nodes, ds2, ours2))
                _, ds3, _ = estimate_zero3_model_states_mem_needs(counts.total, counts.largest_module, gpus, nodes,
                                                                   cpu_offload=offload, cpu_offload_params=False)
                e3 = estimate(name, gpus=gpus, nodes=nodes, vram=80, strategy="zero3",
                              offload_optimizer="cpu" if offload else "none").per_gpu
                b = e3.breakdown
                ours3 = (e3.parameters + e3.optimizer_states + b["ZeRO-3 gathered parameters (module + prefetch)"]
                         + b["ZeRO-3 unpartitioned module gradients"])
                rows.append((name, 3, offload, gpus * nodes, ds3, ours3))
    print(f"{'model':<16}{'stage':>6}{'offload':>8}{'GPUs':>6}{'DeepSpeed GiB':>15}{'dsadvise GiB':>14}{'diff %':>8}")
    diffs = []
    for name, stage, off, world, ds, ours in rows:
        d = (ours - ds) / ds * 100
        diffs.append(d)
        print(f"{name:<16}{stage:>6}{'cpu' if off else '-':>8}{world:>6}{ds / GiB:>15.2f}{ours / GiB:>14.2f}{d:>8.1f}")
    print(f"\n{len(rows)} cases: median |diff| {statistics.median(abs(d) for d in diffs):.1f}%, "
          f"min {min(diffs):+.1f}%, max {max(diffs):+.1f}%")


if __name__ == "__main__":
    main()
