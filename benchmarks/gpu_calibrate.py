"""GPU calibration: real training steps on a CUDA device, max_memory_allocated / max_memory_reserved vs dsadvise.

Two parts, so that the measurement runs on a GPU box that has only torch, transformers, accelerate and peft
(no DeepSpeed, no pydantic, no dsadvise install) and the comparison runs where dsadvise is installed:

  measure (GPU box):  python benchmarks/gpu_calibrate.py measure --out calib.json
                      [--model llama-3.2-1b --layers 4 --seq-len 1024 --batch 2 --steps 3 --cases ...]
  compare (here):     python benchmarks/gpu_calibrate.py compare [calib.json ...]
                      (no file: the committed runs under benchmarks/calibration/*.json)

``measure`` reads the model's config from advisor/data/models.yaml with PyYAML only (random weights, ``--layers``
decoder layers), runs each case in a fresh subprocess (nothing cached from the case before), steps 1..N, resets
the peak statistics after step 1 (the optimizer states exist from then on) and writes, per case,
``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` and the allocator's segments of 100 MiB or more
(``torch.cuda.memory_snapshot``). Without CUDA it runs every case on the CPU (a smoke test: the loops run, the
JSON is written) and records no reading, saying so. The cases (``CASES``):

* ``full-accelerate`` / ``lora-accelerate`` / ``lora-ckpt-accelerate``: ``Accelerator(mixed_precision="bf16")``,
  ``prepare``, ``out = model(...)``, ``accelerator.backward(out.loss)``, ``opt.step()``,
  ``opt.zero_grad(set_to_none=True)``, the output held through the step: what dsadvise assumes (accelerate's
  fp32 copy of the logits included). LoRA: peft r16 all-linear over a bf16 base; ckpt: non-reentrant
  gradient checkpointing on every decoder layer.
* ``full-plain`` / ``lora-plain``: ``torch.autocast`` and only the loss kept (not like for like: dsadvise counts
  accelerate's loop; printed for the difference).
* ``fsdp-wrap``: FSDP (v1) wrapping at world size 1 (NO_SHARD) of the fp32 model, decoder layers auto-wrapped,
  ``sync_module_states=True``, bf16 MixedPrecision; read right after wrapping (``memory_allocated`` /
  ``memory_reserved``), compared with ``advisor.memory.allocator.fsdp_init_events`` simulated.
* ``zero0`` .. ``zero3`` (only where ``import deepspeed`` works): ``deepspeed.initialize`` with the
  ds_config.json ``dsadvise generate`` renders for the same case (so estimate and run use the same buckets);
  rendered in-process when dsadvise imports (DeepSpeed needs pydantic, so it usually does), else read from
  ``--ds-configs DIR`` written here by ``python benchmarks/gpu_calibrate.py render-ds --out DIR``.

``--trace`` also records the allocator's own event history (``torch.cuda.memory._record_memory_history``) from
an empty allocator on; ``compare`` then runs that GPU sequence through dsadvise's allocator model too, which
separates "dsadvise's sequence is wrong" from "the allocator model is wrong" on the GPU itself.

``compare`` estimates each case with dsadvise (the same config and layers, ``--gpus 1``, the device's memory)
and prints measured vs estimated, like for like (allocated vs ``per_gpu.allocated``, reserved vs
``per_gpu.reserved``). Results and their history: docs/calibration.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = Path(__file__).with_name("calibration")
GIB = 2 ** 30

# case -> what it runs (the estimate side reads the same table)
CASES: dict[str, dict] = {
    "full-accelerate": {"method": "full", "loop": "accelerate"},
    "lora-accelerate": {"method": "lora", "loop": "accelerate"},
    "lora-ckpt-accelerate": {"method": "lora", "loop": "accelerate", "checkpointing": "full"},
    "full-plain": {"method": "full", "loop": "plain"},
    "lora-plain": {"method": "lora", "loop": "plain"},
    "fsdp-wrap": {"method": "full", "loop": "fsdp-wrap"},
    "zero0": {"method": "full", "loop": "deepspeed", "strategy": "zero0"},
    "zero1": {"method": "full", "loop": "deepspeed", "strategy": "zero1"},
    "zero2": {"method": "full", "loop": "deepspeed", "strategy": "zero2"},
    "zero3": {"method": "full", "loop": "deepspeed", "strategy": "zero3"},
}
DEFAULT_CASES = ("full-accelerate", "lora-accelerate", "lora-ckpt-accelerate", "full-plain", "lora-plain",
                 "fsdp-wrap", "zero0", "zero1", "zero2", "zero3")
LORA_RANK = 16


# ---------------------------------------------------------------------------------------------------------
# measuring part: torch, transformers, accelerate, peft and PyYAML only
# ---------------------------------------------------------------------------------------------------------
def catalog_config(name: str, layers: int, overrides: dict | None = None) -> dict:
    """The HF config dict of ``name`` in advisor/data/models.yaml with ``layers`` decoder layers."""
    import yaml

    for entry in yaml.safe_load((ROOT / "advisor" / "data" / "models.yaml").read_text())["models"]:
        if entry["name"] == name or name in entry.get("aliases", ()):
            cfg = dict(entry["config"])
            break
    else:
        raise SystemExit(f"{name!r} is not in advisor/data/models.yaml")
    cfg.update(overrides or {})
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if key in cfg:
            cfg[key] = layers
    cfg["num_hidden_layers"] = layers
    return cfg


def _build(cfg: dict, dtype, device):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    d = dict(cfg)
    config = AutoConfig.for_model(d.pop("model_type"), **d)
    config._attn_implementation = "sdpa"
    config.use_cache = False
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).to(dtype=dtype).to(device)


def _segments(torch) -> list[int]:
    """Sizes (MiB) of the allocator's segments of 100 MiB or more (CUDA only)."""
    return sorted((s["total_size"] >> 20 for s in torch.cuda.memory_snapshot() if s["total_size"] >= 100 << 20),
                  reverse=True)


