"""Parallel layouts (issue 15): each constraint the engines impose is refused in one line naming the flag, the
CLI exits non-zero without a traceback, and the mesh sizes multiply into the world size."""

from __future__ import annotations

import pytest

from advisor.api import build_hardware, build_strategy, estimate, layout_fields
from advisor.errors import InputError
from advisor.layout import data_parallel_size, dp_shard_size

LLAMA8B = "llama-3.1-8b"          # 32 heads, 8 kv heads


@pytest.mark.parametrize("kw, flag, words", [
    (dict(tp=3, strategy="zero1"), "--tp", "does not divide the 8 GPUs"),
    (dict(tp=2, strategy="ddp"), "--tp", "DeepSpeed AutoTP"),
    (dict(tp=2, strategy="fsdp-full"), "--tp", "--fsdp-version 2"),
    (dict(tp=8, gpus=4, nodes=2, strategy="zero1"), "--tp", "spans nodes"),
    (dict(sp=2, strategy="zero3", seq_len=4095), "--sp", "must divide --seq-len 4095"),
    (dict(sp=2, strategy="zero3", attention="eager"), "--sp", "sdpa or flash"),
    (dict(cp=2, strategy="fsdp-full", fsdp_version=2, seq_len=4094), "--cp", "divisible by 4"),
    (dict(cp=2, strategy="fsdp-full", fsdp_version=2, task="infer"), "--cp", "training layout"),
    (dict(tp=2, strategy="zero1", method="qlora"), "--tp", "4-bit"),
])
def test_layout_constraints_name_the_flag(kw, flag, words):
    with pytest.raises(InputError) as exc:
        estimate(LLAMA8B, **{"gpus": 8, "gpu": "h100-sxm", **kw})
    assert exc.value.field == flag
    assert words in str(exc.value)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("kw, words", [
    (dict(sp=2, strategy="fsdp-full"), "--sp needs DeepSpeed"),
    (dict(cp=2, strategy="fsdp-full"), "--cp needs FSDP2"),
    (dict(cp=2, strategy="zero3"), "--cp needs FSDP2"),
    (dict(fsdp_version=2, strategy="zero3"), "--fsdp-version 2 is an FSDP setting"),
    (dict(dp_replicate=2, strategy="zero3"), "--dp-replicate needs FSDP2"),
    (dict(sp=2, cp=2, strategy="fsdp-full", fsdp_version=2), "--sp needs DeepSpeed"),
    (dict(fsdp_version=2, strategy="fsdp-hybrid"), "--dp-replicate N"),
    (dict(fsdp_version=2, strategy="fsdp-no-shard"), "no NO_SHARD"),
])
def test_strategy_level_constraints(kw, words):
    with pytest.raises(InputError) as exc:
        estimate(LLAMA8B, **{"gpus": 8, "gpu": "h100-sxm", **kw})
    assert words in str(exc.value)


def test_heads_must_divide():
    # Llama-3.1-8B has 8 key-value heads: tp 16 on 16 GPUs per node cannot split them
    with pytest.raises(InputError, match="8 key-value heads"):
        estimate(LLAMA8B, gpus=16, vram=80, tp=16, strategy="zero1")


def test_sizes_multiply_into_the_world():
    hw = build_hardware(gpus=8, nodes=2, vram=80)
    s = build_strategy(hw, "fsdp-full", **layout_fields(tp=2, cp=2, dp_replicate=2, fsdp_version=2))
    assert (s.dp_replicate_size, dp_shard_size(hw, s), s.tp_size, s.cp_size) == (2, 2, 2, 2)
    assert data_parallel_size(hw, s) == 4          # tp and cp ranks share a batch


def test_cli_refuses_in_one_line(capsys):
    from advisor.cli import main

    rc = main(["estimate", "--model", LLAMA8B, "--gpus", "8", "--gpu", "h100-sxm", "--tp", "2", "--strategy", "ddp"])
    err = capsys.readouterr().err
    assert rc != 0 and err.count("\n") == 1 and "--tp" in err and "Traceback" not in err


@pytest.mark.parametrize("model", ["qwen3-30b-a3b", "mixtral-8x7b", "deepseek-v3"])
def test_tp_of_moe_or_mla_models_is_refused_not_guessed(model):
    """The TP narrowing is measured on dense models only: experts and latent attention are refused in one line."""
    with pytest.raises(InputError, match="--tp.*not modelled"):
        estimate(model, gpus=8, gpu="h100-sxm", strategy="zero3", tp=8 if model != "qwen3-30b-a3b" else 4,
                 seq_len=4096)
