"""Whole-step peak of real DeepSpeed ZeRO-1/2/3 and torch FSDP engines (2 CPU processes, gloo), by moment,
against dsadvise's estimate.

Usage::

    python benchmarks/engine_steps.py                    # every case (~1 minute each on 2 cores)
    python benchmarks/engine_steps.py --only zero1-offload --verbose

Each case trains a small Llama (h=512, 4 layers) for two steps in 2 processes (``torchrun``, gloo,
``DS_ACCELERATOR=cpu``) and profiles rank 0's second step with marks between forward, backward and step, so
the table shows the peak of each phase as well as the whole step. Measured = the bytes of every tensor storage
alive before the step (a ``gc`` scan) + the profiler's peak above that level (``benchmarks.harness.profiling``:
``live_tensor_bytes`` and ``raw_curve``).

* ZeRO: ``deepspeed.initialize`` with dsadvise's own rendered ``ds_config.json`` (bf16), plus the case's
  ``zero_optimization`` overrides (a small ``sub_group_size``; ``offload_optimizer``). The optimizer is
  the harness's in-place chunked Adam (``benchmarks.harness.kinds.zero.chunked_adam``) (FusedAdam's memory behaviour; CPU cannot build FusedAdam).
  DeepSpeed's collectives run with CUDA's semantics (``benchmarks.harness.kinds.zero.cuda_semantics_of_gloo_collectives``:
  each input released when the synchronous call returns, no gloo-only gather/scatter temporaries).
  With optimizer offload the "GPU" and the offload target are the same CPU here, so the estimate compared is
  ``per_gpu`` + the offloaded states of one rank (master, moments, fp32 gradient partition, no 1.5 buffer
  factor); the backward phase shows the 16-bit gradients that ZeRO-1 keeps until the boundary.
* FSDP: ``torch.distributed.fsdp.FullyShardedDataParallel`` as accelerate builds it (FSDP1, one unit per
  decoder layer + the root, ``MixedPrecision(param_dtype=bf16, reduce_dtype=bf16, buffer_dtype=bf16)``,
  ``BACKWARD_PRE`` prefetch, fp32 sharded parameters, ``use_orig_params=True``) with accelerate's autocast
  around the forward and its ``convert_outputs_to_fp32`` on the output, and ``torch.optim.AdamW(foreach=True)``
  (CUDA's default). The unsharded gradient each unit reduce-scatters is freed when the collective returns, as
  on CUDA (``_cuda_release_of_reduce_scatter_inputs``: gloo's work object could keep it into the step).

Estimated = ``per_gpu.total - per_gpu.overhead`` (no CUDA context, NCCL or fragmentation on CPU).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from benchmarks.harness import launch as two_process  # noqa: E402

# name: engine, stage / sharding, seq, vocab, zero_optimization overrides, estimator strategy extras
CASES: dict[str, dict] = {
    "zero1": dict(engine="zero", stage=1, seq=256, vocab=8000),
    "zero2": dict(engine="zero", stage=2, seq=256, vocab=8000),
    "zero3": dict(engine="zero", stage=3, seq=256, vocab=8000),
    "zero1-long": dict(engine="zero", stage=1, seq=1024, vocab=32000),
    "zero2-long": dict(engine="zero", stage=2, seq=1024, vocab=32000),
    "zero3-long": dict(engine="zero", stage=3, seq=1024, vocab=32000),
    # sub_group_size far below the 11.6 M-element partition: the fp32 step gradient is built per sub group
    "zero3-subgroup": dict(engine="zero", stage=3, seq=256, vocab=32000, sub_group_size=1_000_000),
    "zero1-offload": dict(engine="zero", stage=1, seq=256, vocab=8000, offload="cpu"),
    "zero2-offload": dict(engine="zero", stage=2, seq=256, vocab=8000, offload="cpu"),
    "fsdp-full": dict(engine="fsdp", sharding="FULL_SHARD", seq=256, vocab=8000),
    "fsdp-grad-op": dict(engine="fsdp", sharding="SHARD_GRAD_OP", seq=256, vocab=8000),
    "fsdp-full-long": dict(engine="fsdp", sharding="FULL_SHARD", seq=1024, vocab=32000),
}


def small_llama(vocab: int) -> dict:
    return dict(model_type="llama", hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                num_attention_heads=8, num_key_value_heads=8, vocab_size=vocab, tie_word_embeddings=False)


def plan(case: dict):
    """(model, hardware, training, strategy) of a case, as dsadvise's API builds them."""
    from advisor.catalog.models import ResolvedModel
    from advisor.hf_config import architecture_from_hf_config
    from advisor.specs import HardwareSpec, StrategySpec, TrainingSpec

    arch = architecture_from_hf_config(small_llama(case["vocab"]))
    model = ResolvedModel(name="small-llama", architecture=arch, source="config", note="")
    hw = HardwareSpec(gpus_per_node=2, nodes=1, vram_bytes=80 << 30)
    tr = TrainingSpec(seq_len=case["seq"], micro_batch_size=1, precision="bf16", attention="sdpa")
    if case["engine"] == "zero":
        extra = {"sub_group_size": case["sub_group_size"]} if "sub_group_size" in case else {}
        st = StrategySpec(backend="deepspeed", zero_stage=case["stage"],
                          offload_optimizer=case.get("offload", "none"), **extra)
    else:
        st = StrategySpec(backend="fsdp", fsdp_sharding=case["sharding"])
    return model, hw, tr, st


