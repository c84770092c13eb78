"""Explicit LoRA targets on MoE models, counted as PEFT 0.21 builds them on transformers 5 (ground truth: PEFT on
the real model built with from_config, meta device): PEFT converts the v4 expert names to the fused experts'
parameters (peft/utils/transformers_weight_conversion.py ``_convert_peft_config_moe``): Mixtral's w1 + w3 and
Qwen3-MoE / DeepSeek-V3's gate_proj + up_proj become gate_up_proj at rank 2r, w2 / down_proj the experts'
down_proj, gate the router. advisor.param_count counted per-expert linears at rank r: Mixtral w1,w3 was 40 %
short of what PEFT trains."""

from __future__ import annotations

import pytest

from advisor.hf_config import architecture_from_hf_config
from advisor.param_count import lora_trainable_parameters

SMALL = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
             vocab_size=256)
MIXTRAL = dict(SMALL, model_type="mixtral", num_local_experts=4, num_experts_per_tok=2)
QWEN3_MOE = dict(SMALL, model_type="qwen3_moe", head_dim=16, num_experts=4, num_experts_per_tok=2,
                 moe_intermediate_size=32)


def peft_trainable(cfg: dict, targets) -> int:
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))
    model = get_peft_model(model, LoraConfig(r=8, target_modules=list(targets), task_type="CAUSAL_LM"))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("cfg, targets", [
    (MIXTRAL, ("w1", "w3")), (MIXTRAL, ("w1", "w3", "w2", "q_proj")), (MIXTRAL, ("gate",)),
    (QWEN3_MOE, ("gate_proj", "up_proj")), (QWEN3_MOE, ("down_proj", "q_proj")),
])
def test_explicit_expert_targets_count_what_peft_trains(cfg, targets):
    assert lora_trainable_parameters(architecture_from_hf_config(cfg), 8, targets) == peft_trainable(cfg, targets)
