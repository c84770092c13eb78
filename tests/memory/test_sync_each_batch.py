"""accelerate's GradientAccumulationPlugin(sync_each_batch=True) as a setting (issue 17, helper L): FSDP keeps no
unsharded gradients under no_sync, and reduces the gradients every micro-batch."""

from __future__ import annotations

import pytest

LLAMA2_7B = 6_738_415_616    # the published parameter count (tests/memory/test_fsdp_no_sync.py)
KW = dict(gpus=8, gpu="a100-80g", method="full", precision="bf16", micro_batch=1, seq_len=512, checkpointing="full")


def test_sync_each_batch_keeps_no_unsharded_gradients():
    # accelerate 1.15 accelerator.py accumulate(): allow_gradient_sync when use_distributed and sync_each_batch, so
    # no micro-batch runs under no_sync and FSDP reduce-scatters (frees the unsharded gradient) in each backward.
    from advisor.api import estimate
    from advisor.memory.model_states import FSDP_NO_SYNC_GRADIENTS

    nosync = estimate("llama-2-7b", strategy="fsdp-full", global_batch=16, **KW).per_gpu
    synced = estimate("llama-2-7b", strategy="fsdp-full", global_batch=16, sync_each_batch=True, **KW).per_gpu
    one = estimate("llama-2-7b", strategy="fsdp-full", global_batch=8, **KW).per_gpu
    assert nosync.breakdown[FSDP_NO_SYNC_GRADIENTS] == LLAMA2_7B * 2           # bf16 unsharded, by hand
    assert FSDP_NO_SYNC_GRADIENTS not in synced.breakdown
    assert nosync.gradients - synced.gradients == LLAMA2_7B * 2
    assert synced.gradients == one.gradients      # as without accumulation


def test_fsdp_no_sync_gradient_bytes_is_zero_with_the_setting():
    from advisor.api import build_hardware, build_strategy, build_training
    from advisor.memory.model_states import fsdp_no_sync_gradient_bytes

    hw = build_hardware(8, 1, None, "a100-80g", None, None, None)
    strategy = build_strategy(hw, "fsdp-full")
    for precision, per in (("bf16", 2), ("fp32", 4)):
        off = build_training(hw, global_batch=32, precision=precision)
        on = build_training(hw, global_batch=32, precision=precision, sync_each_batch=True)
        assert fsdp_no_sync_gradient_bytes(1000, off, strategy, hw) == 1000 * per
        assert fsdp_no_sync_gradient_bytes(1000, on, strategy, hw) == 0


@pytest.mark.parametrize("name, nodes", [("fsdp-no-shard", 1), ("fsdp-hybrid", 2), ("fsdp-full", 1),
                                         ("fsdp-grad-op", 1)])
def test_gradient_reduction_runs_every_micro_batch(name, nodes):
    # step_time._communication: under accelerate's no_sync every FSDP reduction (FULL_SHARD's and SHARD_GRAD_OP's
    # reduce-scatter, NO_SHARD's all-reduce, HSDP's within- and between-node reductions) runs once a step; with
    # sync_each_batch gas times. FSDP1 SHARD_GRAD_OP also gathers once a step under no_sync (it keeps its weights
    # through a no_sync backward), every micro-batch with sync_each_batch (benchmarks/fsdp_passes.py counts both
    # on the real engines).
    from advisor.api import build_hardware, build_strategy
    from advisor.recommend.step_time import _communication, rates_for

    hw = build_hardware(8, nodes, None, "h100-sxm", None, None, None)
    r = rates_for(hw.gpu)
    strategy = build_strategy(hw, name)
    p = 7_000_000_000
    args = (strategy, hw, r, p, p, "bf16", "full")
    gas = 4
    off, on = _communication(*args, gas), _communication(*args, gas, sync_each_batch=True)
    gb = 2 * p                                               # bf16 gradients under FSDP mixed precision
    w = 2 * p                                                # bf16 weights gathered
    if name == "fsdp-no-shard":
        once = 2 * 7 / 8 * gb / r.intra_bytes_per_s        # ring all-reduce
        assert off.behind_backward == pytest.approx(once) and on.behind_backward == pytest.approx(gas * once)
    elif name == "fsdp-hybrid":
        once = 2 * 1 / 2 * gb / r.node_bytes_per_s           # all-reduce between the 2 nodes
        assert off.behind_backward == pytest.approx(once) and on.behind_backward == pytest.approx(gas * once)
        inside = 7 / 8 * (gas * 2 * w + gb) / r.intra_bytes_per_s       # 8 GPUs a node: gathers + one reduce
        assert off.behind_compute == pytest.approx(inside)
        assert on.behind_compute == pytest.approx(inside + 7 / 8 * (gas - 1) * gb / r.intra_bytes_per_s)
    elif name == "fsdp-full":
        assert off.behind_compute == pytest.approx(7 / 8 * (gas * 2 * w + gb) / r.intra_bytes_per_s)
        assert on.behind_compute == pytest.approx(7 / 8 * (gas * 2 * w + gas * gb) / r.intra_bytes_per_s)
    else:
        assert off.behind_compute == pytest.approx(7 / 8 * (w + gb) / r.intra_bytes_per_s)
        assert on.behind_compute == pytest.approx(7 / 8 * (gas * w + gas * gb) / r.intra_bytes_per_s)
    assert _communication(*args, 1, sync_each_batch=True) == _communication(*args, 1)