def estimated(case: dict) -> dict:
    from advisor.memory.core import estimate_memory

    est = estimate_memory(*plan(case))
    g = est.per_gpu
    value = g.total - g.overhead
    offloaded = 0
    if case.get("offload"):
        # The offloaded states of one rank, and instead of DeepSpeed's additional_buffer_factor the two CPU
        # buffers stage_1_and_2.__init__ allocates with cpu_offload: a 16-bit copy of the partition
        # (param_buffer_of_bit16_for_cpu_offload_groups) and the largest parameter's 16-bit gradient
        # (temp_grad_buffer_for_cpu_offload). Same CPU as the "GPU" here.
        from advisor.param_count import count_parameters

        model, hw, _, _ = plan(case)
        counts = count_parameters(model.architecture)
        offloaded = sum(v for k, v in est.per_node_cpu.breakdown.items()
                        if k in ("optimizer moments", "fp32 master weights", "fp32 gradient partition for the step",
                                 "gradients")) // hw.gpus_per_node
        offloaded += 2 * counts.total // hw.world_size + 2 * counts.largest_module
    return {"estimated": value + offloaded, "moment": g.peak_moment, "moments": dict(g.moments),
            "breakdown": {k: v for k, v in g.breakdown.items() if v}}


def ds_config(case: dict) -> dict:
    """dsadvise's rendered ds_config.json for the case, with the case's overrides."""
    from advisor.render.render import render_files

    files = render_files(*plan(case), gradient_accumulation_steps=1)
    cfg = json.loads(files["ds_config.json"])
    zo = cfg.setdefault("zero_optimization", {})
    if "sub_group_size" in case:
        zo["sub_group_size"] = case["sub_group_size"]
    if case.get("offload"):
        zo["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
        cfg["zero_force_ds_cpu_optimizer"] = False
    return cfg


def _phase_peaks(curve: list[int], marks: list[int], mark_bytes: int) -> dict:
    """Peak live bytes of each phase between consecutive marks, relative to the level at the first mark."""
    base = curve[marks[0]] - mark_bytes
    names = ["forward", "backward", "step"]
    out = {}
    for name, (a, b) in zip(names, zip(marks, marks[1:])):
        window = curve[a + 2:b] or [curve[a] - mark_bytes]
        out[name] = max(window) - base
    out["forward end"] = curve[marks[1]] - mark_bytes - base
    out["backward end"] = curve[marks[2]] - mark_bytes - base
    return out


def _fsdp_model(case: dict, vocab: int):
    import functools

    import torch
    from torch.distributed.fsdp import BackwardPrefetch, FullyShardedDataParallel, MixedPrecision, ShardingStrategy
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    hf = AutoConfig.for_model(**small_llama(vocab))
    hf._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf)          # fp32, as accelerate keeps it under mixed precision
    bf16 = torch.bfloat16
    return FullyShardedDataParallel(
        model, sharding_strategy=getattr(ShardingStrategy, case["sharding"]),
        auto_wrap_policy=functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={LlamaDecoderLayer}),
        mixed_precision=MixedPrecision(param_dtype=bf16, reduce_dtype=bf16, buffer_dtype=bf16),
        backward_prefetch=BackwardPrefetch.BACKWARD_PRE, use_orig_params=True, device_id=torch.device("cpu"),
        limit_all_gathers=True)


