"""DeepSpeed ZeRO step: rank 0's whole-step peak of real ``deepspeed.initialize`` training, 2 CPU processes.

Each case renders dsadvise's own ``ds_config.json`` for the configuration (``advisor.render.render_files``:
the bucket sizes the estimator counts), trains the case's model (bf16, DeepSpeed's mixed precision: 16-bit
model, fp32 master partitions) for two steps under ``deepspeed.initialize`` with ``DS_ACCELERATOR=cpu``
(``deepspeed.zero.Init`` for stage 3), and records the bytes of every tensor storage alive before the
profiled step (a ``gc`` scan: parameters and partitions, master weights, optimizer states, persistent
buffers) plus rank 0's allocator peak during that step (``torch.profiler(profile_memory=True)``).
Measured = the largest such sum over steps 2, 3 and 4 (``PROFILED_STEPS``; all three are stored as
``steps``): the peak of one step varies by up to ~4 % from step to step and run to run, and the largest
is the one a GPU must hold. Estimated = ``per_gpu.total - per_gpu.overhead`` (no CUDA context or fragmentation).

The optimizer is an in-place chunked Adam (:func:`chunked_adam`) standing in for DeepSpeed's FusedAdam, which
the CPU cannot build: FusedAdam's multi_tensor_apply kernel updates in place with no step temporaries (as
the estimator assumes), while torch's AdamW on CPU would allocate partition-sized temporaries a GPU run
never sees.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
from typing import Any

from benchmarks.harness.cases import Case
from benchmarks.harness.kinds import Row

TITLE = "DeepSpeed ZeRO training step (2 CPU processes)"
ORDER = 50
UNIT = "MiB"
SOURCES = ("semantics", "profiling", "launch")
COLUMNS = ("world",)
DESCRIPTION = (
    "Rank 0's whole-step peak in real multi-process runs (`torchrun --nproc_per_node 2`, gloo, "
    "`benchmarks/harness/kinds/zero.py`): `deepspeed.initialize` with dsadvise's own rendered "
    "`ds_config.json`, bf16; the tensors alive before a step by a `gc` scan plus the profiler's peak of "
    "that step, the largest over steps 2-4 (one step's peak varies by up to ~4 % between steps and runs); "
    "an in-place chunked Adam stands in for FusedAdam, which the CPU cannot build. Estimated = "
    "`per_gpu.total - overhead` for 2 GPUs (all terms added: DeepSpeed's step is not yet modeled by moment).")


def label(case: Case) -> str:
    s = case.settings
    return (f"ZeRO-{s['stage']} {s['model']} {s['mode']} {s['attn']} s={s['seq']} b={s['batch']} "
            f"V={case.config()['vocab_size']}")


def model_config(case_or_identity) -> dict[str, Any]:
    """The case's HF config with ``num_hidden_layers`` = the case's ``layers``."""
    if isinstance(case_or_identity, Case):
        return {**case_or_identity.config(), "num_hidden_layers": case_or_identity.settings["layers"]}
    return {**case_or_identity["config"], "num_hidden_layers": case_or_identity["settings"]["layers"]}


def plan(case: Case):
    """(model, hardware, training, strategy) of a case, as dsadvise's API builds them."""
    from advisor.catalog.models import ResolvedModel
    from advisor.hf_config import architecture_from_hf_config
    from advisor.specs import HardwareSpec, StrategySpec, TrainingSpec

    s = case.settings
    arch = architecture_from_hf_config(model_config(case))
    model = ResolvedModel(name=s["model"], architecture=arch, source="config", note="")
    hw = HardwareSpec(gpus_per_node=s.get("world", 2), nodes=1, vram_bytes=80 << 30)
    precision = {"half-bf16": "bf16", "half-fp16": "fp16"}[s["mode"]]
    tr = TrainingSpec(seq_len=s["seq"], micro_batch_size=s["batch"], precision=precision, attention=s["attn"])
    return model, hw, tr, StrategySpec(backend="deepspeed", zero_stage=s["stage"])


def ds_config(case: Case) -> dict[str, Any]:
    """dsadvise's rendered ds_config.json for the case."""
    from advisor.render.render import render_files

    files = render_files(*plan(case), gradient_accumulation_steps=1)
    return json.loads(files["ds_config.json"])


# Steps 2..4 are profiled and the largest peak kept: the same step measured twice differs by up to ~4 %
# (frees and gloo's buffers land at different points of the timeline from one step to the next).
PROFILED_STEPS = 3


