"""GPT-OSS replayed (advisor/families/gpt_oss.py) against the tracer on the real transformers model, byte for byte.

Reduced width (hidden 64, 4 experts, top-2), 2 layers (one sliding, one full attention), sequence 48 > window 16.
With bf16 weights the experts run torch's grouped_mm, which saves its int32 expert offsets like any tensor: the
replay equals the trace. Other dtypes take transformers' fallback op, which keeps the offsets as a ctx attribute
saved_tensors_hooks cannot see: there the replay exceeds the trace by exactly 4 bytes per expert per layer.
"""

from __future__ import annotations

import pytest

from advisor.hf_config import architecture_from_hf_config
from advisor.memory.activations import REPLAYED_FAMILIES, activation_memory
from advisor.specs import LoraSpec, TrainingSpec

GPT_OSS = {"model_type": "gpt_oss", "hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 256,
           "num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": 16, "pad_token_id": None}
SEQ = 48
TARGETS = ("q_proj", "v_proj")


def test_gpt_oss_is_replayed_and_its_sdpa_runs_eager():
    assert "gpt_oss" in REPLAYED_FAMILIES
    arch = architecture_from_hf_config(GPT_OSS)
    sdpa = activation_memory(arch, TrainingSpec(seq_len=SEQ, attention="sdpa"), "fp32")
    eager = activation_memory(arch, TrainingSpec(seq_len=SEQ, attention="eager"), "fp32")
    assert sdpa == eager   # transformers: GptOssPreTrainedModel._supports_sdpa = False


@pytest.mark.slow
@pytest.mark.parametrize("mode, method, batch, offsets, targets", [
    ("fp32", "full", 2, True, TARGETS),            # fallback experts: offsets unseen by the hooks
    ("autocast-bf16", "lora", 1, True, TARGETS),   # fp32 frozen experts: the fallback still saves its input
    ("half-bf16", "lora", 2, False, ("all-linear",)),   # torch grouped_mm: everything seen; PEFT skips the router
])
def test_gpt_oss_replay_equals_the_trace(mode, method, batch, offsets, targets):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from advisor.trace import TraceSettings, trace_model

    arch = architecture_from_hf_config(GPT_OSS)
    replay = activation_memory(arch, TrainingSpec(seq_len=SEQ, micro_batch_size=batch, attention="eager",
                                                  method=method, lora=LoraSpec(target_modules=targets)), mode)
    traced = trace_model(GPT_OSS, TraceSettings(seq_len=SEQ, batch=batch, mode=mode, attention="eager",
                                                method=method, lora_targets=targets), use_cache=False)
    unseen = 4 * arch.num_experts * arch.num_layers if offsets else 0
    assert replay.activations - traced.activations == unseen
    assert replay.breakdown["per_layer"] - unseen // arch.num_layers == traced.saved_per_layer[-1]


@pytest.mark.slow
def test_frozen_fp32_experts_still_save_the_fallback_inputs():
    """The shared MoE replay (Mixtral, Qwen3-MoE) under LoRA with fp32 experts: transformers' fallback grouped_mm
    saves its inputs although the experts are frozen (it under-counted 147 KB of 878 KB here before)."""
    pytest.importorskip("transformers")
    from advisor.trace import TraceSettings, trace_model

    cfg = {"model_type": "qwen3_moe", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 256, "num_experts": 4,
           "num_experts_per_tok": 2, "moe_intermediate_size": 32, "pad_token_id": None}
    arch = architecture_from_hf_config(cfg)
    replay = activation_memory(arch, TrainingSpec(seq_len=SEQ, method="lora", lora=LoraSpec(target_modules=TARGETS)),
                               "fp32")
    traced = trace_model(cfg, TraceSettings(seq_len=SEQ, method="lora", lora_targets=TARGETS), use_cache=False)
    assert replay.activations - traced.activations == 4 * arch.num_experts * arch.num_layers


def test_the_eager_fallback_is_said_in_the_notes():
    from advisor.api import estimate

    notes = estimate("gpt-oss-20b", gpus=8, gpu="h100-sxm", attention="sdpa").notes
    assert any("no SDPA path" in n and "eager" in n for n in notes)
    assert not any("no SDPA path" in n for n in estimate("gpt-oss-20b", gpus=8, gpu="h100-sxm",
                                                             attention="flash").notes)