def _cuda_release_of_reduce_scatter_inputs() -> None:
    """CUDA's semantics for FSDP's reduce-scatter (applied to every FSDP case). FSDP drops its last reference to
    a unit's unsharded gradient when ``_reduce_grad`` returns (torch/distributed/fsdp/_runtime_utils.py
    ``_reduce_grad``: ``flat_param.grad = None``, ``dist.reduce_scatter_single(new_sharded_grad,
    padded_unsharded_grad)``; ``_post_backward_hook`` only ``record_stream``s it on the post-backward stream). On
    CUDA, NCCL reduce-scatters in place of its own buffers and the gradient goes back to the caching allocator at
    once (``CUDACachingAllocator::free`` lowers ``allocated_bytes`` immediately; a block with recorded streams is
    reused once their events complete, and ``_post_backward_final_callback`` makes the compute stream wait for the
    post-backward stream before the optimizer step): no unsharded gradient outlives its unit's post-backward hook.
    Under gloo the collective's work object (and the full-size copy ProcessGroupGloo's reduce-scatter makes of its
    input) can outlive the call on gloo's worker thread, so whole units' gradients were measured alive into the
    step, more or less depending on load (docs/memory-model.md). The patch reduces with an in-place
    ``all_reduce`` (gloo's scratch space is not a torch allocation, like NCCL's), copies this rank's chunk out and
    frees the input's storage once the synchronous collective has returned: FSDP reads nothing of it afterwards."""
    import torch.distributed as dist

    original = dist.reduce_scatter_single

    def reduce_scatter_single(output, input, op=dist.ReduceOp.SUM, group=None, async_op=False):
        if async_op:
            return original(output, input, op=op, group=group, async_op=True)
        dist.all_reduce(input, op=op, group=group)
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        output.copy_(input.reshape(world, -1)[rank].view_as(output))
        input.untyped_storage().resize_(0)
        return None

    dist.reduce_scatter_single = reduce_scatter_single


