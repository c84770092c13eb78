"""The LoRA base's dtype is the user's loading choice, not an input: dsadvise counts it 16-bit and says so, with
what an fp32-loaded base (transformers v4 without torch_dtype; PEFT's examples/sft) would add per GPU."""

from __future__ import annotations

import pytest

from advisor.api import build_hardware, estimate
from advisor.recommend import recommend
from advisor.specs import TrainingSpec

LLAMA2_7B = 6_738_415_616          # meta-llama/Llama-2-7b-hf (tests/test_param_count.py)


def _note(est) -> list[str]:
    return [n for n in est.notes if n.startswith("the LoRA base is counted in 16-bit")]


@pytest.mark.parametrize("strategy, gpus, per_gpu", [
    ("single", 1, LLAMA2_7B * 2),            # the whole 16-bit base on the GPU
    ("ddp", 2, LLAMA2_7B * 2),
    ("fsdp-full", 4, LLAMA2_7B * 2 // 4),    # FULL_SHARD: a quarter of it on each GPU
])
def test_said_with_the_bytes_an_fp32_base_would_add(strategy, gpus, per_gpu):
    est = estimate(model="llama-2-7b", gpus=gpus, gpu="a100-80g", strategy=strategy, method="lora",
                   precision="bf16", micro_batch=1, seq_len=512)
    [note] = _note(est)
    assert f"{per_gpu / 2**30:.2f} GiB per GPU here" in note


@pytest.mark.parametrize("kw", [
    dict(strategy="zero3", gpus=2, method="lora", precision="bf16"),       # DeepSpeed casts the module itself
    dict(strategy="single", gpus=1, method="lora", precision="pure-bf16"),  # a 16-bit model by the user's word
    dict(strategy="single", gpus=1, method="qlora", precision="bf16"),      # the decoder is NF4
    dict(strategy="single", gpus=1, method="full", precision="bf16"),
    dict(strategy="fsdp-full", gpus=2, method="lora", precision="bf16", offload_param="cpu",
         offload_optimizer="cpu"),                                           # the base lives on the CPU
])
def test_not_said_where_there_is_no_such_choice_on_the_gpu(kw):
    est = estimate(model="llama-2-7b", gpu="a100-80g", micro_batch=1, seq_len=512, **kw)
    assert _note(est) == []


def test_recommendations_that_may_pick_lora_say_it():
    rec = recommend("llama-2-7b", build_hardware(gpus=1, gpu="rtx4090"), TrainingSpec(seq_len=512), method="lora")
    assert any(a.startswith("the LoRA base is counted in 16-bit") for a in rec.assumptions)
