"""The training script ``dsadvise dry-run`` launches with ``accelerate launch --config_file DIR/accelerate_config.yaml``.

It builds a tiny model shaped like the target (``AutoModelForCausalLM.from_config`` of the proxy config in
the expectations file), prepares it with accelerate exactly as a user's script would, runs two optimizer
steps, and asserts *inside the run* that what is in effect is what the files say: the torch.distributed world
size (one process group, not N independent runs), the ZeRO stage, offload devices, precision, FSDP sharding,
and that every optimizer step happened. Each rank writes ``rank<R>.json`` into the result folder.

Standalone on purpose: it imports only torch, accelerate, transformers (and deepspeed through accelerate),
never dsadvise, so it runs wherever those run.

Usage (by dsadvise): accelerate launch ... proxy_train.py --expect EXPECT.json --result-dir DIR
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback


class Checks:
    def __init__(self):
        self.items: list[dict] = []

    def eq(self, what: str, got, expected, *, file: str = "", setting: str = "") -> bool:
        ok = got == expected
        self.items.append({"check": what, "ok": ok, "got": _plain(got), "expected": _plain(expected),
                           "file": file, "setting": setting})
        return ok

    def true(self, what: str, ok: bool, detail: str = "", *, file: str = "", setting: str = "") -> bool:
        self.items.append({"check": what, "ok": bool(ok), "got": detail, "expected": "", "file": file,
                           "setting": setting})
        return bool(ok)

    def skip(self, what: str, why: str, *, file: str = "", setting: str = "") -> None:
        """A part of the run this machine cannot do (named, never counted as passed or faked)."""
        self.items.append({"check": what, "ok": True, "skipped": why, "got": "", "expected": "", "file": file,
                           "setting": setting})


def _plain(v):
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


def _no_gpu_device_lookup():
    """accelerate's FSDP plugin looks up the current GPU for sync_module_states (only to build an init
    function for meta-device modules); without a GPU it raises. Point the lookup at the CPU."""
    from unittest import mock
    import contextlib

    import torch
    import accelerate.utils.dataclasses as acc_dc

    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch.object(acc_dc, "is_cuda_available", return_value=True))
    stack.enter_context(mock.patch.object(torch.cuda, "current_device", return_value="cpu"))
    return stack


def _fsdp_on_cpu(accelerator) -> None:
    """accelerate never selects FSDP without a GPU (its state only turns MULTI_GPU-class types into FSDP), so
    on the CPU the state is switched to FSDP with the plugin accelerate builds from the launch environment,
    and accelerate's own FSDP preparation (Accelerator.prepare_model) wraps the model."""
    import torch
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    with _no_gpu_device_lookup():
        plugin = FullyShardedDataParallelPlugin()
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    accelerator.state.fsdp_plugin = plugin
    accelerator.state.distributed_type = DistributedType.FSDP
    # MULTI_CPU names its device "cpu:0"; FSDP compares device_id with the CPU compute device "cpu".
    PartialState().device = torch.device("cpu")
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def run(exp: dict, checks: Checks, timings: dict) -> None:
    t0 = time.perf_counter()
    import torch
    import torch.distributed as dist
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    dtype = exp["distributed_type"]
    on_cpu = exp["device"] == "cpu"
    yaml_file, ds_file = "accelerate_config.yaml", "ds_config.json"
    kwargs: dict = {}
    if on_cpu and dtype == "DEEPSPEED":
        # Without a GPU accelerate picks no backend and each process ends up rank 0 of 1 while DeepSpeed
        # initialises torch.distributed anyway; naming gloo keeps accelerate's view and DeepSpeed's the same.
        kwargs["kwargs_handlers"] = [InitProcessGroupKwargs(backend="gloo")]
    elif on_cpu:
        kwargs["cpu"] = True           # MULTI_GPU / FSDP / NO on the CPU: accelerate's MULTI_CPU with gloo
    layout = exp.get("layout") or {}
    if on_cpu and dtype == "FSDP":
        from unittest import mock

        from accelerate.parallelism_config import ParallelismConfig

        # accelerate checks the ParallelismConfig against the distributed type in Accelerator(); on the CPU that
        # is MULTI_CPU until _fsdp_on_cpu switches it, so its own check runs after the switch, unchanged.
        with _no_gpu_device_lookup(), mock.patch.object(ParallelismConfig, "_validate_accelerator"):
            accelerator = Accelerator(**kwargs)
        _fsdp_on_cpu(accelerator)
        if accelerator.parallelism_config is not None:
            accelerator.parallelism_config._validate_accelerator(accelerator)
    else:
        accelerator = Accelerator(**kwargs)
    timings["accelerator"] = time.perf_counter() - t0

    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    checks.eq("torch.distributed world size", world, exp["world_size"], file=yaml_file, setting="num_processes")
    checks.eq("accelerate num_processes", accelerator.num_processes, exp["world_size"], file=yaml_file,
              setting="num_processes")
    if world > 1:
        t = torch.tensor([float(dist.get_rank())])
        dist.all_reduce(t)
        checks.eq("one process group (all_reduce of ranks)", int(t.item()), world * (world - 1) // 2,
                  file=yaml_file, setting="num_processes")
    expected_type = {"NO": "NO", "MULTI_GPU": "MULTI_CPU" if on_cpu else "MULTI_GPU", "DEEPSPEED": "DEEPSPEED",
                     "FSDP": "FSDP"}[dtype]
    checks.eq("accelerate distributed_type", accelerator.distributed_type.value, expected_type, file=yaml_file,
              setting="distributed_type")
    if dtype != "DEEPSPEED":
        checks.eq("accelerate mixed_precision", accelerator.mixed_precision, exp["mixed_precision"],
                  file=yaml_file, setting="mixed_precision")

    t1 = time.perf_counter()
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(**exp["proxy_model"])
    attn = {"attn_implementation": "sdpa"} if layout.get("sp", 1) > 1 or layout.get("cp", 1) > 1 else {}
    model = AutoModelForCausalLM.from_config(cfg, **attn)
    if exp.get("gradient_checkpointing") and dtype != "FSDP":
        model.gradient_checkpointing_enable()
    if layout:
        check_mesh(accelerator, layout, checks)
    if dtype == "FSDP" and layout.get("tp", 1) > 1:
        tensor_parallel(model, accelerator, layout["tp"], checks)
    timings["model"] = time.perf_counter() - t1

    micro = exp["micro_batch"]
    gas = exp["gradient_accumulation_steps"]
    steps = exp.get("steps", 2)
    params = [p for p in model.parameters() if p.requires_grad]
    if dtype == "DEEPSPEED" and exp.get("ds_optimizer_block"):
        from accelerate.utils import DummyOptim

        optimizer = DummyOptim(params, lr=1e-3)
    elif dtype == "DEEPSPEED" and exp.get("offload_optimizer", "none") != "none":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        optimizer = DeepSpeedCPUAdam(params, lr=1e-3)
    else:
        optimizer = torch.optim.AdamW(params, lr=1e-3)
    n = micro * gas * steps * 2 * world
    seq = exp.get("seq_len", 32)
    # a generator of its own: building the model under ZeRO-3's zero.Init draws from the global RNG differently on each
    # rank, and ranks of a tensor-parallel group must read the same samples (DeepSpeed checks the first batch)
    ids = torch.randint(0, cfg.vocab_size, (n, seq), generator=torch.Generator().manual_seed(1))
    sp = layout.get("sp", 1)
    if sp > 1:    # Ulysses' dataloader adapter shards dict batches and needs position_ids (ulysses_sp.py refill)
        rows = [{"input_ids": r, "labels": r, "position_ids": torch.arange(seq)} for r in ids]
        loader = torch.utils.data.DataLoader(rows, batch_size=micro)
    else:
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ids), batch_size=micro)
    t2 = time.perf_counter()
    try:
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    except ImportError as exc:
        if "ReplicateParallel" in str(exc):
            raise ImportError(f"accelerate's FSDP2+TP preparation (Accelerator._prepare_tp) needs "
                              f"transformers.integrations.tensor_parallel.ReplicateParallel, which the installed "
                              f"transformers does not define: accelerator.prepare fails on any device with these "
                              f"versions ({exc})") from exc
        raise
    timings["prepare"] = time.perf_counter() - t2
    if layout:
        check_layout(model, loader, layout, exp, checks, seq)

    if dtype == "DEEPSPEED":
        engine = model
        checks.eq("ZeRO stage (engine.zero_optimization_stage())", int(engine.zero_optimization_stage()),
                  exp["zero_stage"], file=ds_file, setting="zero_optimization.stage")
        if layout.get("sp", 1) > 1:      # Ulysses: the batch world DeepSpeedConfig took from its mpu (world / sp)
            dp_world = int(engine._config.world_size)
        else:
            dp_world = engine.dp_world_size
        checks.eq("DeepSpeed data-parallel world size", dp_world,
                  exp["world_size"] // (layout.get("autotp") or 1) // layout.get("sp", 1), file=yaml_file,
                  setting="num_processes")
        off_o = engine.zero_offload_optimizer()
        checks.eq("optimizer offload device", _dev(off_o), exp["offload_optimizer"], file=ds_file,
                  setting="zero_optimization.offload_optimizer.device")
        if exp["zero_stage"] == 3:
            checks.eq("parameter offload device", _dev(engine.zero_offload_param()), exp["offload_param"],
                      file=ds_file, setting="zero_optimization.offload_param.device")
        precision = "bf16" if engine.bfloat16_enabled() else "fp16" if engine.fp16_enabled() else "fp32"
        checks.eq("precision in effect", precision, exp["precision"], file=ds_file, setting="bf16/fp16.enabled")
        want_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[exp["precision"]]
        pdtype = next(engine.module.parameters()).dtype
        checks.eq("model parameter dtype", str(pdtype), str(want_dtype), file=ds_file, setting="bf16/fp16.enabled")
        checks.eq("gradient_accumulation_steps", engine.gradient_accumulation_steps(), gas, file=ds_file,
                  setting="gradient_accumulation_steps")
        checks.eq("train_micro_batch_size_per_gpu", engine.train_micro_batch_size_per_gpu(), micro, file=ds_file,
                  setting="train_micro_batch_size_per_gpu")
        # ZeRO partitions over the data-parallel ranks: world / autotp_size under AutoTP, every rank under Ulysses
        # (its sequence-data-parallel group)
        if exp["zero_stage"] == 3 and world // (layout.get("autotp") or 1) > 1:
            big = max(engine.module.parameters(), key=lambda p: getattr(p, "ds_numel", p.numel()))
            held = big.ds_tensor.numel() if hasattr(big, "ds_tensor") else big.numel()
            full = getattr(big, "ds_numel", big.numel())
            checks.true("ZeRO-3 partitions parameters", held < full, f"largest parameter: {held} of {full} "
                        "elements on this rank", file=ds_file, setting="zero_optimization.stage")
    elif dtype == "FSDP" and layout.get("fsdp_version", 1) == 2:
        pass     # FSDP2: check_layout asserted the DTensor shards
    elif dtype == "FSDP":
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        checks.true("model wrapped by FSDP", isinstance(model, FSDP), type(model).__name__, file=yaml_file,
                    setting="distributed_type")
        if isinstance(model, FSDP):
            checks.eq("FSDP sharding strategy in effect", model.sharding_strategy.name, exp["fsdp_sharding"],
                      file=yaml_file, setting="fsdp_config.fsdp_sharding_strategy")
            units = len(FSDP.fsdp_modules(model))
            layers = exp["proxy_model"].get("num_hidden_layers", exp["proxy_model"].get("n_layer", 2))
            if exp.get("fsdp_layer_cls"):
                checks.eq("FSDP units (one per decoder layer + root)", units, layers + 1, file=yaml_file,
                          setting="fsdp_config.fsdp_transformer_layer_cls_to_wrap")
            mp = model.mixed_precision.param_dtype if model.mixed_precision else None
            want = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(exp["mixed_precision"])
            checks.eq("FSDP mixed-precision param dtype", str(mp), str(want), file=yaml_file,
                      setting="mixed_precision")
            checks.eq("FSDP CPU offload", bool(model.cpu_offload.offload_params), exp["fsdp_offload"],
                      file=yaml_file, setting="fsdp_config.fsdp_offload_params")
    elif dtype == "MULTI_GPU":
        from torch.nn.parallel import DistributedDataParallel

        checks.true("model wrapped by DistributedDataParallel", isinstance(model, DistributedDataParallel),
                    type(model).__name__, file=yaml_file, setting="distributed_type")

    t3 = time.perf_counter()
    done, losses, micro_steps = 0, [], 0
    for batch in loader:
        with accelerator.accumulate(model):
            if layout.get("cp", 1) > 1:
                loss = context_parallel_step(accelerator, model, batch[0], layout["cp"], checks)
                if loss is None:          # the CPU cannot run ring attention (said in the checks)
                    accelerator.wait_for_everyone()
                    accelerator.end_training()
                    return
            elif sp > 1:
                loss = ulysses_loss(model, batch)
            else:
                ids_ = batch[0]
                loss = model(input_ids=ids_, labels=ids_).loss
            if layout.get("cp", 1) == 1:
                accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
        micro_steps += 1
        losses.append(float(loss.detach().float().item()))
        if accelerator.sync_gradients:
            done += 1
        if done >= steps:
            break
    timings["train"] = time.perf_counter() - t3
    checks.eq("optimizer steps taken", done, steps)
    checks.eq("micro-steps per optimizer step", micro_steps // max(done, 1), gas if sp == 1 else gas, file=ds_file if dtype == "DEEPSPEED"
              else "", setting="gradient_accumulation_steps")
    if dtype == "DEEPSPEED":
        checks.eq("DeepSpeed global_steps", model.global_steps, steps)
    checks.true("losses finite", all(math.isfinite(x) for x in losses), ", ".join(f"{x:.3f}" for x in losses))
    accelerator.wait_for_everyone()
    accelerator.end_training()


