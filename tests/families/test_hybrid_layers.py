"""Families whose layers come in kinds (Gemma-3: sliding / full attention) replayed byte for byte against the
tracer, at a sequence longer than the window so that the kinds save different sets."""

from __future__ import annotations

import pytest

from advisor.hf_config import architecture_from_hf_config
from advisor.memory.activations import activation_memory
from advisor.specs import LoraSpec, TrainingSpec

# 5 layers of pattern (sliding, full): each kind twice at index >= 1, window 16 < sequence 64
GEMMA3 = {"model_type": "gemma3_text", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 5,
          "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 256,
          "sliding_window": 16, "sliding_window_pattern": 2, "query_pre_attn_scalar": 16}
SEQ = 64


def test_the_layer_pattern_is_read_as_transformers_derives_it():
    arch = architecture_from_hf_config(GEMMA3)
    assert arch.layer_kinds == ("sliding_attention", "full_attention") * 2 + ("sliding_attention",)
    listed = dict(GEMMA3, layer_types=["full_attention", "sliding_attention"] * 3 + ["full_attention"])
    assert architecture_from_hf_config(listed).layer_pattern == ("full_attention", "sliding_attention")
    default = architecture_from_hf_config({k: v for k, v in GEMMA3.items() if k != "sliding_window_pattern"})
    assert default.layer_pattern == ("sliding_attention",) * 5 + ("full_attention",)


@pytest.mark.slow
@pytest.mark.parametrize("mode, attention, method", [("fp32", "sdpa", "full"), ("autocast-bf16", "eager", "lora")])
def test_gemma3_replay_equals_the_trace(mode, attention, method):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from advisor.trace import TraceSettings, trace_model

    targets = ("q_proj", "v_proj")
    replay = activation_memory(architecture_from_hf_config(GEMMA3),
                               TrainingSpec(seq_len=SEQ, attention=attention, method=method,
                                            lora=LoraSpec(target_modules=targets)), mode)
    traced = trace_model(GEMMA3, TraceSettings(seq_len=SEQ, mode=mode, attention=attention, method=method,
                                               lora_targets=targets), use_cache=False)
    assert len(set(traced.saved_per_layer)) == (2 if attention == "sdpa" else 1)   # SDPA: the window mask
    assert replay.activations == traced.activations


def test_hybrid_layers_under_freeze_and_checkpointing_count_each_kind():
    arch = architecture_from_hf_config(GEMMA3)
    t = dict(seq_len=SEQ, attention="eager", precision="fp32")
    full = activation_memory(arch, TrainingSpec(**t, activation_checkpointing="full"), "fp32")
    assert full.breakdown["attention_mask"] == 2 * SEQ * SEQ * 4            # one mask per layer type
    frozen = activation_memory(arch, TrainingSpec(**t, method="freeze", freeze_trainable_layers=2), "fp32")
    whole = activation_memory(arch, TrainingSpec(**t), "fp32")
    assert 0 < frozen.breakdown["layers"] < whole.breakdown["layers"]
