"""--sync-each-batch (issue 17, helper L): an FSDP accumulation setting, refused elsewhere in one line."""

from __future__ import annotations

import pytest

from advisor.errors import InputError

KW = dict(gpus=8, gpu="a100-80g", micro_batch=1, seq_len=512, global_batch=16)


def test_the_flag_fills_the_spec_field_and_the_dump_shows_it_only_when_set():
    from advisor.api import build_hardware, build_training
    from advisor.cli import build_parser
    from advisor.cli.flags import SPEC_FIELD_FLAGS, problem_kwargs

    args = build_parser().parse_args(["estimate", "--model", "gpt2", "--vram", "24", "--sync-each-batch"])
    assert problem_kwargs(args)["sync_each_batch"] is True
    assert SPEC_FIELD_FLAGS["sync_each_batch"] == "--sync-each-batch"
    hw = build_hardware(2, 1, 24)
    assert "sync_each_batch" not in build_training(hw).model_dump()           # the goldens' dumps unchanged
    assert build_training(hw, sync_each_batch=True).model_dump()["sync_each_batch"] is True


@pytest.mark.parametrize("strategy, gpus, words", [("ddp", 8, "DDP's no_sync keeps no more memory"),
                                                   ("zero3", 8, "DeepSpeed accumulates gradients itself"),
                                                   ("single", 1, "one GPU synchronizes nothing")])
def test_other_strategies_are_refused(strategy, gpus, words):
    from advisor.api import estimate

    with pytest.raises(InputError) as err:
        estimate("gpt2", strategy=strategy, sync_each_batch=True, **{**KW, "gpus": gpus})
    assert err.value.field == "--sync-each-batch" and words in str(err.value) and "\n" not in str(err.value)


def test_fsdp_notes_it_and_says_when_it_has_no_effect():
    from advisor.api import estimate

    est = estimate("gpt2", strategy="fsdp-full", sync_each_batch=True, **KW)
    assert any("each of the 2 micro-batches reduce-scatters" in n for n in est.notes)
    est = estimate("gpt2", strategy="fsdp-full", sync_each_batch=True, **{**KW, "global_batch": 8})
    assert any("no effect here: no gradient accumulation" in n for n in est.notes)


def test_generate_drops_it_when_the_recommendation_is_no_fsdp_layout():
    from advisor.cli import build_parser
    from advisor.cli.configs import plan

    args = build_parser().parse_args(["generate", "--model", "gpt2", "--gpus", "2", "--vram", "24", "--global-batch",
                                      "8", "--sync-each-batch", "--out", "/x"])
    model, hw, training, strategy, gas, rec = plan(args)
    if strategy.backend == "fsdp":
        assert training.sync_each_batch
    else:
        assert not training.sync_each_batch and any("--sync-each-batch dropped" in a for a in args.assumed)
