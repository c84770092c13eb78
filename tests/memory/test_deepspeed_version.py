"""--deepspeed-version (session 10, helper R): ZeRO-3's gathered parameters as the stated DeepSpeed's coordinator
holds them, against the bytes real engines gathered (DeepSpeed 0.13.3 and 0.19.8, tests/memory/
test_deepspeed_zero3_gather.py's small Llama-2-70B shape); without it, the larger of the two, as before."""

from __future__ import annotations

import pytest

from advisor.api import estimate
from advisor.cli import main
from advisor.hf_config import architecture_from_hf_config
from advisor.memory.zero3_gather import zero3_gathered_bytes
from advisor.specs import LoraSpec, TrainingSpec

from .test_deepspeed_zero3_gather import GATHERED, SMALL_70B, SMALL_70B_SIZES

MEASURED_0_13 = 12_189_696     # full fine-tuning, DeepSpeed 0.13.3 (carry-over from step() into the next step)
MEASURED_0_19 = 9_830_400      # full fine-tuning, DeepSpeed 0.19.8 (reset_step at each forward, PR #6662)


@pytest.mark.parametrize("version, measured", [("0.13.3", MEASURED_0_13), ("0.15", MEASURED_0_13),
                                               ("0.16", MEASURED_0_19), ("0.19.8", MEASURED_0_19),
                                               (None, MEASURED_0_13)])
def test_the_stated_version_is_counted(version, measured):
    training = TrainingSpec(seq_len=64, micro_batch_size=1, method="full", activation_checkpointing="full",
                            deepspeed_version=version)
    arch = architecture_from_hf_config(SMALL_70B)
    assert zero3_gathered_bytes(arch, training, SMALL_70B_SIZES, 2, 2) == measured


def test_lora_under_checkpointing_keeps_the_larger_count_on_0_16_and_later():
    """DeepSpeed 0.19.8 gathered 11,235,328 B for LoRA under non-reentrant checkpointing, 3.0 % above the replay
    without carry-over (its recompute attribution): a >= 0.16 version keeps the count with the carry-over,
    13,910,016 B (what 0.13.3 gathered), which covers it."""
    training = TrainingSpec(seq_len=64, micro_batch_size=1, method="lora", lora=LoraSpec(rank=8),
                            activation_checkpointing="full", deepspeed_version="0.19")
    counted = zero3_gathered_bytes(architecture_from_hf_config(SMALL_70B), training, SMALL_70B_SIZES, 2, 2)
    assert counted == 13_910_016 >= 11_235_328


def test_estimate_and_notes_follow_the_version():
    kw = dict(gpus=8, gpu="a100-80g", strategy="zero3", checkpointing="full")
    larger, old, new = (estimate("llama-2-70b", deepspeed_version=v, **kw) for v in (None, "0.15", "0.19"))
    assert larger.per_gpu.total == old.per_gpu.total > new.per_gpu.total
    assert larger.per_gpu.breakdown[GATHERED] == old.per_gpu.breakdown[GATHERED] > new.per_gpu.breakdown[GATHERED]
    note = next(n for n in new.notes if n.startswith("ZeRO-3 gathered parameters"))
    assert "DeepSpeed 0.19 resets the count at each forward" in note
    assert any("--deepspeed-version counts one" in n for n in larger.notes)
    assert "deepspeed_version" not in TrainingSpec().model_dump()     # a dump without it is what it was


def test_an_unknown_version_is_one_line(capsys):
    assert main(["estimate", "--model", "7B", "--vram", "24", "--gpus", "2", "--strategy", "zero3",
                 "--deepspeed-version", "0.9"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "deepspeed 0.9" in err[0] and "0.13 ... 0.19" in err[0], err
