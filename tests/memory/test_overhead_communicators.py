"""NCCL communicators per engine: one per process group a collective runs on (benchmarks/nccl_communicators.py
measured the groups on the real engines: DeepSpeed ZeRO-1/2 two, ZeRO-3 counted two, DDP / FSDP one)."""

from advisor.api import build_hardware, build_strategy
from advisor.memory.overhead import _one_communicator, nccl_communicators, outside_allocator

HW = build_hardware(4, 1, None, "a100-80g")


def _strategy(name: str):
    return build_strategy(HW, name, "none", "none", "auto")


def test_deepspeed_opens_two_communicators_at_every_stage_ddp_and_fsdp_one():
    assert [nccl_communicators(_strategy(s)) for s in ("zero0", "zero1", "zero2", "zero3")] == [2, 2, 2, 2]
    assert nccl_communicators(_strategy("ddp")) == 1
    assert [nccl_communicators(_strategy(s)) for s in ("fsdp-full", "fsdp-grad-op")] == [1, 1]


def test_each_communicator_is_counted_at_the_per_card_figure_and_said():
    one = _one_communicator(HW, _strategy("zero2")).nccl_bytes
    zero2 = outside_allocator(HW, _strategy("zero2"))
    assert zero2.nccl_bytes == 2 * one and one > 0
    assert "_clone_world_group" in zero2.note() and "2 x" in zero2.note()
    assert outside_allocator(HW, _strategy("ddp")).nccl_bytes == one
