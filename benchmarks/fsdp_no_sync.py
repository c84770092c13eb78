"""FSDP (v1) gradient accumulation under ``no_sync``, recorded on a real engine (issue 17).

Run: python benchmarks/fsdp_no_sync.py

accelerate's ``Accelerator.accumulate`` (and the HF Trainer's loop) runs every micro-batch but the last of an
optimizer step under ``no_sync`` (accelerate/accelerator.py; ``sync_each_batch`` off by default). Two gloo
processes on the CPU wrap a small stack of linears with FSDP FULL_SHARD (``use_orig_params=False``, one unit
per linear, accelerate's mixed-precision policy: ``param_dtype`` = ``reduce_dtype`` = bf16 over fp32
parameters) and run one micro-batch inside ``model.no_sync()``; the bytes of every unit's ``flat_param.grad``
are then compared with dsadvise's ``model_states.fsdp_no_sync_gradient_bytes`` for the same trainable
parameters. A second, synchronized micro-batch records each unit's new gradient as it reaches ``flat_param``
with the accumulated one still alive (``sync_fresh_accumulated_distinct``). The same run without mixed
precision (fp32) is the second row. Prints one line per case.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness.launch import run_ranks  # noqa: E402

SIZES = (512, 1024, 768, 512)        # a stack of linears, one FSDP unit each


def _worker(precision: str, out_path: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import MixedPrecision, ShardingStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(i, o, bias=False) for i, o in zip(SIZES, SIZES[1:])])
    mp = MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16) if precision == "bf16" else None
    model = FSDP(model, sharding_strategy=ShardingStrategy.FULL_SHARD, auto_wrap_policy=ModuleWrapPolicy({torch.nn.Linear}),
                 use_orig_params=False, device_id=torch.device("cpu"), mixed_precision=mp)
    with model.no_sync():
        model(torch.randn(4, SIZES[0])).float().sum().backward()
    grads = [m._handle.flat_param.grad for m in FSDP.fsdp_modules(model) if m._handle is not None]
    rec = {"grad_bytes": sum(g.numel() * g.element_size() for g in grads if g is not None),
           "shard_bytes": sum(m._handle.flat_param.numel() * 4 for m in FSDP.fsdp_modules(model) if m._handle is not None),
           "params": sum(i * o for i, o in zip(SIZES, SIZES[1:]))}
    # The next (synchronized) micro-batch: each unit's new gradient reaches flat_param as a tensor of its own
    # (a tensor hook on flat_param runs before AccumulateGrad adds it in place into .grad), so while it exists
    # the gradient accumulated under no_sync is alive too: one layer's unsharded gradient more than that item.
    fresh = []
    for m in FSDP.fsdp_modules(model):
        if m._handle is not None:
            fp = m._handle.flat_param
            fp.register_hook(lambda g, fp=fp: fresh.append(
                [g.numel() * g.element_size(), 0 if fp.grad is None else fp.grad.numel() * fp.grad.element_size(),
                 fp.grad is not None and fp.grad.data_ptr() != g.data_ptr()]) or g)
    model(torch.randn(4, SIZES[0])).float().sum().backward()
    rec["sync_fresh_accumulated_distinct"] = fresh
    if dist.get_rank() == 1:
        Path(out_path).write_text(json.dumps(rec))
    dist.barrier()
    dist.destroy_process_group()


def record(precision: str, port: int = 29641) -> dict:
    """Rank 1's gradient bytes after one micro-batch under ``no_sync`` (``grad_bytes``), its fp32 shard bytes
    (``shard_bytes``) and the model's parameter count (``params``)."""
    return run_ranks(__file__, [precision], port=port, timeout=300, what="run")


def built(precision: str, params: int) -> int:
    """dsadvise's bytes for ``params`` trainable parameters, FSDP FULL_SHARD over 2 GPUs, 2 micro-batches a step."""
    from advisor.api import build_hardware, build_strategy, build_training
    from advisor.memory.model_states import fsdp_no_sync_gradient_bytes

    hw = build_hardware(2, 1, None, "a100-80g", None, None, None)
    training = build_training(hw, seq_len=512, micro_batch=1, global_batch=4, precision=precision, method="full")
    return fsdp_no_sync_gradient_bytes(params, training, build_strategy(hw, "fsdp-full"), hw)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], sys.argv[3])
        return
    print(f"{'precision':10s} {'recorded grad bytes':>20s} {'dsadvise':>12s} {'fp32 shards':>12s}")
    for i, precision in enumerate(("bf16", "fp32")):
        rec = record(precision, port=29641 + i)
        print(f"{precision:10s} {rec['grad_bytes']:20d} {built(precision, rec['params']):12d} {rec['shard_bytes']:12d}")


if __name__ == "__main__":
    main()
