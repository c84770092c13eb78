"""FSDP's weight gathers and gradient reductions per optimizer step, counted on the real engines.

Run: python benchmarks/fsdp_passes.py

accelerate's ``Accelerator.accumulate`` runs every micro-batch but the last of an optimizer step under
``no_sync`` (FSDP1 ``model.no_sync()``, FSDP2 ``set_requires_gradient_sync(False)``) unless ``sync_each_batch``
is set. Two gloo processes on the CPU wrap a stack of linears (one FSDP unit per linear) with FSDP1 FULL_SHARD /
SHARD_GRAD_OP and FSDP2 ``fully_shard`` (reshard_after_forward true / false), run one optimizer step of
``GAS`` micro-batches both ways, and count the calls of ``all_gather_into_tensor`` and ``reduce_scatter_tensor``
(under whichever name this torch gives them) each unit makes. Each row prints the passes over the whole model (calls / units) next to dsadvise's
``step_time.fsdp_passes``, which the step-time model multiplies by the model's bytes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness.launch import run_ranks  # noqa: E402

SIZES = (64, 128, 96, 64)     # a stack of linears, one FSDP unit each
GAS = 3
CASES = (("1", "FULL_SHARD"), ("1", "SHARD_GRAD_OP"), ("2", "FULL_SHARD"), ("2", "SHARD_GRAD_OP"))


def _step(version: str, sharding: str, sync_each_batch: bool) -> dict:
    import torch
    import torch.distributed as dist

    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(i, o, bias=False) for i, o in zip(SIZES, SIZES[1:])])
    units = len(SIZES) - 1
    if version == "1":
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp import ShardingStrategy
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        model = FSDP(model, sharding_strategy=getattr(ShardingStrategy, sharding), use_orig_params=False,
                     auto_wrap_policy=ModuleWrapPolicy({torch.nn.Linear}), device_id=torch.device("cpu"))

        def skip(on: bool):
            import contextlib
            return model.no_sync() if on else contextlib.nullcontext()
    else:
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            fully_shard(layer, reshard_after_forward=sharding == "FULL_SHARD")
        fully_shard(model, reshard_after_forward=sharding == "FULL_SHARD")

        def skip(on: bool):
            import contextlib
            model.set_requires_gradient_sync(not on)
            return contextlib.nullcontext()
    optim = torch.optim.SGD(model.parameters(), lr=0.1)
    # The engines call whichever collective this torch names (2.13: all_gather_single / reduce_scatter_single;
    # FSDP1 on a CPU tensor: all_gather into a list); count every spelling.
    names = {"gather": ("all_gather", "all_gather_single", "all_gather_into_tensor"),
             "reduce": ("reduce_scatter", "reduce_scatter_single", "reduce_scatter_tensor")}
    calls = {"gather": 0, "reduce": 0}
    real = {n: getattr(dist, n) for kind in names.values() for n in kind if hasattr(dist, n)}

    def counting(kind: str, fn):
        def call(*a, **k):
            calls[kind] += 1
            return fn(*a, **k)
        return call

    for kind, spellings in names.items():
        for n in spellings:
            if n in real:
                setattr(dist, n, counting(kind, real[n]))
    try:
        for micro in range(GAS):
            with skip(not sync_each_batch and micro < GAS - 1):
                model(torch.randn(2, SIZES[0])).sum().backward()
        optim.step()
        optim.zero_grad()
    finally:
        for n, fn in real.items():
            setattr(dist, n, fn)
    return {"gathers": calls["gather"] / units, "reductions": calls["reduce"] / units}


def _worker(out_path: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rows = [{"version": v, "sharding": s, "sync_each_batch": e, **_step(v, s, e)}
            for v, s in CASES for e in (False, True)]
    if dist.get_rank() == 1:
        Path(out_path).write_text(json.dumps(rows))
    dist.barrier()
    dist.destroy_process_group()


def record(port: int = 29671) -> list[dict]:
    """Rank 1's passes per optimizer step for every case (``gathers``, ``reductions``: calls / units)."""
    return run_ranks(__file__, [], port=port, timeout=300, what="FSDP collective count")


def modelled(version: str, sharding: str, sync_each_batch: bool) -> tuple[int, int]:
    """dsadvise's (gathers, reductions) per optimizer step for the same run on 2 GPUs."""
    from advisor.api import build_hardware, build_strategy
    from advisor.recommend.step_time import fsdp_passes

    hw = build_hardware(2, 1, None, "a100-80g", None, None, None)
    name = {"FULL_SHARD": "fsdp-full", "SHARD_GRAD_OP": "fsdp-grad-op"}[sharding]
    strategy = build_strategy(hw, name, fsdp_version=int(version))
    return fsdp_passes(strategy, GAS, sync_each_batch)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(sys.argv[2])
        return
    print(f"one optimizer step of {GAS} micro-batches, 2 ranks; passes over every unit (calls / units)")
    print(f"{'FSDP':5s} {'sharding':14s} {'sync_each_batch':16s} {'gathers':>8s} {'dsadvise':>9s} "
          f"{'reductions':>11s} {'dsadvise':>9s}")
    for row in record():
        g, r = modelled(row["version"], row["sharding"], row["sync_each_batch"])
        print(f"{row['version']:5s} {row['sharding']:14s} {str(row['sync_each_batch']):16s} {row['gathers']:8g} "
              f"{g:9d} {row['reductions']:11g} {r:9d}")


if __name__ == "__main__":
    main()
