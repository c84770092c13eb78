"""DeepSpeed ZeRO step: rank 0's whole-step peak of real ``deepspeed.initialize`` training, 2 CPU processes.

Each case renders dsadvise's own ``ds_config.json`` for the configuration (``advisor.render.render_files``:
the bucket sizes the estimator counts), trains the case's model (bf16, DeepSpeed's mixed precision: 16-bit
model, fp32 master partitions) for two steps under ``deepspeed.initialize`` with ``DS_ACCELERATOR=cpu``
(``deepspeed.zero.Init`` for stage 3), and records the bytes of every tensor storage alive before the
profiled step (a ``gc`` scan: parameters and partitions, master weights, optimizer states, persistent
buffers) plus rank 0's allocator peak during that step (``torch.profiler(profile_memory=True)``).
Measured = the largest such sum over steps 2, 3 and 4 (``PROFILED_STEPS``; all three are stored as
``steps``): the peak of one step varies by up to ~4 % from step to step and run to run, and the largest
is the one a GPU must hold (with the collectives patched below, the three agree). Estimated =
``per_gpu.total - per_gpu.overhead`` (no CUDA context or fragmentation).

DeepSpeed's collectives run with CUDA's semantics (:func:`cuda_semantics_of_gloo_collectives`, patched in every
rank before ``deepspeed.init_distributed``, recorded as the ``gloo_collectives`` patch with its call counts):
each input is released when the synchronous call returns, as NCCL with the caching allocator's
``record_stream`` does, where gloo's work object could keep a gradient DeepSpeed had dropped alive into the
step; gathers, reduce-scatters and coalesced all-reduces run as in-place all-reduces, without the full-size
temporaries only gloo allocates. ``benchmarks/engine_steps.py`` applies the same patch to its ZeRO cases.

The optimizer is an in-place chunked Adam (:func:`chunked_adam`) standing in for DeepSpeed's FusedAdam, which
the CPU cannot build: FusedAdam's multi_tensor_apply kernel updates in place with no step temporaries (as
the estimator assumes), while torch's AdamW on CPU would allocate partition-sized temporaries a GPU run
never sees.
"""

from __future__ import annotations

import argparse
import gc
from collections import Counter
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
    "`ds_config.json`, bf16 (ZeRO-3 under `deepspeed.zero.Init`); the tensors alive before a step by a `gc` "
    "scan plus the profiler's peak of that step, the largest over steps 2-4; an in-place chunked Adam stands "
    "in for FusedAdam, which the CPU cannot build. DeepSpeed's collectives run with CUDA's semantics "
    "(`cuda_semantics_of_gloo_collectives`): every input is released when the synchronous call returns, as "
    "NCCL with the caching allocator's `record_stream` does (under plain gloo its work object kept 16-bit "
    "gradients DeepSpeed had dropped, by load, so ZeRO-1/2 peaks moved by whole gradients from step to step: "
    "ZeRO-1 measured 248.6/250.5/255.0 MiB), and gathers, reduce-scatters and coalesced all-reduces run as "
    "in-place all-reduces, without gloo's full-size temporaries; with it steps 2-4 measure the same bytes. "
    "Estimated = `per_gpu.total - overhead` for 2 GPUs: DeepSpeed's step modeled by moment (forward, "
    "backward, optimizer step; docs/memory-model.md), the estimate `benchmarks/engine_steps.py` compares "
    "phase by phase.")


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


# Steps 2..4 are profiled and the largest peak kept: under plain gloo the same step measured twice differed by
# up to ~4 % (gradients held by gloo's work objects, freed later by load); with cuda_semantics_of_gloo_collectives
# the three agree to the byte, and the largest is still the one reported.
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


