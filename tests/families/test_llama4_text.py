"""Llama-4 text (advisor/families/llama4_text.py): its config lists read as Llama4TextConfig derives them, its
parameters and its replayed saved bytes against the real transformers model (tracer), byte for byte, at reduced
width and 12 layers of Maverick's pattern (chunked RoPE / full NoPE attention x dense / MoE feed-forward)."""

from __future__ import annotations

from functools import lru_cache

import pytest

from advisor.hf_config import architecture_from_hf_config
from advisor.memory.activations import activation_memory
from advisor.param_count import count_parameters
from advisor.specs import LoraSpec, TrainingSpec

# Maverick's structure (interleave_moe_layer_step 2, NoPE every 4th layer) at hidden 64; chunk 16 < sequence 32;
# 12 layers: the tracer's prefix (each kind twice at index >= 1) is 8, so layers 8..11 are extrapolated
MAVERICK_SMALL = {"model_type": "llama4_text", "hidden_size": 64, "intermediate_size": 64,
                  "intermediate_size_mlp": 128, "num_hidden_layers": 12, "num_attention_heads": 4,
                  "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 256, "num_local_experts": 4,
                  "num_experts_per_tok": 1, "attention_chunk_size": 16, "interleave_moe_layer_step": 2,
                  "pad_token_id": None}
SEQ = 32
TARGETS = ("q_proj", "v_proj")


def test_layer_kinds_follow_llama4_text_config():
    scout = architecture_from_hf_config(dict(MAVERICK_SMALL, interleave_moe_layer_step=1))
    assert scout.layer_pattern == ("chunked_attention/rope/moe",) * 3 + ("full_attention/nope/moe",)
    assert scout.dense_layers == 0 and scout.moe_layers == 12
    maverick = architecture_from_hf_config(MAVERICK_SMALL)
    assert maverick.layer_pattern == ("chunked_attention/rope/dense", "chunked_attention/rope/moe",
                                      "chunked_attention/rope/dense", "full_attention/nope/moe")
    assert maverick.dense_layers == 6 and maverick.moe_layers == 6
    listed = architecture_from_hf_config(dict(MAVERICK_SMALL, moe_layers=list(range(12)),
                                              no_rope_layers=[1, 0] * 6, attention_chunk_size=None))
    assert listed.layer_pattern == ("full_attention/rope/moe", "full_attention/nope/moe")
    assert listed.attention_chunk_size is None


@lru_cache(maxsize=None)
def _trace(mode: str, attention: str, method: str, batch: int):
    from advisor.trace import TraceSettings, trace_model

    return trace_model(MAVERICK_SMALL, TraceSettings(seq_len=SEQ, batch=batch, mode=mode, attention=attention,
                                                     method=method, lora_targets=TARGETS), use_cache=False)


def _replay(mode: str, attention: str, method: str, batch: int):
    spec = TrainingSpec(seq_len=SEQ, micro_batch_size=batch, attention=attention, method=method,
                        lora=LoraSpec(target_modules=TARGETS))
    return activation_memory(architecture_from_hf_config(MAVERICK_SMALL), spec, mode)


@pytest.mark.slow
def test_parameters_equal_the_real_model():
    pytest.importorskip("transformers")
    from advisor.trace.tracer import trace_parameters

    counts = count_parameters(architecture_from_hf_config(MAVERICK_SMALL))
    traced = trace_parameters(MAVERICK_SMALL, use_cache=False)
    assert (traced.total, traced.active_per_token, traced.lm_head) == \
        (counts.total, counts.active_per_token, counts.lm_head)
    assert max(traced.per_layer) == counts.per_layer            # an MoE layer, the largest kind


@pytest.mark.slow
def test_llama4_replay_equals_a_full_depth_trace_and_the_tracers_extrapolation():
    """fp32, SDPA (the chunked layers' mask: sequence > chunk), batch 2. The replay traces one layer of each kind
    and sums them over the 12 layers; the tracer extrapolates from its 8-layer prefix; a direct trace of all 12
    layers is the reference for both."""
    pytest.importorskip("transformers")
    from advisor.trace.result import TraceSettings
    from advisor.trace.tracer import _trace_prefix, check_causal_lm

    traced = _trace("fp32", "sdpa", "full", 2)
    assert len(set(traced.saved_per_layer)) == 3                # dense, RoPE MoE and NoPE MoE layers differ
    assert traced.traced_prefix == 8
    config, _ = check_causal_lm(MAVERICK_SMALL)
    direct = _trace_prefix(config, 12, TraceSettings(seq_len=SEQ, batch=2, attention="sdpa"), False).activations
    assert _replay("fp32", "sdpa", "full", 2).activations == traced.activations == direct


