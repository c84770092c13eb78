"""GPU calibration: real training steps on a CUDA device vs dsadvise's estimate.

Runs, in one process (world size 1), a real `transformers` model built from a catalog config (random
weights, fewer layers so it fits) under plain torch (bf16 autocast, AdamW) and under DeepSpeed ZeRO 0-3
(bf16, with the ds_config.json that ``dsadvise generate`` renders for the same case, so estimate and run use
the same buckets), reads torch.cuda.max_memory_allocated / max_memory_reserved after a few steps, and prints
them next to dsadvise's per_gpu.allocated / per_gpu.reserved (like for like):

  case | allocated | estimated allocated | error % | reserved | estimated reserved | error % | reserved/allocated

plus the CUDA context (driver memory in use before the first allocation, from torch.cuda.mem_get_info)
and the allocator overhead (reserved / allocated) that feed advisor/data/overhead.yaml.

Run on a GPU machine:  python benchmarks/gpu_calibrate.py [--model llama-2-7b --layers 4 --seq-len 1024]
Writes the table to stdout and, with --out FILE, as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def build_model(name: str, layers: int):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from advisor.datafiles import load_data

    raw = next(m for m in load_data("models.yaml")["models"] if m["name"] == name)["config"]
    cfg = dict(raw)
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if key in cfg:
            cfg[key] = layers
    config = AutoConfig.for_model(**cfg)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config), cfg


def problem(cfg: dict, strategy: str, seq_len: int, batch: int, vram_gib: float):
    """The specs of one case, as dsadvise builds them (one GPU of ``vram_gib``)."""
    from advisor.api import build_hardware, build_strategy, build_training
    from advisor.catalog.models import ResolvedModel
    from advisor.hf_config import architecture_from_hf_config

    model = ResolvedModel(name="calibration", architecture=architecture_from_hf_config(cfg), source="config",
                          note="")
    hw = build_hardware(gpus=1, vram=vram_gib)
    return model, hw, build_training(hw, precision="bf16", seq_len=seq_len, micro_batch=batch), \
        build_strategy(hw, strategy)


def estimate_for(cfg: dict, strategy: str, seq_len: int, batch: int, vram_gib: float = 1024):
    from advisor.memory.core import estimate_memory

    return estimate_memory(*problem(cfg, strategy, seq_len, batch, vram_gib))


def dsadvise_ds_config(cfg: dict, strategy: str, seq_len: int, batch: int, vram_gib: float) -> dict:
    """The ds_config.json ``dsadvise generate`` renders for this case (its buckets, overlap_comm, bf16, ...):
    the run uses exactly what the estimate assumed."""
    from advisor.render.render import render_files

    files = render_files(*problem(cfg, strategy, seq_len, batch, vram_gib), gradient_accumulation_steps=1)
    ds = json.loads(files["ds_config.json"])
    # the script builds its own optimizer only through the config: keep dsadvise's, else AdamW as the estimate
    ds.setdefault("optimizer", {"type": "AdamW", "params": {"lr": 1e-5}})
    return ds


def run_case(name: str, layers: int, strategy: str, seq_len: int, batch: int, steps: int,
             vram_gib: float = 1024) -> dict:
    import torch

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model, cfg = build_model(name, layers)
    ids = torch.randint(0, cfg.get("vocab_size", 32000), (batch, seq_len), device="cuda")
    if strategy == "single":
        model = model.cuda()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        for _ in range(steps):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    else:
        import deepspeed

        ds_cfg = dsadvise_ds_config(cfg, strategy, seq_len, batch, vram_gib)
        engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_cfg)
        for _ in range(steps):
            loss = engine(input_ids=ids, labels=ids).loss
            engine.backward(loss)
            engine.step()
        engine.destroy()
    torch.cuda.synchronize()
    allocated, reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
    est = estimate_for(cfg, strategy, seq_len, batch, vram_gib).per_gpu
    del model
    # like for like: max_memory_allocated vs per_gpu.allocated, max_memory_reserved vs per_gpu.reserved
    return {"case": f"{name} x{layers} layers {strategy} b{batch} s{seq_len}", "allocated": allocated,
            "reserved": reserved, "estimate_allocated": est.allocated, "estimate_reserved": est.reserved,
            "estimate_total": est.total,
            "error_pct": (est.allocated - allocated) / allocated * 100,
            "reserved_error_pct": (est.reserved - reserved) / reserved * 100,
            "reserved_over_allocated": reserved / allocated}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-3.2-1b")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--strategies", default="single,zero0,zero1,zero2,zero3")
    ap.add_argument("--out")
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        print("torch is not installed", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("no CUDA device: run this on a GPU machine (see docs/calibration.md)", file=sys.stderr)
        return 2
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", _port())
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    free0, total = torch.cuda.mem_get_info()
    torch.zeros(1, device="cuda")
    free1, _ = torch.cuda.mem_get_info()
    context = free0 - free1  # driver-side memory the first CUDA allocation costs (context + cuBLAS lazy)
    rows = [run_case(args.model, args.layers, s, args.seq_len, args.batch, args.steps, total / 2**30)
            for s in args.strategies.split(",")]
    gib = 1024**3
    print(f"device: {torch.cuda.get_device_name()}  total {total / gib:.1f} GiB  CUDA context ≈ "
          f"{context / 2**20:.0f} MiB")
    print(f"{'case':<48}{'alloc GiB':>10}{'est alloc':>10}{'err %':>8}{'reserved':>10}{'est resv':>10}"
          f"{'err %':>8}{'res/alloc':>10}")
    for r in rows:
        print(f"{r['case']:<48}{r['allocated'] / gib:>10.2f}{r['estimate_allocated'] / gib:>10.2f}"
              f"{r['error_pct']:>8.1f}{r['reserved'] / gib:>10.2f}{r['estimate_reserved'] / gib:>10.2f}"
              f"{r['reserved_error_pct']:>8.1f}{r['reserved_over_allocated']:>10.3f}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"device": torch.cuda.get_device_name(), "context_bytes": context, "rows": rows}, fh,
                      indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
