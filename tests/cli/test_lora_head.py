"""--lora-targets with the lm_head (issue 17, L): accepted and counted, its note said; refused in one line (exit 2)
where no engine would run it."""

from __future__ import annotations

import json

import pytest

from advisor.cli import main


def run(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_lm_head_target_is_counted_and_noted(capsys):
    base = ("estimate", "--model", "gemma-2b", "--gpu", "a10g", "--method", "lora", "--lora-rank", "8", "--json")
    code, out, err = run(capsys, *base, "--lora-targets", "all-linear")
    assert code == 0, err
    without = json.loads(out)
    code, out, err = run(capsys, *base, "--lora-targets", "all-linear,lm_head")
    assert code == 0, err
    with_head = json.loads(out)
    # gemma-2b: hidden 2048, vocabulary 256000 (models.yaml): lora_A 8 x 2048 + lora_B 256000 x 8
    assert with_head["model"]["trainable_parameters"] - without["model"]["trainable_parameters"] == 8 * (2048 + 256000)
    assert with_head["per_gpu"]["activations"] > without["per_gpu"]["activations"]
    assert any("lm_head" in n and "ensure_weight_tying" in n for n in with_head["notes"])   # tied head: said


@pytest.mark.parametrize("extra,needle", [
    (("--lora-targets", "q_proj,lm_head", "--loss", "fused-linear"), "lm_head.weight"),
    (("--lora-targets", "lm_hed"), "lm_head"),
    (("--model", "mixtral-8x7b", "--lora-targets", "all-linear,lm_head"), "all-linear"),
])
def test_bad_head_targets_are_one_line_exit_2(capsys, extra, needle):
    argv = ["estimate", "--model", "llama-3.2-1b", "--gpu", "a100-80g", "--method", "lora", *extra]
    code, _, err = run(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err
    assert needle in err


def test_recommend_does_not_advise_a_fused_loss_that_would_skip_the_head_adapter(capsys):
    base = ("recommend", "--model", "gemma-2b", "--gpu", "a10g", "--method", "lora", "--json")
    code, out, err = run(capsys, *base)
    assert code == 0, err
    assert "fused-linear-loss" in out          # 256k vocabulary: the rule fires
    code, out, err = run(capsys, *base, "--lora-targets", "all-linear,lm_head")
    assert code == 0, err
    assert "fused-linear-loss" not in out