@pytest.mark.slow
def test_autocast_frozen_experts_differ_by_their_weight_copies_only():
    """autocast runs the experts' bmm in bf16: each MoE layer saves a bf16 copy of its frozen fp32 gate_up_proj and
    down_proj. The replay reports those with the other weight copies (they scale with parameters); the tracer's
    weight-copy rule knows 2-D weights only and counts these 3-D ones as activations."""
    pytest.importorskip("transformers")
    from advisor.trace import TraceSettings, trace_model

    cfg = dict(MAVERICK_SMALL, num_hidden_layers=4)                # one period: each kind once
    traced = trace_model(cfg, TraceSettings(seq_len=SEQ, mode="autocast-bf16", attention="eager", method="lora",
                                            lora_targets=TARGETS), use_cache=False)
    replay = activation_memory(architecture_from_hf_config(cfg),
                               TrainingSpec(seq_len=SEQ, attention="eager", method="lora",
                                            lora=LoraSpec(target_modules=TARGETS)), "autocast-bf16")
    h, i, E, moe_layers = 64, 64, 4, 2
    assert traced.activations - replay.activations == moe_layers * E * 3 * h * i * 2


def test_lora_on_the_router_is_refused_and_all_linear_leaves_it_out():
    from advisor.errors import InputError
    from advisor.param_count import all_linear_note, linear_shapes, lora_trainable_parameters

    arch = architecture_from_hf_config(MAVERICK_SMALL)
    with pytest.raises(InputError, match="Llama4Router"):
        lora_trainable_parameters(arch, 8, ("q_proj", "router"))
    everything = lora_trainable_parameters(arch, 8, tuple(n for n in linear_shapes(arch) if n != "router"))
    assert lora_trainable_parameters(arch, 8, ("all-linear",)) == everything
    assert 'exclude_modules=["router"]' in all_linear_note(arch, ("all-linear",))
    assert all_linear_note(arch, TARGETS) is None


@pytest.mark.slow
def test_peft_fails_on_the_router_and_trains_without_it():
    """What the refusal and the note say, on the real model: PEFT's all-linear wraps Llama4Router and the forward
    fails; with exclude_modules=["router"] forward and backward run."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = {k: v for k, v in MAVERICK_SMALL.items() if k != "model_type"}
    ids = torch.zeros((1, 8), dtype=torch.long)
    for exclude, fails in ((None, True), (["router"], False)):
        one_moe_layer = dict(cfg, num_hidden_layers=1, interleave_moe_layer_step=1)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama4_text", **one_moe_layer))
        lora = peft.LoraConfig(r=4, target_modules="all-linear", exclude_modules=exclude, task_type="CAUSAL_LM")
        wrapped = peft.get_peft_model(model, lora)
        if fails:
            with pytest.raises(AttributeError, match="tuple"):
                wrapped(input_ids=ids, labels=ids)
        else:
            wrapped(input_ids=ids, labels=ids).loss.backward()


@pytest.mark.parametrize("bad", [{"no_rope_layers": "x"}, {"no_rope_layers": [1, 2]}, {"moe_layers": ["a"]},
                                 {"layer_types": 3}, {"no_rope_layers": [1, 1, 1]},
                                 {"interleave_moe_layer_step": 0}, {"num_experts_per_tok": 5}])
def test_bad_layer_lists_are_one_line_errors(bad):
    from advisor.errors import InputError

    with pytest.raises(InputError, match="config.json: "):
        architecture_from_hf_config(dict(MAVERICK_SMALL, **bad))


def test_step_time_computes_every_expert_as_llama4textmoe_does():
    """Llama4TextMoe multiplies every token through every expert (x.repeat(num_experts, 1)): the hardware's matmul
    parameters per token are all the layer weights, not the top-k's (GPT-OSS, grouped_mm: only the routed ones)."""
    from advisor.recommend.step_time import matmul_parameters

    for cfg, every in ((MAVERICK_SMALL, True), ({**MAVERICK_SMALL, "model_type": "gpt_oss", "num_hidden_layers": 4,
                                                 "sliding_window": 16}, False)):
        arch = architecture_from_hf_config(cfg)
        c = count_parameters(arch)
        per_token = c.total if every else c.active_per_token
        assert matmul_parameters(arch, c) == per_token - c.embedding - c.lm_head - c.final + 256 * 64


def test_flash_attention_is_refused_as_transformers_refuses_it():
    from advisor.errors import InputError

    with pytest.raises(InputError, match="no flash-attention path"):
        _replay("half-bf16", "flash", "full", 1)


@pytest.mark.slow
def test_autocast_weight_copies_are_counted_per_layer_kind():
    """autocast's bf16 weight copies (the model-state side, info:autocast_weight_copies) of a 4-layer period of
    dense and MoE layers equal the tracer's: each saving layer counts its own kind's copies."""
    pytest.importorskip("transformers")
    from advisor.trace import TraceSettings, trace_model

    cfg = dict(MAVERICK_SMALL, num_hidden_layers=4)
    traced = trace_model(cfg, TraceSettings(seq_len=SEQ, mode="autocast-bf16"), use_cache=False)
    replay = activation_memory(architecture_from_hf_config(cfg), TrainingSpec(seq_len=SEQ), "autocast-bf16")
    assert replay.activations == traced.activations
    assert replay.breakdown["info:autocast_weight_copies"] == traced.weight_copies