def worker(case_name: str, config_path: str) -> None:
    case = CASES[case_name]
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import torch
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.harness.kinds.zero import chunked_adam as _chunked_adam
    from benchmarks.harness.profiling import MARK_BYTES as _MARK_BYTES, live_tensor_bytes, mark as _mark, raw_curve
    from benchmarks.harness.semantics import cuda_semantics

    # every measurement of the harness runs under CUDA's semantics (fused dropout; CUDA's autocast op lists
    # under FSDP's autocast): DeepSpeed bf16 is a bf16 module without autocast
    sem_ctx = cuda_semantics("half-bf16" if case["engine"] == "zero" else "autocast-bf16")
    sem = sem_ctx.__enter__()

    vocab, seq = case["vocab"], case["seq"]
    if case["engine"] == "zero":
        import deepspeed
        from transformers import AutoConfig, AutoModelForCausalLM

        config = json.loads(Path(config_path).read_text())
        # CUDA's semantics for DeepSpeed's collectives (inputs released when the call returns, no gloo-only
        # temporaries): the harness's ZeRO kind's patch, before init_distributed
        from collections import Counter

        from benchmarks.harness.kinds.zero import cuda_semantics_of_gloo_collectives

        gloo_calls: Counter = Counter()
        cuda_semantics_of_gloo_collectives(gloo_calls)
        deepspeed.init_distributed(dist_backend="gloo")
        hf = AutoConfig.for_model(**small_llama(vocab))
        hf._attn_implementation = "sdpa"
        if case["stage"] == 3:
            # zero.Init swaps torch.Tensor.__new__; torch._dynamo refuses to register its polyfills when it is
            # first imported inside (signature mismatch): import it before.
            import torch._dynamo  # noqa: F401
            with deepspeed.zero.Init(config_dict_or_path=config):
                model = AutoModelForCausalLM.from_config(hf)
        else:
            model = AutoModelForCausalLM.from_config(hf)
        opt = _chunked_adam()(model.parameters(), lr=1e-5)
        config = {**config, "zero_allow_untested_optimizer": True}
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=config)

        def forward(ids):
            return engine(input_ids=ids, labels=ids)

        def backward(out):
            engine.backward(out.loss)

        def opt_step():
            engine.step()

        world = engine.world_size
    else:
        torch.distributed.init_process_group("gloo")
        _cuda_release_of_reduce_scatter_inputs()
        fsdp = _fsdp_model(case, vocab)
        opt = torch.optim.AdamW(fsdp.parameters(), lr=1e-5, foreach=True)

        from accelerate.utils import convert_outputs_to_fp32

        def autocast_forward(ids):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return fsdp(input_ids=ids, labels=ids)

        # Accelerator.prepare_model under mixed_precision=bf16: convert_outputs_to_fp32(autocast(forward))
        forward = convert_outputs_to_fp32(autocast_forward)

        def backward(out):
            out.loss.backward()

        def opt_step():
            opt.step()
            opt.zero_grad(set_to_none=True)

        world = torch.distributed.get_world_size()

    rank = torch.distributed.get_rank()
    ids = torch.randint(0, vocab, (1, seq), generator=torch.Generator().manual_seed(rank))

    def step(mark=lambda: None) -> None:
        mark()
        out = forward(ids)
        mark()
        backward(out)
        if os.environ.get("ENGINE_STEPS_DROP_LOSS"):     # experiment: what the loss's graph keeps alive
            out["loss"] = None
            gc.collect()
        mark()
        opt_step()                 # the caller's `out` (logits) stays in scope through the step
        mark()
        del out

    step()
    gc.collect()
    if os.environ.get("ENGINE_STEPS_TRACE"):       # every rank runs the extra step (collectives)
        # the storages alive after backward that were not before the forward (sizes > 256 KiB)
        def storages():
            seen = {}
            for obj in gc.get_objects():
                try:
                    if isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
                        st = obj.untyped_storage()
                        seen[st.data_ptr()] = (st.nbytes(), str(obj.dtype), tuple(obj.shape))
                except Exception:  # noqa: BLE001
                    continue
            return seen
        s0 = storages()
        out = forward(ids)
        backward(out)
        gc.collect()
        s1 = storages()
        new = sorted((v for k, v in s1.items() if k not in s0 and v[0] > 1 << 18), reverse=True)
        if rank == 0:
            print("NEW AFTER BACKWARD", new, flush=True)
        opt_step()
        del out
        gc.collect()
    before = live_tensor_bytes()
    if rank != 0:                          # rank 0 is measured; the others keep the collectives going
        step()
    else:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step(_mark)
        curve, marks = raw_curve(prof)
        phases = _phase_peaks(curve, marks, _MARK_BYTES)
        peak = max(phases["forward"], phases["backward"], phases["step"])
        result = {"world": world, "before_step": before, "measured": before + peak,
                  "phases": {k: before + v for k, v in phases.items()}}
        if os.environ.get("ENGINE_STEPS_TRACE"):
            # allocator events of more than 256 KiB, in order, per phase (to see what is alive when)
            diffs = [b - a for a, b in zip(curve, curve[1:])]
            result["events"] = {name: [(i, d) for i, d in enumerate(diffs[m0 + 1:m1], m0 + 1) if abs(d) > 1 << 18]
                                for name, m0, m1 in zip(("forward", "backward", "step"), marks, marks[1:])}
        result["cuda_semantics"] = sem.record()
        if case["engine"] == "zero":
            result["cuda_semantics"]["patches"].append("gloo_collectives")
            result["cuda_semantics"]["calls"].update(gloo_calls)
        two_process.report(result)
    if case["engine"] == "zero":
        engine.destroy()
    torch.distributed.barrier()
    sem_ctx.__exit__(None, None, None)