def cuda_semantics_of_gloo_collectives(calls) -> None:
    """CUDA's semantics for the collectives DeepSpeed's ZeRO runs (patched in this process, before
    ``deepspeed.init_distributed``: its ``TorchBackend`` keeps ``torch.distributed.all_gather_into_tensor``
    from then on, which calls ``all_gather_single`` at call time). ``calls`` (a Counter) counts each patched
    call and each time gloo was found still holding a tensor when its collective had returned.

    1. **Inputs released when the call returns.** On CUDA, a tensor handed to a synchronous (or waited-for)
       NCCL collective is only ``record_stream``-ed on the NCCL stream (torch ``ProcessGroupNCCL.cpp``, the
       default ``TORCH_NCCL_AVOID_RECORD_STREAMS=0``), and the copy of the work the watchdog keeps carries no
       tensors (``WorkNCCL``'s copy constructor leaves ``outputs_`` behind): when DeepSpeed drops its last
       reference, ``CUDACachingAllocator::free`` lowers ``allocated_bytes`` at once (a block with recorded
       streams is reused once their events complete). Under gloo the work object holds its input tensors
       until gloo's worker thread destroys it (``ProcessGroupGloo::runLoop`` resets ``workInProgress_`` only
       after the work has run and marked its future, i.e. after the caller's ``wait`` returned), so a
       16-bit gradient DeepSpeed has dropped (``param.grad = None`` after ``average_tensor``'s all_reduce in
       stage_1_and_2.py; the flattened bucket of ``allreduce_bucket``) lived on, later under load, and its
       free was recorded after the step or on no profiled thread at all: the ZeRO-1/2 steps measured whole
       gradients more from step to step (docs/memory-model.md). Each collective below therefore hands gloo
       fresh aliases of the caller's tensors (``detach``: the same storage), waits for the work, and returns
       only once gloo's worker has dropped them (the storages' use counts back to what they were before the
       call): the storage is then freed exactly when DeepSpeed drops it, on the main thread, as on CUDA.
       ``async_op=True`` calls run the same way and return a completed handle (DeepSpeed only ``wait()``s
       on them; the buffers they fill are allocated by DeepSpeed before the call, so the peak is the same).
    2. **No gloo-only temporaries.** NCCL reduces and gathers in place of the user's buffers (its scratch is
       not a torch allocation); gloo's ``all_gather_single`` gathers into a full-size flat temporary and
       copies it out (40 MiB for ZeRO-1's 16-bit group here, on gloo's thread), its ``reduce_scatter_single``
       copies the whole input first, and its ``allreduce_coalesced`` flattens the tensors into one. They are
       done with gloo's in-place ``all_reduce`` instead: the gather zeroes the other ranks' chunks of the
       output, puts this rank's input in its own chunk and sums (x + 0 is exact); the reduce-scatter sums the
       input in place and copies this rank's chunk out (DeepSpeed's ``reduce_scatter_coalesced`` passes that
       very chunk as the output); ``all_reduce_coalesced`` reduces each tensor in place, as NCCL's
       ``allreduce_coalesced`` does (one ``ncclAllReduce`` per tensor in a group).
    """
    import time

    import torch
    import torch.distributed as dist
    import torch.distributed.distributed_c10d as c10d

    all_reduce, reduce = c10d.all_reduce, c10d.reduce

    def use_count(storage) -> int:
        return torch._C._storage_Use_Count(storage._cdata)

    def run(name: str, collective, tensors) -> None:
        """``collective(*aliases)`` (async) waited for; returns once gloo holds none of the aliases."""
        calls[f"gloo {name}"] += 1
        storages = [t.untyped_storage() for t in tensors]
        base = [use_count(s) for s in storages]
        aliases = [t.detach() for t in tensors]
        work = collective(*aliases)
        work.wait()
        del work, aliases
        if any(use_count(s) > b for s, b in zip(storages, base)):
            calls["gloo still held a tensor when its collective returned"] += 1
            deadline = time.monotonic() + 60
            while any(use_count(s) > b for s, b in zip(storages, base)):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"gloo kept the tensors of a finished {name} for a minute")
                time.sleep(1e-4)

    class Done:
        """The handle of an ``async_op=True`` call: the collective has completed and released its tensors."""

        def wait(self, timeout=None) -> bool:
            return True

        def is_completed(self) -> bool:
            return True

    def result(async_op: bool):
        return Done() if async_op else None

    def patched_all_reduce(tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):
        run("all_reduce", lambda t: all_reduce(t, op=op, group=group, async_op=True), [tensor])
        return result(async_op)

    def patched_reduce(tensor, dst=None, op=dist.ReduceOp.SUM, group=None, async_op=False, group_dst=None):
        run("reduce", lambda t: reduce(t, dst, op=op, group=group, async_op=True, group_dst=group_dst), [tensor])
        return result(async_op)

    def patched_all_reduce_coalesced(tensors, op=dist.ReduceOp.SUM, group=None, async_op=False):
        for tensor in tensors:
            run("all_reduce_coalesced", lambda t: all_reduce(t, op=op, group=group, async_op=True), [tensor])
        return result(async_op)

    def patched_all_gather_single(output_tensor, input_tensor, group=None, async_op=False):
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        chunks = output_tensor.view(-1).chunk(world)
        for r, chunk in enumerate(chunks):
            if r != rank:
                chunk.zero_()
        own = chunks[rank]
        if own.data_ptr() != input_tensor.data_ptr():
            own.copy_(input_tensor.view(-1))
        run("all_gather_single", lambda t: all_reduce(t, group=group, async_op=True), [output_tensor])
        return result(async_op)

    def patched_reduce_scatter_single(output, input, op=dist.ReduceOp.SUM, group=None, async_op=False):
        run("reduce_scatter_single", lambda t: all_reduce(t, op=op, group=group, async_op=True), [input])
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        own = input.view(-1).chunk(world)[rank]
        if own.data_ptr() != output.data_ptr():
            output.view(-1).copy_(own)
        return result(async_op)

    for mod in (dist, c10d):
        mod.all_reduce = patched_all_reduce
        mod.reduce = patched_reduce
        mod.all_reduce_coalesced = patched_all_reduce_coalesced
        mod.all_gather_single = patched_all_gather_single
        mod.reduce_scatter_single = patched_reduce_scatter_single


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
    gloo_calls: Counter = Counter()
    cuda_semantics_of_gloo_collectives(gloo_calls)
    deepspeed.init_distributed(dist_backend="gloo")
    rank = torch.distributed.get_rank()
    ids = torch.randint(0, cfg["vocab_size"], (s["batch"], s["seq"]), generator=torch.Generator().manual_seed(rank))
    hf = AutoConfig.for_model(**cfg)
    hf._attn_implementation = s["attn"]
    with cuda_semantics(s["mode"]) as sem:
        if s["stage"] == 3:
            # zero.Init swaps torch.Tensor.__new__; torch._dynamo refuses to register its polyfills when it is
            # first imported inside (signature mismatch): import it before.
            import torch._dynamo  # noqa: F401
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
        record = sem.record()
        record["patches"].append("gloo_collectives")
        record["calls"] = dict(sorted({**record["calls"], **gloo_calls}.items()))
        launch.report({"world": engine.world_size, "measured": measured, "before_step": before,
                       "steps": [m for m, _ in per_step], "cuda_semantics": record})
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
