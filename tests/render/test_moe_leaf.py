"""accelerate's ``deepspeed_moe_layer_cls_names`` as rendered for MoE families under ZeRO-3, run through accelerate's
own code: DeepSpeedPlugin.set_moe_leaf_modules (accelerate/utils/dataclasses.py, called by
Accelerator._prepare_deepspeed) finds each named class in the real model and DeepSpeed marks it a ZeRO-3 leaf."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from advisor import families
from advisor.datafiles import load_data
from advisor.hf_config import architecture_from_hf_config

MOE = ["mixtral", "qwen3_moe", "gpt_oss", "deepseek_v3"] + (["llama4_text"] if families.has_family("llama4_text")
                                                            else [])


@pytest.mark.slow
@pytest.mark.parametrize("model_type", MOE)
def test_rendered_moe_classes_become_zero3_leaves(model_type):
    pytest.importorskip("deepspeed")
    import torch
    from accelerate.utils import DeepSpeedPlugin
    from deepspeed.utils import z3_leaf_module
    from transformers import AutoConfig, AutoModelForCausalLM

    fam = families.family(model_type)
    names = ",".join(families.z3_leaf_modules(model_type))
    assert names
    catalog = next(e["config"] for e in load_data("models.yaml")["models"] if e["config"]["model_type"] == model_type)
    cfg = fam.proxy(architecture_from_hf_config(catalog))      # the family's 2-layer, hidden-64 proxy
    config = AutoConfig.for_model(**cfg)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    DeepSpeedPlugin.set_moe_leaf_modules(SimpleNamespace(transformer_moe_cls_names=names), model)
    leaves = [m for m in model.modules() if z3_leaf_module(m)]
    assert leaves and {type(m).__name__ for m in leaves} == set(names.split(","))


def test_dense_and_non_zero3_render_no_moe_key():
    from tests.render.conftest import render_scenario

    files = render_scenario("--model qwen3-30b-a3b --gpus 8 --gpu h100-sxm --strategy zero2")
    assert "deepspeed_moe_layer_cls_names" not in files["accelerate_config.yaml"]
