"""LoRA with all-linear on MoE models, replayed against the tracer: PEFT (0.21) adapts the 3-D expert weights and
the router through ParamWrapper (a merged weight W + BA per forward, saved by the grouped_mm / router mm; the
fused gate_up_proj at rank 2r), not the MLP's nn.Linear modules (advisor/families/replay.py). Before, the
replay missed the merged weights: 32 % (Qwen3-MoE) and 56 % (Mixtral) short of the trace."""

from __future__ import annotations

import pytest

from advisor.hf_config import architecture_from_hf_config
from advisor.memory.activations import activation_memory
from advisor.specs import TrainingSpec

SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
         "num_hidden_layers": 3, "vocab_size": 256}
CASES = {
    "qwen3_moe": dict(SMALL, model_type="qwen3_moe", head_dim=16, num_experts=4, num_experts_per_tok=2,
                      moe_intermediate_size=32),
    "mixtral": dict(SMALL, model_type="mixtral", num_local_experts=4, num_experts_per_tok=2),
}


@pytest.mark.slow
@pytest.mark.parametrize("model_type", sorted(CASES))
def test_all_linear_lora_on_experts_equals_the_trace(model_type):
    pytest.importorskip("peft")
    from advisor.trace import TraceSettings, trace_model

    cfg = CASES[model_type]
    # half-bf16: torch's grouped_mm kernel (no fallback op hiding its offsets), the adapter factors cast to bf16
    est = activation_memory(architecture_from_hf_config(cfg), TrainingSpec(seq_len=40, method="lora",
                                                                          precision="bf16"), "half-bf16")
    traced = trace_model(cfg, TraceSettings(seq_len=40, mode="half-bf16", method="lora"), use_cache=False)
    assert est.activations == traced.activations and "outside_layers" not in est.breakdown


@pytest.mark.slow
@pytest.mark.parametrize("model_type", sorted(CASES))
def test_all_linear_adapter_count_equals_peft(model_type):
    """Adapter elements of all-linear LoRA: PEFT's ParamWrapper shapes (fused gate_up at rank 2r, the router),
    as the meta-device PEFT build counts them (the per-expert-Linear rule was 12-15 % low on Qwen3-30B-A3B and
    DeepSeek-V3)."""
    pytest.importorskip("peft")
    from advisor.param_count import lora_trainable_parameters
    from advisor.trace.tracer import trace_parameters
    from advisor.trace import TraceSettings

    cfg = CASES[model_type]
    peft = trace_parameters(cfg, TraceSettings(seq_len=1, method="lora", lora_rank=8), use_cache=False).trainable
    assert lora_trainable_parameters(architecture_from_hf_config(cfg), 8, ("all-linear",)) == peft
