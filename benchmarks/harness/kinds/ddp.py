"""DDP step: rank 0's whole-step peak of torch DDP training in 2 CPU processes (torchrun, gloo).

Each worker trains the case's model (``layers`` decoder layers, fp32, AdamW foreach) under
``torch.nn.parallel.DistributedDataParallel`` for two steps and records the profiler's peak of the second
one. DDP rebuilds its gradient buckets at the start of the second iteration, so the buckets are allocated
inside the profiled window: parameters + Adam states + the window's peak is the whole per-process peak.
Estimated = ``per_gpu.total - per_gpu.overhead`` for ``--strategy ddp`` on ``world`` GPUs.
"""

from __future__ import annotations

import argparse
import gc
import json
from typing import Any

from benchmarks.harness.cases import Case
from benchmarks.harness.kinds import Row

TITLE = "DDP training step (2 CPU processes)"
ORDER = 40
UNIT = "MiB"
SOURCES = ("semantics", "models", "profiling", "launch")
COLUMNS = ("world", "peak moment", "not alive together MiB")
DESCRIPTION = (
    "Rank 0's whole-step peak in real multi-process runs (`torchrun --nproc_per_node 2`, gloo, "
    "`benchmarks/harness/kinds/ddp.py`): torch DDP, fp32, AdamW foreach; DDP rebuilds its buckets in step 2, "
    "so the profiled step holds them. Measured = parameters + Adam states + the profiler's peak of step 2. "
    "Estimated = `per_gpu.total - overhead` for `--strategy ddp` on 2 GPUs.")


def label(case: Case) -> str:
    s = case.settings
    return f"DDP {s['model']} {s['mode']} {s['attn']} s={s['seq']} b={s['batch']} V={case.config()['vocab_size']}"


def worker(case: dict[str, Any]) -> None:
    """One rank of the case (run by torchrun); rank 0 reports ``{"world", "measured", "params",
    "adam_states", "cuda_semantics"}``."""
    import torch
    import torch.distributed as dist

    from benchmarks.harness import launch
    from benchmarks.harness.models import instantiate, make_config
    from benchmarks.harness.profiling import live_curve, mark, profiled, window_peak
    from benchmarks.harness.semantics import cuda_semantics, mode_dtypes

    s, cfg = case["settings"], case["config"]
    dist.init_process_group("gloo")
    wdtype, _ = mode_dtypes(s["mode"])
    config = make_config(cfg, s["attn"], s["layers"])
    model = instantiate(config, s["attn"], wdtype, 0)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-5, foreach=True)
    ids = torch.randint(0, config.vocab_size, (s["batch"], s["seq"]),
                        generator=torch.Generator().manual_seed(dist.get_rank()))

    def step() -> None:
        out = ddp(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()                      # the output stays alive through the step, as in accelerate's loop
        opt.zero_grad(set_to_none=True)
        del out

    with cuda_semantics(s["mode"]) as sem:
        step()
        gc.collect()
        with profiled() as prof:
            mark()
            step()
            mark()
    curve, marks = live_curve(prof)
    base, peak = window_peak(curve, marks)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    states = sum(t.numel() * t.element_size() for st in opt.state.values() for t in st.values()
                 if isinstance(t, torch.Tensor) and t.dim() > 0)
    if dist.get_rank() == 0:
        launch.report({"world": dist.get_world_size(), "measured": params + states + peak - base,
                       "params": params, "adam_states": states, "cuda_semantics": sem.record()})
    dist.destroy_process_group()


def measure(case: Case) -> dict[str, Any]:
    """Launch the case in ``world`` processes; rank 0's measured bytes."""
    from benchmarks.harness import launch

    return launch.launch(__name__, ["--worker", json.dumps(case.identity())], port_base=29500, timeout=900,
                         nproc=case.settings.get("world", 2))


def compare(case: Case, measured: dict[str, Any]) -> Row:
    """Rank 0's peak against dsadvise's ``ddp`` estimate on ``world`` GPUs."""
    from benchmarks.harness.estimates import estimate_for

    g = estimate_for(case, gpus=measured["world"], strategy="ddp", num_layers=case.settings["layers"],
                     vram=80).per_gpu
    return Row(case, measured["measured"], g.total - g.overhead,
               [str(measured["world"]), g.peak_moment or "all terms added", f"{g.phase_overlap / 2**20:.1f}"],
               info={"moment": g.peak_moment, "overlap": g.phase_overlap})


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="one rank of a DDP step case (run by torchrun)")
    ap.add_argument("--worker", required=True, metavar="CASE_JSON")
    worker(json.loads(ap.parse_args().worker))
