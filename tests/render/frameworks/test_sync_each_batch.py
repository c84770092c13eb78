"""--sync-each-batch rendered (issue 17, helper L): transformers' accelerator_config gradient_accumulation_kwargs,
parsed by the framework's own parser; frameworks without the key refuse it."""

from __future__ import annotations

import pytest
import yaml

from advisor.errors import InputError

from .conftest import plan_scenario

ARGV = "--model gpt2 --gpus 2 --vram 24 --strategy fsdp-full --global-batch 8 --sync-each-batch"


def test_hf_trainer_args_carry_it_and_transformers_parses_it():
    pytest.importorskip("transformers")
    from transformers import HfArgumentParser, TrainingArguments

    *_, files = plan_scenario(ARGV, "hf-trainer")
    data = yaml.safe_load(files["hf_trainer_args.yaml"])
    assert data["accelerator_config"] == {"gradient_accumulation_kwargs": {"sync_each_batch": True}}
    (ta,) = HfArgumentParser(TrainingArguments).parse_dict({**data, "use_cpu": True}, allow_extra_keys=False)
    # what Trainer.create_accelerator_and_postprocess hands to GradientAccumulationPlugin
    assert ta.accelerator_config.gradient_accumulation_kwargs == {"sync_each_batch": True}
    assert "sync_each_batch=True" in files["README.md"]        # the plain-accelerate script's plugin, said
    *_, files = plan_scenario(ARGV.removesuffix(" --sync-each-batch"), "hf-trainer")
    assert "accelerator_config" not in yaml.safe_load(files["hf_trainer_args.yaml"])


def test_trl_sft_config_carries_it_and_validates():
    from advisor.render.frameworks.validate import importable, validate_framework_files
    from advisor.render.validate import StepStatus

    *_, files = plan_scenario(ARGV, "trl")
    data = yaml.safe_load(files["trl_sft.yaml"])
    assert data["accelerator_config"] == {"gradient_accumulation_kwargs": {"sync_each_batch": True}}
    if importable("trl") is None:
        (step,) = validate_framework_files(files, "trl")
        assert step.status == StepStatus.PASS, step.findings


@pytest.mark.parametrize("framework", ["llamafactory", "axolotl"])
def test_frameworks_without_the_key_refuse_it(framework):
    with pytest.raises(InputError) as err:
        plan_scenario(ARGV, framework)
    assert err.value.field == "--sync-each-batch" and "\n" not in str(err.value)
