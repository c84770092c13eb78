"""The tracer's accuracy and speed table (issue 14): run ``python benchmarks/trace_table.py [--catalog]``.

1. Every causal-LM model_type of tests/trace/cases.yaml at reduced width: parameters of the tracer (meta build)
   against the real model, saved-for-backward bytes of the tracer (fake tensors, prefix per layer kind,
   extrapolated) against the CPU harness (real model, saved_tensors_hooks: benchmarks/harness/kinds/saved.py), trace time.
2. 70B-class configs traced at sequence 4096, bf16 autocast, from scratch (no cache): seconds.
3. ``--catalog``: every catalog model (full width, two layers): traced against the arithmetic (parameters;
   saved bytes where advisor/memory/activations.py replays the family).
Prints markdown tables; the numbers in the issue-14 report come from here.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

import torch  # noqa: E402
import yaml  # noqa: E402

from advisor.trace import TraceSettings, trace_model  # noqa: E402
from advisor.trace.tracer import _ATTN_DROPOUT_KEYS  # noqa: E402
from benchmarks.harness.kinds.saved import _forward_saved  # noqa: E402
from benchmarks.harness.models import instantiate as _instantiate, make_config  # noqa: E402
from benchmarks.harness.semantics import cuda_semantics  # noqa: E402

SEQ = 64


def harness(cfg: dict, attention: str, mode: str) -> tuple[int, int, float]:
    """(parameters, saved bytes, seconds) of the real full-depth model (SDPA: attention dropout off)."""
    start = time.perf_counter()
    config = make_config(cfg, attention, cfg["num_hidden_layers"])
    if attention == "sdpa":
        for key in _ATTN_DROPOUT_KEYS:
            if getattr(config, key, None):
                setattr(config, key, 0.0)
    model = _instantiate(config, attention, torch.bfloat16 if mode.startswith("half") else torch.float32, 0)
    params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, cfg["vocab_size"], (1, SEQ), generator=torch.Generator().manual_seed(0))
    with cuda_semantics(mode, fast_matmul=True):   # as the harness's saved kind measures
        snap, out = _forward_saved(model, mode, ids)
    del out, model
    gc.collect()
    return params, snap.activations, time.perf_counter() - start


def model_types(mode: str) -> None:
    cases = yaml.safe_load((ROOT / "tests" / "trace" / "cases.yaml").read_text())["cases"]
    print(f"\n### Traced vs CPU harness, reduced width, seq {SEQ}, batch 1, {mode}, full fine-tuning\n")
    print("| model_type | layers | kinds | params exact | saved (trace) | saved (harness) | error | trace s |")
    print("|---|---:|---:|:---:|---:|---:|---:|---:|")
    for mt, c in cases.items():
        cfg = dict(c, model_type=mt)
        t0 = time.perf_counter()
        r = trace_model(cfg, TraceSettings(seq_len=SEQ, mode=mode), use_cache=False)
        dt = time.perf_counter() - t0
        params, saved, _ = harness(cfg, r.attention, mode)
        err = (r.activations - saved) / saved
        print(f"| {mt} | {r.num_layers} | {len(set(r.layer_kinds))} | {'yes' if r.parameters.total == params else 'NO'}"
              f" | {r.activations:,} | {saved:,} | {100 * err:+.3f} % | {dt:.1f} |", flush=True)


BIG = {
    "llama-3.1-70b (seq 4096)": "llama-3.1-70b",
    "qwen2.5-72b (seq 4096)": "qwen2.5-72b",
    "qwen3-235b-a22b (seq 4096)": "qwen3-235b-a22b",
    "gemma-3-27b (seq 4096)": "gemma-3-27b",
    "gpt-oss-120b (seq 4096)": "gpt-oss-120b",
}


def big_models() -> None:
    from advisor.datafiles import load_data

    cfgs = {e["name"]: e["config"] for e in load_data("models.yaml")["models"]}
    print("\n### 70B-class traces from scratch (no cache), seq 4096, batch 1, autocast-bf16\n")
    print("| model | layers | prefix traced | parameters | saved GiB | trace s | fast path (replay) GiB | replay s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    from advisor.hf_config import architecture_from_hf_config
    from advisor.memory.activations import REPLAYED_FAMILIES, activation_memory
    from advisor.specs import TrainingSpec

    for label, name in BIG.items():
        t0 = time.perf_counter()
        r = trace_model(cfgs[name], TraceSettings(seq_len=4096, mode="autocast-bf16"), use_cache=False)
        dt = time.perf_counter() - t0
        replay, rdt = "traced", ""
        arch = architecture_from_hf_config(cfgs[name])
        if arch.family in REPLAYED_FAMILIES:
            t0 = time.perf_counter()
            a = activation_memory(arch, TrainingSpec(seq_len=4096, precision="bf16"), "autocast-bf16").activations
            replay, rdt = f"{a / 2**30:.4f} ({a - r.activations:+,} B)", f"{time.perf_counter() - t0:.2f}"
        print(f"| {label} | {r.num_layers} | {r.traced_prefix} | {r.parameters.total:,} | "
              f"{r.activations / 2**30:.4f} | {dt:.1f} | {replay} | {rdt} |", flush=True)


def catalog() -> None:
    from advisor.datafiles import load_data
    from advisor.hf_config import architecture_from_hf_config
    from advisor.memory.activations import REPLAYED_FAMILIES, activation_memory
    from advisor.param_count import count_parameters
    from advisor.specs import TrainingSpec

    print("\n### Catalog: traced vs arithmetic, full width, 2 layers, seq 32, fp32\n")
    print("| model | family | params equal | saved (replay) | saved (trace) | difference | trace s |")
    print("|---|---|:---:|---:|---:|---:|---:|")
    for entry in load_data("models.yaml")["models"]:
        cfg = dict(entry["config"], num_hidden_layers=2)
        if "n_layer" in cfg or cfg["model_type"] == "gpt2":
            cfg["n_layer"] = 2
        arch = architecture_from_hf_config(cfg)
        t0 = time.perf_counter()
        r = trace_model(cfg, TraceSettings(seq_len=32), use_cache=False)
        dt = time.perf_counter() - t0
        same = r.parameters.total == count_parameters(arch).total
        if arch.family in REPLAYED_FAMILIES:
            rep = activation_memory(arch, TrainingSpec(seq_len=32, precision="fp32"), "fp32").activations
            diff = f"{rep - r.activations:+,} B ({100 * (rep - r.activations) / r.activations:+.2f} %)"
            rep_s = f"{rep:,}"
        else:
            rep_s, diff = "traced family", ""
        print(f"| {entry['name']} | {arch.family} | {'yes' if same else 'NO'} | {rep_s} | {r.activations:,} | "
              f"{diff} | {dt:.1f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--catalog", action="store_true", help="also the catalog agreement table")
    ap.add_argument("--mode", default="fp32", help="compute mode of the model_type table")
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument("--big-only", action="store_true", help="only the 70B-class trace-time table")
    args = ap.parse_args()
    if not args.big_only:
        model_types(args.mode)
    if not args.skip_big:
        big_models()
    if args.catalog and not args.big_only:
        catalog()


if __name__ == "__main__":
    main()