def measure_case(name: str) -> dict:
    """Launch one 2-process case with torchrun; rank 0's measured bytes."""
    case = CASES[name]
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "ds_config.json"
        cfg_path.write_text(json.dumps(ds_config(case) if case["engine"] == "zero" else {}))
        return two_process.launch("benchmarks.engine_steps", ["--worker", name, str(cfg_path)], port_base=29650, timeout=900,
                                  env={"DS_ACCELERATOR": "cpu"})


def run_case(name: str, measured: dict | None = None) -> dict:
    """Measured (launched now unless given) and estimated bytes of one case, and the error."""
    r = dict(measured or measure_case(name))
    r.update(estimated(CASES[name]))
    r["error"] = (r["estimated"] - r["measured"]) / r["measured"]
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", nargs=2, metavar=("CASE", "CONFIG"))
    ap.add_argument("--only", nargs="*", help="case names (default: all)")
    ap.add_argument("--verbose", action="store_true", help="print phases and the estimate's breakdown")
    ap.add_argument("--cache", type=Path, help="JSON file of measured results: reused, and new ones added")
    ap.add_argument("--measure-only", action="store_true", help="measure (and cache) without estimating")
    a = ap.parse_args()
    if a.worker:
        worker(*a.worker)
        # leave without interpreter-exit destructors: a gloo group left to them can abort a rank after its
        # result is reported ("terminate called without an active exception"; see tests/memory/ds_probe.py)
        import torch

        torch.distributed.destroy_process_group()
        sys.stdout.flush()
        os._exit(0)
    names = a.only or list(CASES)
    cache = json.loads(a.cache.read_text()) if a.cache and a.cache.exists() else {}
    if a.measure_only:
        for name in names:
            if name not in cache:
                cache[name] = measure_case(name)
                if a.cache:
                    a.cache.write_text(json.dumps(cache, indent=1))
            print(name, json.dumps(cache[name]), flush=True)
        return 0
    mib = 2 ** 20
    print("| case | measured MiB | estimated MiB | error | measured peak phase | estimated peak moment |")
    print("|---|---:|---:|---:|---|---|")
    for name in names:
        if name not in cache:
            cache[name] = measure_case(name)
            if a.cache:
                a.cache.write_text(json.dumps(cache, indent=1))
        r = run_case(name, cache[name])
        ph = r["phases"]
        phase = max(("forward", "backward", "step"), key=ph.__getitem__)
        print(f"| {name} | {r['measured'] / mib:.1f} | {r['estimated'] / mib:.1f} | {r['error'] * 100:+.2f}% "
              f"| {phase} | {r['moment']} |", flush=True)
        if a.verbose:
            print("    measured: " + ", ".join(f"{k} {v / mib:.1f}" for k, v in ph.items())
                  + f", before step {r['before_step'] / mib:.1f}")
            print("    estimated moments: " + ", ".join(f"{k} {v / mib:.1f}" for k, v in r["moments"].items()))
            for k, v in sorted(r["breakdown"].items(), key=lambda kv: -abs(kv[1])):
                print(f"    {k:<60}{v / mib:10.1f} MiB")
    if any(CASES[n]["engine"] == "fsdp" for n in names):
        print("\nfsdp rows: FSDP's reduce-scatter measured with CUDA's release of its input (gloo's work object kept "
              "whole units' unsharded gradients alive into the step; see _cuda_release_of_reduce_scatter_inputs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