# ---------------------------------------------------------------- parallel layouts (issue 15)

def check_mesh(accelerator, layout: dict, checks: Checks) -> None:
    """accelerate's device mesh has the sizes the YAML's parallelism_config gives (FSDP2 layouts)."""
    if layout.get("sp", 1) > 1 or layout.get("autotp") or not layout.get("block"):
        return      # DeepSpeed builds these groups itself; FSDP2 without a parallelism_config has no named mesh
    mesh = accelerator.torch_device_mesh
    want = {k: layout[k] for k in ("dp_replicate", "dp_shard", "tp", "cp") if layout.get(k, 1) > 1}
    got = dict(zip(mesh.mesh_dim_names, mesh.mesh.shape)) if mesh is not None else {}
    checks.eq("accelerate device mesh (ParallelismConfig)", got, want, file="accelerate_config.yaml",
              setting="parallelism_config")


def tensor_parallel(model, accelerator, tp: int, checks: Checks) -> None:
    """Split the proxy model's layers over the mesh's 'tp' dimension with transformers' own tensor-parallel code and
    the model's tp_plan (what from_pretrained(tp_plan='auto') applies), as accelerate expects before prepare."""
    from torch.distributed.tensor import DTensor
    from transformers.distributed import DistributedConfig
    from transformers.distributed.tensor_parallel import apply_tensor_parallelism

    dc = DistributedConfig(tp_size=tp)
    plan, _, _ = model._resolve_parallel_plans(dc)
    # a tied lm_head shares the embedding's parameter, which named_parameters() lists once (as the embedding's)
    names = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_modules()}
    plan = {k: v for k, v in plan.items() if k in names}
    apply_tensor_parallelism(model, accelerator.torch_device_mesh["tp"], plan)
    model.config.distributed_config = dc
    q = _first(model, "q_proj.weight")
    ok = isinstance(q, DTensor) and q.to_local().shape[0] * tp == q.shape[0]
    checks.true("tensor-parallel shards (q_proj rows / tp)", ok,
                f"{tuple(q.to_local().shape) if isinstance(q, DTensor) else tuple(q.shape)} of {tuple(q.shape)}",
                file="accelerate_config.yaml", setting="parallelism_config.parallelism_config_tp_size")


