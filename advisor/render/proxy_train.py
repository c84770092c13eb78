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
    if on_cpu and dtype == "FSDP":
        with _no_gpu_device_lookup():
            accelerator = Accelerator(**kwargs)
        _fsdp_on_cpu(accelerator)
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
    model = AutoModelForCausalLM.from_config(cfg)
    if exp.get("gradient_checkpointing") and dtype != "FSDP":
        model.gradient_checkpointing_enable()
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
    ids = torch.randint(0, cfg.vocab_size, (n, exp.get("seq_len", 32)))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ids), batch_size=micro)
    t2 = time.perf_counter()
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    timings["prepare"] = time.perf_counter() - t2

    if dtype == "DEEPSPEED":
        engine = model
        checks.eq("ZeRO stage (engine.zero_optimization_stage())", int(engine.zero_optimization_stage()),
                  exp["zero_stage"], file=ds_file, setting="zero_optimization.stage")
        checks.eq("DeepSpeed data-parallel world size", engine.dp_world_size, exp["world_size"], file=yaml_file,
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
        if exp["zero_stage"] == 3 and world > 1:
            big = max(engine.module.parameters(), key=lambda p: getattr(p, "ds_numel", p.numel()))
            held = big.ds_tensor.numel() if hasattr(big, "ds_tensor") else big.numel()
            full = getattr(big, "ds_numel", big.numel())
            checks.true("ZeRO-3 partitions parameters", held < full, f"largest parameter: {held} of {full} "
                        "elements on this rank", file=ds_file, setting="zero_optimization.stage")
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
    for (batch,) in loader:
        with accelerator.accumulate(model):
            out = model(input_ids=batch, labels=batch)
            accelerator.backward(out.loss)
            optimizer.step()
            optimizer.zero_grad()
        micro_steps += 1
        losses.append(float(out.loss.detach().float().item()))
        if accelerator.sync_gradients:
            done += 1
        if done >= steps:
            break
    timings["train"] = time.perf_counter() - t3
    checks.eq("optimizer steps taken", done, steps)
    checks.eq("micro-steps per optimizer step", micro_steps // max(done, 1), gas, file=ds_file if dtype == "DEEPSPEED"
              else "", setting="gradient_accumulation_steps")
    if dtype == "DEEPSPEED":
        checks.eq("DeepSpeed global_steps", model.global_steps, steps)
    checks.true("losses finite", all(math.isfinite(x) for x in losses), ", ".join(f"{x:.3f}" for x in losses))
    accelerator.wait_for_everyone()
    accelerator.end_training()


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


if __name__ == "__main__":
    sys.exit(main())