def identity(case: Case) -> dict[str, Any]:
    """Part of the case's cache identity: the ds_config.json the engine runs with."""
    return {"ds_config": ds_config(case)}


def chunked_adam():
    """An AdamW optimizer class updating in place, 1M elements at a time: FusedAdam's memory behaviour."""
    import torch

    class ChunkedAdam(torch.optim.Optimizer):
        """AdamW updating in place, 1M elements at a time (no step temporaries beyond a chunk)."""

        def __init__(self, params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
            super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

        @torch.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                b1, b2 = group["betas"]
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    st = self.state[p]
                    if not st:
                        st["step"] = 0
                        st["exp_avg"] = torch.zeros_like(p)
                        st["exp_avg_sq"] = torch.zeros_like(p)
                    st["step"] += 1
                    c1, c2 = 1 - b1 ** st["step"], 1 - b2 ** st["step"]
                    flat = [t.view(-1) for t in (p, p.grad, st["exp_avg"], st["exp_avg_sq"])]
                    for i in range(0, flat[0].numel(), 1 << 20):
                        w, g, m, v = (t[i:i + (1 << 20)] for t in flat)
                        w.mul_(1 - group["lr"] * group["weight_decay"])
                        m.lerp_(g, 1 - b1)
                        v.mul_(b2).addcmul_(g, g, value=1 - b2)
                        w.addcdiv_(m, (v / c2).sqrt_().add_(group["eps"]), value=-group["lr"] / c1)

    return ChunkedAdam


def worker(case: dict[str, Any]) -> None:
    """One rank of the case (run by torchrun); rank 0 reports ``{"world", "measured", "before_step",
    "cuda_semantics"}``."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from benchmarks.harness import launch
    from benchmarks.harness.profiling import live_tensor_bytes, mark, profiled, raw_curve, window_peak
    from benchmarks.harness.semantics import cuda_semantics

    s = case["settings"]
    cfg = model_config(case)
    config = case["ds_config"]
    deepspeed.init_distributed(dist_backend="gloo")
    rank = torch.distributed.get_rank()
    ids = torch.randint(0, cfg["vocab_size"], (s["batch"], s["seq"]), generator=torch.Generator().manual_seed(rank))
    hf = AutoConfig.for_model(**cfg)
    hf._attn_implementation = s["attn"]
    with cuda_semantics(s["mode"]) as sem:
        if s["stage"] == 3:
            with deepspeed.zero.Init(config_dict_or_path=config):
                model = AutoModelForCausalLM.from_config(hf)
        else:
            model = AutoModelForCausalLM.from_config(hf)
        opt = chunked_adam()(model.parameters(), lr=1e-5)
        config = {**config, "zero_allow_untested_optimizer": True}
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=config)

        def step() -> None:
            out = engine(input_ids=ids, labels=ids)
            engine.backward(out.loss)
            engine.step()
            del out

        step()
        per_step = []
        for _ in range(PROFILED_STEPS):
            gc.collect()
            before = live_tensor_bytes()
            if rank != 0:                  # rank 0 is measured; the others only keep the collectives going
                step()
                continue
            with profiled() as prof:
                mark()
                step()
                mark()
            curve, marks = raw_curve(prof)
            base, peak = window_peak(curve, marks)
            per_step.append((before + peak - base, before))
    if rank == 0:
        measured, before = max(per_step)
        launch.report({"world": engine.world_size, "measured": measured, "before_step": before,
                       "steps": [m for m, _ in per_step], "cuda_semantics": sem.record()})
    engine.destroy()


def measure(case: Case) -> dict[str, Any]:
    """Launch the case in ``world`` processes with dsadvise's rendered ds_config; rank 0's measured bytes."""
    from benchmarks.harness import launch

    return launch.launch(__name__, ["--worker", json.dumps(case.identity())], port_base=29600, timeout=900,
                         nproc=case.settings.get("world", 2), env={"DS_ACCELERATOR": "cpu"})


def compare(case: Case, measured: dict[str, Any]) -> Row:
    """Rank 0's peak against ``per_gpu.total - overhead`` of dsadvise's ZeRO estimate."""
    from advisor.memory.core import estimate_memory

    g = estimate_memory(*plan(case)).per_gpu
    return Row(case, measured["measured"], g.total - g.overhead, [str(measured["world"])],
               info={"breakdown": {k: v for k, v in g.breakdown.items() if v}})


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="one rank of a ZeRO step case (run by torchrun)")
    ap.add_argument("--worker", required=True, metavar="CASE_JSON")
    worker(json.loads(ap.parse_args().worker))