def _first(model, suffix: str):
    return next(p for n, p in model.named_parameters() if n.endswith(suffix))


def check_layout(model, loader, layout: dict, exp: dict, checks: Checks, seq: int) -> None:
    """Inside the run, after accelerate.prepare: the shards and groups the files ask for are in effect."""
    import torch.distributed as dist

    yaml_file, ds_file = "accelerate_config.yaml", "ds_config.json"
    if layout.get("fsdp_version") == 2:
        from torch.distributed.fsdp import FSDPModule
        from torch.distributed.tensor import DTensor, Replicate, Shard

        checks.true("model sharded by FSDP2 (fully_shard)", isinstance(model, FSDPModule), type(model).__name__,
                    file=yaml_file, setting="fsdp_config.fsdp_version")
        q = _first(model, "q_proj.weight")
        if not checks.true("parameters are DTensors", isinstance(q, DTensor), type(q).__name__, file=yaml_file,
                           setting="fsdp_config.fsdp_version"):
            return
        names = tuple(q.device_mesh.mesh_dim_names or ())
        if not layout.get("block"):     # plain FSDP2: fully_shard's default 1-D mesh over the world, no names
            names = ("dp_shard_cp",) if len(q.placements) == 1 else names
        shard_dims = [n for n in names if n.startswith("dp_shard")]
        want_names = (("dp_replicate",) if layout.get("dp_replicate", 1) > 1 else ()) + ("dp_shard_cp",)
        checks.eq("FSDP2 mesh of the parameters", names[:len(want_names)], want_names, file=yaml_file,
                  setting="parallelism_config")
        placements = {n: p for n, p in zip(names, q.placements)}
        if layout.get("dp_replicate", 1) > 1:
            checks.eq("HSDP: replicated over dp_replicate", str(placements.get("dp_replicate")), str(Replicate()),
                      file=yaml_file, setting="parallelism_config.parallelism_config_dp_replicate_size")
        checks.eq("FSDP2: sharded on dim 0 over dp_shard x cp", str(placements.get(shard_dims[0]) if shard_dims
                                                                    else None), str(Shard(0)),
                  file=yaml_file, setting="parallelism_config.parallelism_config_dp_shard_size")
        width = layout.get("dp_shard", 1) * layout.get("cp", 1) * layout.get("tp", 1)
        checks.eq("rows of q_proj held by this rank", q.to_local().shape[0], -(-q.shape[0] // width),
                  file=yaml_file, setting="parallelism_config")
        if layout.get("tp", 1) > 1:
            checks.true("tensor parallel placement on 'tp'", "tp" in names, str(q.placements), file=yaml_file,
                        setting="parallelism_config.parallelism_config_tp_size")
    if layout.get("autotp"):
        engine, tp = model, layout["autotp"]
        checks.eq("DeepSpeed autotp_size in effect", engine.autotp_size(), tp, file=ds_file,
                  setting="tensor_parallel.autotp_size")
        q, o = _first(engine.module, "q_proj.weight"), _first(engine.module, "o_proj.weight")
        # under ZeRO-3 the parameter is a placeholder; ds_shape is the (tensor-parallel) shape ZeRO partitions
        qs, os_ = tuple(getattr(q, "ds_shape", q.shape)), tuple(getattr(o, "ds_shape", o.shape))
        full = exp["proxy_model"]["hidden_size"]
        checks.eq("AutoTP column shard: q_proj rows on this rank", qs[0], full // tp, file=ds_file,
                  setting="tensor_parallel.autotp_size")
        checks.eq("AutoTP row shard: o_proj columns on this rank", os_[1] if len(os_) > 1 else None, full // tp,
                  file=ds_file, setting="tensor_parallel.autotp_size")
    sp = layout.get("sp", 1)
    if sp > 1:
        from deepspeed.runtime.sequence_parallel import parallel_state_sp as mpu
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        checks.eq("Ulysses sequence-parallel group size", mpu.get_sequence_parallel_world_size(), sp,
                  file=yaml_file, setting="parallelism_config.parallelism_config_sp_size")
        checks.eq("accelerate wrapped the dataloader", type(loader).__name__, "UlyssesSPDataLoaderAdapter",
                  file=yaml_file, setting="parallelism_config.parallelism_config_sp_size")
        checks.eq("Ulysses attention registered for sdpa", getattr(ALL_ATTENTION_FUNCTIONS["sdpa"], "__name__", ""),
                  "uattn_wrapper", file=yaml_file, setting="parallelism_config.parallelism_config_sp_attn_implementation")
        first = next(iter(loader))
        checks.eq("sequence split: tokens per rank", tuple(first["input_ids"].shape)[-1], seq // sp, file=yaml_file,
                  setting="parallelism_config.parallelism_config_sp_size")
        if dist.is_initialized():
            pass


def ulysses_loss(model, batch):
    """ALST's loss under Ulysses: each rank's shift_labels shard, averaged over the SP group weighted by its
    tokens (deepspeed.ai/tutorials/ulysses-alst-sequence-parallelism)."""
    import torch
    import torch.distributed.nn.functional as dfn
    from deepspeed.runtime.sequence_parallel import parallel_state_sp as mpu

    out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"])
    unwrapped = model.module
    shift = batch["shift_labels"]
    loss = unwrapped.loss_function(logits=out.logits, labels=None, shift_labels=shift,
                                   vocab_size=unwrapped.config.vocab_size)
    group = mpu.get_sequence_parallel_group()
    losses = dfn.all_gather(loss, group=group)
    good = (shift != -100).view(-1).sum()
    goods = dfn.all_gather(good, group=group)
    return sum(l_ * g for l_, g in zip(losses, goods)) / torch.clamp(sum(goods), min=1)


def context_parallel_step(accelerator, model, ids, cp: int, checks: Checks):
    """One step inside accelerate's context-parallel region: the sequence each rank keeps is checked; torch's ring
    attention dispatches only CUDA SDPA kernels, so on a CPU the attention call is reported as skipped."""
    n = ids.shape[1]
    with accelerator.maybe_context_parallel(buffers=[ids], buffer_seq_dims=[1], no_restore_buffers={ids}):
        checks.eq("context parallel: tokens per rank", ids.shape[1], n // cp, file="accelerate_config.yaml",
                  setting="parallelism_config.parallelism_config_cp_size")
        try:
            out = model(input_ids=ids, labels=ids)
        except NotImplementedError as exc:
            if "for_cpu" in str(exc) or "sharding strategy" in str(exc):
                checks.skip("ring attention forward/backward", "torch context_parallel shards SDPA's CUDA kernels "
                            "(flash / efficient / cuDNN); the CPU kernel aten._scaled_dot_product_flash_attention_for_"
                            "cpu has no sharding strategy, so the step itself needs a GPU (dsadvise dry-run --gpu)",
                            file="accelerate_config.yaml", setting="parallelism_config.parallelism_config_cp_size")
                return None
            raise
        accelerator.backward(out.loss)
    return out.loss


def _dev(offload) -> str:
    if offload is None:
        return "none"
    dev = getattr(offload, "device", "none")
    return str(getattr(dev, "value", dev))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--expect", required=True)
    ap.add_argument("--result-dir", required=True)
    args = ap.parse_args(argv)
    with open(args.expect, encoding="utf-8") as fh:
        exp = json.load(fh)
    rank = int(os.environ.get("RANK", "0"))
    checks, timings = Checks(), {}
    result = {"rank": rank, "ok": False, "checks": checks.items, "timings": timings}
    try:
        run(exp, checks, timings)
        result["ok"] = all(c["ok"] for c in checks.items)
    except BaseException as exc:  # noqa: BLE001 - report whatever stopped the run
        result["error"] = f"{type(exc).__name__}: {exc}".strip()[:2000]
        result["traceback"] = traceback.format_exc()[-6000:]
    path = os.path.join(args.result_dir, f"rank{rank}.json")
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1)
    os.replace(path + ".tmp", path)
    return 0 if result["ok"] else 1


def exit_without_teardown(code: int) -> None:
    """Leave the process with ``code`` once its rank file is written, without running destructors: a passing
    rank first waits (at most 60 s) for the others, then the process group is destroyed explicitly. A gloo
    process group left to the interpreter's exit can abort a rank whose results are already complete
    ("terminate called without an active exception"; seen in CI for tests/memory/ds_probe.py and for this
    script under ZeRO-3), which the launcher would report as a failed run. A failing rank leaves at once: its
    rank file says why, and the launcher stops the others."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            if code == 0:
                from datetime import timedelta

                try:
                    dist.monitored_barrier(timeout=timedelta(seconds=60))   # gloo; a missing rank raises
                except RuntimeError:
                    pass                                                    # that rank's file says why
            dist.destroy_process_group()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    exit_without_teardown(main())
