"""Micro-batch candidates stay within what a TrainingSpec holds; accumulation covers a huge global batch."""

from advisor.api import build_hardware
from advisor.recommend.candidates import micro_batches
from advisor.specs import MAX_MICRO_BATCH


def test_a_huge_global_batch_is_reached_by_accumulation_not_by_an_impossible_micro_batch():
    hw = build_hardware(8, 1, None, "a100-80g")
    mb = micro_batches(1, 1_000_000 // 8, 1_000_000, hw)       # the cap the CLI passes: global / world
    assert max(mb.values) <= MAX_MICRO_BATCH < 1_000_000 // 8
    top = max(mb.values)
    assert top * 8 * mb.accumulation(top) == 1_000_000
