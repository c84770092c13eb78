"""``cuda_semantics``: each patch does what CUDA does, and every measurement kind runs under it."""

from __future__ import annotations

import pytest
import torch

from benchmarks.harness.cases import Case
from benchmarks.harness.kinds import kind
from benchmarks.harness.profiling import mark, profiled
from benchmarks.harness.semantics import active, cuda_semantics


def _allocations(fn) -> list[int]:
    """Sizes (bytes) of the allocations ``fn`` makes, from the profiler's memory timeline."""
    with profiled() as prof:
        mark()
        fn()
        mark()
    from torch.profiler._memory_profiler import Action

    sizes, inside = [], False
    for _, action, _, size in prof._memory_profile().timeline:
        if action == Action.CREATE and size == 7_777_777:
            inside = not inside
            continue
        if inside and action == Action.CREATE:
            sizes.append(size)
    return sizes


def test_dropout_saves_a_bool_mask_and_its_backward_allocates_once():
    x = torch.randn(64, 256, requires_grad=True)
    g = torch.randn(64, 256)
    plain = torch.nn.functional.dropout(x, 0.1, True)
    assert type(plain.grad_fn).__name__ != "NativeDropoutBackward0"      # CPU: a noise multiply
    with cuda_semantics("fp32") as sem:
        assert active() is sem
        y = torch.nn.functional.dropout(x, 0.1, True)
        assert type(y.grad_fn).__name__ == "NativeDropoutBackward0"     # CUDA's fused kernel: bool mask
        mask = torch.rand(64, 256) > 0.1
        patched = _allocations(lambda: torch.ops.aten.native_dropout_backward(g, mask, 1 / 0.9))
    assert active() is None
    stock = _allocations(lambda: torch.ops.aten.native_dropout_backward(g, mask, 1 / 0.9))
    big = g.nbytes // 2                                  # scalars aside (the 0.0 of ``where``, the scale)
    assert [n for n in patched if n >= big] == [g.nbytes]   # the gradient only (Dropout.cu masked_scale)
    assert [n for n in stock if n >= big].count(g.nbytes) > 1  # the CPU kernel casts the mask to float first
    assert sem.calls["dropout"] == 1 and sem.calls["native_dropout_backward"] == 1
    assert sem.record()["patches"] == ["fused_dropout", "fused_dropout_backward"]


def test_autocast_policy_follows_cuda_lists():
    x = torch.randn(8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.mm(x, x).pow(2).dtype == torch.bfloat16              # CPU autocast leaves pow alone
    with cuda_semantics("autocast-bf16") as sem, torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.mm(x, x).pow(2).dtype == torch.float32               # CUDA: pow runs in fp32
    assert "autocast_policy" in sem.patches


# A tiny GPT-2 with dropout 0.1 everywhere: the dropout patches have something to do in every kind.
TINY = dict(model="gpt2", mode="fp32", attn="eager", seq=32, batch=1, layers=2,
            overrides={"n_embd": 64, "n_head": 2, "vocab_size": 512, "n_positions": 64})


@pytest.mark.slow
@pytest.mark.parametrize("name", ["saved", "transient", "step"])
def test_in_process_kinds_run_under_cuda_semantics(name):
    m = kind(name).measure(Case(name, "calibration", dict(TINY)))
    rec = m["cuda_semantics"]
    assert {"fused_dropout", "fused_dropout_backward"} <= set(rec["patches"])
    assert rec["calls"]["dropout"] > 0
    if name != "saved":                                   # saved bytes: forward only
        assert rec["calls"]["native_dropout_backward"] > 0


@pytest.mark.slow
def test_ddp_workers_run_under_cuda_semantics():
    m = kind("ddp").measure(Case("ddp", "calibration", dict(TINY, world=2)))
    assert m["world"] == 2
    assert m["cuda_semantics"]["calls"]["native_dropout_backward"] > 0


@pytest.mark.slow
def test_zero_workers_run_under_cuda_semantics():
    case = Case("zero", "calibration", dict(TINY, mode="half-bf16", attn="sdpa", stage=2, world=2))
    m = kind("zero").measure(case)
    assert m["world"] == 2
    assert m["cuda_semantics"]["mode"] == "half-bf16"
    assert m["cuda_semantics"]["calls"]["native_dropout_backward"] > 0
