"""Speed of the recommendation search: scenario | memory estimates | groups | ms (median of runs).

Run: python benchmarks/recommend_speed.py [--runs 7]

"ms" is the wall time of ``advisor.recommend.recommend(...)`` without suggestions, in a warm process (rules
parsed, catalogs loaded: what a long-lived caller such as a TUI sees; the CLI adds its start-up). Nothing-fits
scenarios also show the time with the verified suggestions, each of which re-runs the search.
The target is < 100 ms per search.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from advisor.api import build_hardware, build_training  # noqa: E402
from advisor.recommend import recommend  # noqa: E402
from advisor.recommend.ruleset import recommend_rules  # noqa: E402

SCENARIOS = [
    ("7B full, 4 x 24 GB", "7B", dict(gpus=4, vram=24), {}, "full"),
    ("gpt2, 1 x 24 GB, seq 1024", "gpt2", dict(gpus=1, vram=24), dict(seq_len=1024), "full"),
    ("Llama-2-7B, 8 x A100-80G, gb 128", "llama-2-7b", dict(gpus=8, gpu="a100-80g"), dict(global_batch=128), "full"),
    ("1.3B, 8 x V100-32G", "1.3B", dict(gpus=8, gpu="v100-32g"), {}, "full"),
    ("7B full, 1 x 24 GB, 64 GB RAM", "7B", dict(gpus=1, vram=24, cpu_ram=64), {}, "full"),
    ("7B auto, 1 x 24 GB, 64 GB RAM", "7B", dict(gpus=1, vram=24, cpu_ram=64), {}, "auto"),
    ("70B, 8 x A100-80G", "70B", dict(gpus=8, gpu="a100-80g"), {}, "full"),
    ("70B, 8 x A100-80G, 512 GB RAM", "70B", dict(gpus=8, gpu="a100-80g", cpu_ram=512), {}, "full"),
    ("13B, 2 nodes x 8 x A100-40G, gb 256", "13B", dict(gpus=8, nodes=2, gpu="a100-40g"), dict(global_batch=256),
     "full"),
    ("Mixtral-8x7B, 8 x H100, nvme", "mixtral-8x7b", dict(gpus=8, gpu="h100-sxm", nvme_path="/nvme"), {}, "full"),
    ("Llama-2-70B inference, 8 x A100-80G", "llama-2-70b", dict(gpus=8, gpu="a100-80g"),
     dict(task="infer", seq_len=4096), "full"),
]


def one(model, hw_kw, tr_kw, method, suggest):
    hw = build_hardware(**hw_kw)
    template = build_training(hw, method="full" if method == "auto" else method, **tr_kw)
    t0 = time.perf_counter()
    rec = recommend(model, hw, template, method=method, precision="auto", checkpointing="auto", suggest=suggest)
    return (time.perf_counter() - t0) * 1000, rec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    runs = ap.parse_args().runs
    recommend_rules()
    for _, model, hw_kw, tr_kw, method in SCENARIOS:      # warm the catalogs and code paths
        one(model, hw_kw, tr_kw, method, False)
    print(f"{'scenario':<40}{'estimates':>10}{'ms':>8}{'max ms':>8}  {'result':<44}{'+suggest ms':>12}")
    worst = 0.0
    for label, model, hw_kw, tr_kw, method in SCENARIOS:
        times, rec = [], None
        for _ in range(runs):
            ms, rec = one(model, hw_kw, tr_kw, method, False)
            times.append(ms)
        assert rec is not None
        med = statistics.median(times)
        worst = max(worst, med)
        if rec.found:
            r = rec.recommendation.model_dump()
            name = r.get("layout") or r["name"]
            off = "+".join(f"{k[8:]}:{v}" for k, v in r.items() if k.startswith("offload_") and v != "none")
            result = f"{name}{' ' + off if off else ''} mb={r['micro_batch_size']}"
            if rec.step_time_seconds:
                result += f" {rec.step_time_seconds:.2f}s"
            extra = ""
        else:
            result = "nothing fits"
            extra = f"{statistics.median(one(model, hw_kw, tr_kw, method, True)[0] for _ in range(3)):.0f}"
        print(f"{label:<40}{rec.candidates_evaluated:>10}{med:>8.1f}{max(times):>8.1f}  {result:<44}{extra:>12}")
    print(f"\nworst median: {worst:.1f} ms (target < 100 ms)")


if __name__ == "__main__":
    main()