def _start_trace(torch, cuda: bool, trace: bool) -> bool:
    """Record the caching allocator's own event history (CUDA only) from an empty allocator on."""
    if not (cuda and trace):
        return False
    torch.cuda.memory._record_memory_history(enabled="all", context=None, stacks="python", max_entries=1_000_000)
    return True


def _read_trace(torch) -> list:
    """The recorded history as ``[action, addr, size, stream]`` rows: ``alloc`` (the requested bytes),
    ``free_completed`` (the block is back in its pool) and ``segment_alloc`` (a cudaMalloc)."""
    snap = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    keep = ("alloc", "free_completed", "segment_alloc", "segment_map")
    return [[e["action"], e["addr"], e["size"], e.get("stream", 0)]
            for e in (snap.get("device_traces") or [[]])[0] if e["action"] in keep]


def _train_case(case: str, cfg: dict, seq_len: int, batch: int, steps: int, device: str,
                trace: bool = False) -> dict:
    """One training case (``CASES``): steps 1..``steps``, peak statistics reset after step 1."""
    import torch

    spec = CASES[case]
    cuda = device == "cuda"
    lora = spec["method"] == "lora"
    tracing = _start_trace(torch, cuda, trace)
    model = _build(cfg, torch.bfloat16 if lora else torch.float32, device)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=LORA_RANK, lora_alpha=32, target_modules="all-linear",
                                                 lora_dropout=0.0))
    if spec.get("checkpointing") == "full":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora:
            model.enable_input_require_grads()
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)  # CUDA: foreach
    ids = torch.randint(0, cfg["vocab_size"], (batch, seq_len), device=device)
    if spec["loop"] == "accelerate":
        from accelerate import Accelerator

        acc = Accelerator(mixed_precision="bf16", cpu=not cuda)
        model, opt = acc.prepare(model, opt)

        def step():
            out = model(input_ids=ids, labels=ids)
            acc.backward(out.loss)
            opt.step()                       # `out` (accelerate's fp32 logits) is still held here
            opt.zero_grad(set_to_none=True)
            return out.loss.item()
    else:
        def step():
            with torch.autocast(device, dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.item()

    loss = step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(steps - 1):
        loss = step()
    if not cuda:
        return {"loss": loss, "steps": steps}
    torch.cuda.synchronize()
    row = {"allocated": torch.cuda.max_memory_allocated(), "reserved": torch.cuda.max_memory_reserved(),
           "segments_mib": _segments(torch)}
    if tracing:
        row["trace"] = _read_trace(torch)
    return row


def _fsdp_wrap_case(cfg: dict, device: str) -> dict:
    """FSDP (v1) wrapping of the fp32 model at world size 1 (CUDA only): bytes right after wrapping."""
    import torch

    if device != "cuda":
        return {"skipped": "FSDP wrapping with device_id needs CUDA"}
    import functools

    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel, MixedPrecision, ShardingStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", _port())
    dist.init_process_group("nccl", rank=0, world_size=1)
    model = _build(cfg, torch.float32, "cpu")
    layer_cls = type(model.model.layers[0])
    torch.cuda.reset_peak_memory_stats()
    wrapped = FullyShardedDataParallel(
        model, auto_wrap_policy=functools.partial(ModuleWrapPolicy, {layer_cls})(),
        sharding_strategy=ShardingStrategy.NO_SHARD, device_id=torch.cuda.current_device(),
        sync_module_states=True, mixed_precision=MixedPrecision(param_dtype=torch.bfloat16,
                                                                reduce_dtype=torch.bfloat16))
    torch.cuda.synchronize()
    out = {"allocated": torch.cuda.max_memory_allocated(), "reserved": torch.cuda.memory_reserved(),
           "segments_mib": _segments(torch)}
    del wrapped
    dist.destroy_process_group()
    return out


def _deepspeed_case(case: str, cfg: dict, seq_len: int, batch: int, steps: int, device: str,
                    ds_configs: str | None, vram_gib: float) -> dict:
    """DeepSpeed ZeRO-n at world size 1 with dsadvise's ds_config (CUDA only)."""
    try:
        import deepspeed
    except ImportError:
        return {"skipped": "DeepSpeed is not installed"}
    if device != "cuda":
        return {"skipped": "DeepSpeed's engine needs CUDA here"}
    import torch

    strategy = CASES[case]["strategy"]
    try:
        ds_cfg = render_ds_config(cfg, strategy, seq_len, batch, vram_gib)
    except ImportError:
        if not ds_configs:
            return {"skipped": "dsadvise does not import here: give --ds-configs DIR (render-ds writes it)"}
        ds_cfg = json.loads((Path(ds_configs) / f"ds_config_{strategy}.json").read_text())
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE"):
        os.environ.setdefault(key, {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": _port()}.get(key, "0" if key != "WORLD_SIZE" else "1"))
    model = _build(cfg, torch.float32, "cpu")
    ids = torch.randint(0, cfg["vocab_size"], (batch, seq_len), device=device)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_cfg)
    for i in range(steps):
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
        if i == 0:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    return {"allocated": torch.cuda.max_memory_allocated(), "reserved": torch.cuda.max_memory_reserved(),
            "segments_mib": _segments(torch), "ds_config": ds_cfg}


def _port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def measure_one(args) -> dict:
    """One case, in this process: the row ``measure`` collects."""
    import torch

    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    cfg = catalog_config(args.model, args.layers, json.loads(args.config_overrides or "{}"))
    loop = CASES[args.case]["loop"]
    if loop == "fsdp-wrap":
        row = _fsdp_wrap_case(cfg, device)
    elif loop == "deepspeed":
        row = _deepspeed_case(args.case, cfg, args.seq_len, args.batch, args.steps, device, args.ds_configs,
                              args.vram_gib)
    else:
        row = _train_case(args.case, cfg, args.seq_len, args.batch, args.steps, device, args.trace)
    if device != "cuda" and "skipped" not in row:
        row["skipped"] = "no CUDA device: the loop ran on the CPU, no allocator reading"
    return {"case": args.case, **row}


def measure(args) -> int:
    """Every case in its own subprocess; the JSON of the run to ``--out`` (and stdout)."""
    import torch

    cuda = torch.cuda.is_available() and not args.cpu
    device = {"name": torch.cuda.get_device_name(0), "total_bytes": torch.cuda.get_device_properties(0).total_memory} \
        if cuda else {"name": "cpu (smoke run: no allocator readings)", "total_bytes": None}
    versions = {"torch": torch.__version__}
    for mod in ("transformers", "accelerate", "peft", "deepspeed"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = None
    vram = (device["total_bytes"] or 80 * GIB) / GIB
    rows = []
    for case in args.cases.split(","):
        if case not in CASES:
            raise SystemExit(f"unknown case {case!r}; choose from {', '.join(CASES)}")
        cmd = [sys.executable, __file__, "measure-one", "--case", case, "--model", args.model,
               "--layers", str(args.layers), "--seq-len", str(args.seq_len), "--batch", str(args.batch),
               "--steps", str(args.steps), "--vram-gib", str(vram)]
        cmd += ["--cpu"] if args.cpu else []
        cmd += ["--trace"] if args.trace else []
        cmd += ["--ds-configs", args.ds_configs] if args.ds_configs else []
        cmd += ["--config-overrides", args.config_overrides] if args.config_overrides else []
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode or not lines:
            row = {"case": case, "skipped": f"failed (exit {proc.returncode}): "
                                            f"{(proc.stderr.strip().splitlines() or ['?'])[-1][:300]}"}
        else:
            row = json.loads(lines[-1])
        print(f"{case}: " + (row["skipped"] if "skipped" in row else
                             f"allocated {row['allocated'] / GIB:.3f} GiB, reserved {row['reserved'] / GIB:.3f} GiB"),
              file=sys.stderr)
        rows.append(row)
    out = {"device": device, "versions": versions,
           "settings": {"model": args.model, "layers": args.layers, "seq_len": args.seq_len, "batch": args.batch,
                        "steps": args.steps, "lora_rank": LORA_RANK,
                        "config_overrides": json.loads(args.config_overrides or "{}")},
           "rows": rows}
    text = json.dumps(out, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


# ---------------------------------------------------------------------------------------------------------
# comparing part: needs dsadvise
# ---------------------------------------------------------------------------------------------------------
def _resolved(settings: dict):
    from advisor.catalog.models import ResolvedModel
    from advisor.hf_config import architecture_from_hf_config

    cfg = catalog_config(settings["model"], settings["layers"], settings.get("config_overrides"))
    return ResolvedModel(name=f"{settings['model']} x{settings['layers']} layers",
                         architecture=architecture_from_hf_config(cfg), source="config", note="")


def _specs(settings: dict, case: str, vram_gib: float):
    from advisor.api import build_hardware, build_strategy, build_training

    spec = CASES[case]
    hw = build_hardware(gpus=1, vram=vram_gib)
    training = build_training(hw, precision="bf16", seq_len=settings["seq_len"], micro_batch=settings["batch"],
                              method=spec["method"], lora_rank=settings.get("lora_rank", LORA_RANK),
                              checkpointing=spec.get("checkpointing", "none"))
    return hw, training, build_strategy(hw, spec.get("strategy", "single"))


def render_ds_config(cfg_or_settings, strategy: str, seq_len: int, batch: int, vram_gib: float) -> dict:
    """The ds_config.json ``dsadvise generate`` renders for this case (raises ImportError without dsadvise)."""
    from advisor.api import build_hardware, build_strategy, build_training
    from advisor.catalog.models import ResolvedModel
    from advisor.hf_config import architecture_from_hf_config
    from advisor.render.render import render_files

    model = ResolvedModel(name="calibration", architecture=architecture_from_hf_config(cfg_or_settings),
                          source="config", note="")
    hw = build_hardware(gpus=1, vram=vram_gib)
    files = render_files(model, hw, build_training(hw, precision="bf16", seq_len=seq_len, micro_batch=batch),
                         build_strategy(hw, strategy), gradient_accumulation_steps=1)
    ds = json.loads(files["ds_config.json"])
    ds.setdefault("optimizer", {"type": "AdamW", "params": {"lr": 1e-5}})   # the estimate's AdamW
    return ds


def estimate_case(settings: dict, case: str, vram_gib: float) -> tuple[int, int, str]:
    """(allocated, reserved, how) dsadvise estimates for ``case`` (bytes)."""
    spec = CASES[case]
    model = _resolved(settings)
    hw, training, strategy = _specs(settings, case, vram_gib)
    if spec["loop"] == "fsdp-wrap":
        from advisor.memory.allocator import _fsdp_units, fsdp_init_events, simulate

        fsdp_strategy = __import__("advisor.api", fromlist=["build_strategy"]).build_strategy(hw, "fsdp-full")
        units = _fsdp_units(model.architecture, training, fsdp_strategy)
        st = simulate(fsdp_init_events([list(u) for u in units], 1, True))
        return st.peak_allocated, st.peak_reserved, "fsdp_init_events simulated"
    from advisor.memory.core import estimate_memory

    g = estimate_memory(model, hw, training, strategy).per_gpu
    how = "per_gpu" + ("  (not like for like: dsadvise counts accelerate's loop)" if spec["loop"] == "plain" else "")
    return g.allocated, g.reserved, how


def trace_events(trace: list) -> tuple[list[tuple[str, object, int]], int, int]:
    """A recorded allocator history (``measure --trace``) as the simulator's events (one stream: the training
    cases run on one), with the number and bytes of the segments the real allocator cudaMalloc'ed."""
    events: list[tuple[str, object, int]] = []
    live: dict[int, tuple] = {}
    segments = seg_bytes = 0
    for action, addr, size, _stream in trace:
        if action == "alloc":
            key = (addr, len(events))
            live[addr] = key
            events.append(("a", key, size))
        elif action == "free_completed" and addr in live:
            events.append(("f", live.pop(addr), 0))
        elif action in ("segment_alloc", "segment_map"):
            segments += 1
            seg_bytes += size
    return events, segments, seg_bytes


def compare(paths: list[str]) -> int:
    files = [Path(p) for p in paths] or sorted(RUNS.glob("*.json"))
    if not files:
        print("no calibration run: give a JSON file written by `measure`", file=sys.stderr)
        return 2
    for path in files:
        try:
            json.loads(path.read_text())["rows"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"{path}: not a run written by `measure` ({type(exc).__name__})", file=sys.stderr)
            return 2
    errors: list[tuple[str, float]] = []
    for path in files:
        run = json.loads(path.read_text())
        s = run["settings"]
        vram = (run["device"].get("total_bytes") or 80 * GIB) / GIB
        print(f"{path.name}: {run['device']['name']}; {s['model']} x{s['layers']} layers, batch {s['batch']} x "
              f"{s['seq_len']} tokens, bf16, {s['steps']} steps; " +
              ", ".join(f"{k} {v}" for k, v in run["versions"].items() if v))
        print(f"{'case':<24}{'alloc GiB':>10}{'est':>8}{'err %':>8}{'reserved':>10}{'est':>8}{'err %':>8}  estimate")
        for row in run["rows"]:
            case = row["case"]
            alloc, resv, how = estimate_case(s, case, vram)
            if "skipped" in row:
                print(f"{case:<24}{'-':>10}{alloc / GIB:>8.2f}{'':>8}{'-':>10}{resv / GIB:>8.2f}{'':>8}  "
                      f"not measured: {row['skipped']}")
                continue
            ea = 100 * (alloc - row["allocated"]) / row["allocated"]
            er = 100 * (resv - row["reserved"]) / row["reserved"]
            if CASES[case]["loop"] != "plain":
                errors += [(f"{path.name}:{case}:allocated", ea), (f"{path.name}:{case}:reserved", er)]
            print(f"{case:<24}{row['allocated'] / GIB:>10.2f}{alloc / GIB:>8.2f}{ea:>+8.1f}{row['reserved'] / GIB:>10.2f}"
                  f"{resv / GIB:>8.2f}{er:>+8.1f}  {how}")
            if row.get("trace"):
                from advisor.memory.allocator import simulate

                events, segs, seg_bytes = trace_events(row["trace"])
                st = simulate(events)
                print(f"{'  GPU sequence, simulated':<24}{row['allocated'] / GIB:>10.2f}{st.peak_allocated / GIB:>8.2f}"
                      f"{100 * (st.peak_allocated / row['allocated'] - 1):>+8.1f}{row['reserved'] / GIB:>10.2f}"
                      f"{st.peak_reserved / GIB:>8.2f}{100 * (st.peak_reserved / row['reserved'] - 1):>+8.1f}  the "
                      f"allocator model on the GPU's own events ({segs} cudaMallocs, {seg_bytes / GIB:.2f} GiB; "
                      f"simulated {st.segments})")
        print()
    if errors:
        worst = min(errors, key=lambda e: e[1])
        print(f"like-for-like readings: {len(errors)}; worst low {worst[1]:+.1f} % ({worst[0]}); "
              f"worst high {max(e for _, e in errors):+.1f} %")
    return 0


def render_ds(args) -> int:
    cfg = catalog_config(args.model, args.layers, json.loads(args.config_overrides or "{}"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for strategy in ("zero0", "zero1", "zero2", "zero3"):
        path = out / f"ds_config_{strategy}.json"
        path.write_text(json.dumps(render_ds_config(cfg, strategy, args.seq_len, args.batch, args.vram_gib),
                                   indent=1) + "\n")
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    def settings(p):
        p.add_argument("--model", default="llama-3.2-1b")
        p.add_argument("--layers", type=int, default=4)
        p.add_argument("--seq-len", type=int, default=1024)
        p.add_argument("--batch", type=int, default=2)
        p.add_argument("--steps", type=int, default=3)
        p.add_argument("--config-overrides", help="JSON merged into the model config (e.g. a smaller width)")
        p.add_argument("--cpu", action="store_true", help="run on the CPU even if CUDA is there (smoke test)")
        p.add_argument("--ds-configs", help="folder of ds_config_zero{0..3}.json (render-ds) for the ZeRO cases")
        p.add_argument("--trace", action="store_true",
                       help="also record the allocator's event history (training cases, CUDA): compare then runs "
                            "the GPU's own allocation sequence through dsadvise's allocator model")

    m = sub.add_parser("measure", help="run the cases (GPU box: torch/transformers/accelerate/peft)")
    settings(m)
    m.add_argument("--cases", default=",".join(DEFAULT_CASES))
    m.add_argument("--out")
    one = sub.add_parser("measure-one", help=argparse.SUPPRESS)
    settings(one)
    one.add_argument("--case", required=True)
    one.add_argument("--vram-gib", type=float, default=80.0)
    c = sub.add_parser("compare", help="measured vs dsadvise's estimate (needs dsadvise)")
    c.add_argument("files", nargs="*")
    r = sub.add_parser("render-ds", help="write dsadvise's ds_config for each ZeRO case (needs dsadvise)")
    settings(r)
    r.add_argument("--vram-gib", type=float, default=80.0)
    r.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.cmd == "measure":
        return measure(args)
    if args.cmd == "measure-one":
        print(json.dumps(measure_one(args)))
        return 0
    if args.cmd == "render-ds":
        return render_ds(args)
    return compare(args.files)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
