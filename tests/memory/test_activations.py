"""Activation estimate: live agreement with what autograd saves, and arithmetic properties.

The live tests build small real ``transformers`` models (a few layers, reduced or real widths, short
sequences) with the ground-truth harness ``benchmarks.harness`` (kinds ``saved`` and ``transient``) and
require the estimate to land in -3%..+10% of the measured saved-for-backward bytes. The full campaign at
real widths is ``python -m benchmarks.accuracy`` (results in ``docs/accuracy.md``).
"""

from __future__ import annotations


import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from advisor.architecture import Architecture
from advisor.memory.activations import ActivationEstimate, activation_memory, compute_mode
from advisor.hf_config import architecture_from_hf_config
from advisor.specs import LoraSpec, TrainingSpec

LOW, HIGH = -0.03, 0.10


def _llama(**kw) -> Architecture:
    base = dict(family="llama", num_layers=32, hidden_size=4096, num_attention_heads=32, num_key_value_heads=32,
                head_dim=128, intermediate_size=11008, vocab_size=32000)
    base.update(kw)
    return Architecture(**base)


def _spec(**kw) -> TrainingSpec:
    base = dict(seq_len=2048, micro_batch_size=1, attention="sdpa", activation_checkpointing="none")
    base.update(kw)
    return TrainingSpec(**base)


# ----------------------------------------------------------------------------------------------------------
# Live agreement (small real models; each case a few seconds)
# ----------------------------------------------------------------------------------------------------------
# Reduced-width configs keep every family's structure: GQA, fused projections, norms, activations, dropout.
SMALL = {
    "llama-gqa": dict(model_type="llama", hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                      num_attention_heads=16, num_key_value_heads=4, vocab_size=32000,
                      tie_word_embeddings=False),
    "qwen2": dict(model_type="qwen2", hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                  num_attention_heads=8, num_key_value_heads=2, vocab_size=152064, tie_word_embeddings=False),
    "gemma2": dict(model_type="gemma2", hidden_size=768, intermediate_size=3072, num_hidden_layers=6,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=256, vocab_size=32000,
                   attn_logit_softcapping=50.0, final_logit_softcapping=30.0, query_pre_attn_scalar=256,
                   hidden_activation="gelu_pytorch_tanh", sliding_window=4096),
    "phi3": dict(model_type="phi3", hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                 num_attention_heads=16, num_key_value_heads=16, vocab_size=32064, tie_word_embeddings=False,
                 resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0, pad_token_id=32000),
    "gpt2-medium": dict(model_type="gpt2", n_embd=1024, n_layer=24, n_head=16, n_positions=1024,
                        vocab_size=50257, activation_function="gelu_new", resid_pdrop=0.1, embd_pdrop=0.1,
                        attn_pdrop=0.1),
    "neox": dict(model_type="gpt_neox", hidden_size=1024, intermediate_size=4096, num_hidden_layers=8,
                 num_attention_heads=8, vocab_size=50432, hidden_act="gelu_fast", rotary_pct=0.25,
                 use_parallel_residual=True, tie_word_embeddings=False),
    "opt": dict(model_type="opt", hidden_size=1024, ffn_dim=4096, num_hidden_layers=8, num_attention_heads=16,
                vocab_size=50272, activation_function="relu", word_embed_proj_dim=1024, dropout=0.1,
                attention_dropout=0.0, do_layer_norm_before=True, pad_token_id=1),
    "mixtral": dict(model_type="mixtral", hidden_size=512, intermediate_size=1024, num_hidden_layers=4,
                    num_attention_heads=8, num_key_value_heads=2, vocab_size=32000, num_local_experts=4,
                    num_experts_per_tok=2, tie_word_embeddings=False),
}

LIVE = [
    # model, mode, attention, checkpointing, seq, batch, method
    ("llama-gqa", "autocast-bf16", "sdpa", "none", 128, 2, "full"),
    ("llama-gqa", "half-bf16", "eager", "none", 64, 2, "full"),
    ("llama-gqa", "fp32", "sdpa", "full", 128, 1, "full"),
    ("llama-gqa", "autocast-bf16", "eager", "selective", 64, 1, "full"),
    ("llama-gqa", "half-bf16", "sdpa", "none", 64, 2, "lora"),
    ("qwen2", "half-bf16", "sdpa", "none", 128, 1, "full"),
    ("gemma2", "autocast-bf16", "eager", "none", 64, 1, "full"),
    ("phi3", "half-bf16", "sdpa", "none", 128, 2, "full"),
    ("gpt2-medium", "autocast-bf16", "eager", "none", 64, 2, "full"),
    ("gpt2-medium", "half-bf16", "sdpa", "full", 128, 1, "full"),
    ("neox", "autocast-bf16", "sdpa", "none", 64, 1, "full"),
    ("opt", "half-bf16", "eager", "none", 64, 2, "full"),
    ("mixtral", "half-bf16", "sdpa", "none", 64, 1, "full"),
]


@pytest.mark.slow
@pytest.mark.parametrize("model,mode,attn,ckpt,seq,batch,method", LIVE,
                         ids=["-".join(map(str, c)) for c in LIVE])
def test_estimate_matches_measured_saved_bytes(model, mode, attn, ckpt, seq, batch, method, harness_kind):
    saved = harness_kind("saved")
    cfg = SMALL[model]
    arch = architecture_from_hf_config(cfg)
    spec = _spec(seq_len=seq, micro_batch_size=batch, attention=attn, activation_checkpointing=ckpt,
                 method=method, lora=LoraSpec(rank=8))
    m = saved.measure_saved(cfg, seq_len=seq, batch=batch, mode=mode, attn=attn, checkpointing=ckpt,
                              method=method, lora_rank=8)
    est = activation_memory(arch, spec, mode)
    measured = m.total(arch.num_layers)
    err = (est.activations - measured) / measured
    assert LOW <= err <= HIGH, f"total: estimated {est.activations:,} vs measured {measured:,} ({err:+.2%})"
    per_layer_err = (est.breakdown["per_layer"] - m.per_layer) / m.per_layer
    assert LOW <= per_layer_err <= HIGH, f"per layer: {est.breakdown['per_layer']:,} vs {m.per_layer:,}"


@pytest.mark.slow
def test_backward_transient_not_underestimated(harness_kind):
    """The loss-backward transient (two fp32 N x V gradients) and the held logits are what the allocator sees."""
    transient = harness_kind("transient")
    cfg = SMALL["llama-gqa"]
    arch = architecture_from_hf_config(cfg).model_copy(update={"num_layers": 2})
    spec = _spec(seq_len=128, micro_batch_size=1)
    r = transient.measure_backward_peak(cfg, seq_len=128, batch=1, mode="fp32", attn="sdpa")
    est = activation_memory(arch, spec, "fp32")
    held = est.breakdown["info:logits_output_held"]
    assert held == r.logits_held
    transient_est = est.temporaries - held
    assert transient_est >= r.transient
    assert transient_est <= 1.10 * r.transient
    fwd_est = est.activations + held
    assert 0.97 * r.forward_level <= fwd_est <= 1.10 * r.forward_level


# A small vocabulary hides the loss moment, so the decoder layer's backward moment is the measured peak.
LAYER_MOMENT = [
    # model, attention, checkpointing, seq, batch
    ("llama-gqa", "sdpa", "none", 256, 1),
    ("llama-gqa", "eager", "selective", 128, 1),
    ("llama-gqa", "sdpa", "full", 128, 2),
    ("gpt2-medium", "eager", "none", 128, 2),
    ("neox", "sdpa", "none", 128, 1),
]


@pytest.mark.slow
@pytest.mark.parametrize("model,attn,ckpt,seq,batch", LAYER_MOMENT, ids=["-".join(map(str, c)) for c in LAYER_MOMENT])
def test_layer_backward_moment_matches_allocator(model, attn, ckpt, seq, batch, harness_kind):
    """The replayed decoder-layer backward (gradient buffers, formula temporaries, frees of saved tensors,
    accumulation, recomputation) against the CPU allocator's peak, fp32, 2 layers, vocabulary 512."""
    transient = harness_kind("transient")
    cfg = {**SMALL[model], "vocab_size": 512}
    arch = architecture_from_hf_config(cfg).model_copy(update={"num_layers": 2})
    spec = _spec(seq_len=seq, micro_batch_size=batch, attention=attn, activation_checkpointing=ckpt)
    r = transient.measure_backward_peak(cfg, seq_len=seq, batch=batch, mode="fp32", attn=attn, checkpointing=ckpt)
    est = activation_memory(arch, spec, "fp32")
    held = est.breakdown["info:logits_output_held"]
    assert est.breakdown["temp:layer_backward"] > est.breakdown["temp:logits_and_loss_backward"]
    err = (est.temporaries - held - r.transient) / r.transient
    assert LOW <= err <= HIGH, f"estimated {est.temporaries - held:,} vs measured {r.transient:,} ({err:+.2%})"
    assert 0 < est.breakdown["info:layer_transient"] <= est.temporaries + est.activations


@pytest.mark.slow
def test_two_layer_difference_is_the_second_layer(harness_kind):
    """per_layer = m(2) - m(1) equals what the appended layer alone first saves."""
    m = harness_kind("saved").measure_saved(SMALL["llama-gqa"], seq_len=64, batch=1, mode="half-bf16", attn="sdpa")
    second = sum(r.bytes for r in m.two.records if ".layers.1." in r.module)
    assert second == m.per_layer


# ----------------------------------------------------------------------------------------------------------
# Arithmetic properties (no torch)
# ----------------------------------------------------------------------------------------------------------
def test_compute_mode_mapping():
    assert compute_mode("fp32", "deepspeed") == "fp32"
    assert compute_mode("bf16", "deepspeed") == "half-bf16"
    assert compute_mode("fp16", "deepspeed") == "half-fp16"
    assert compute_mode("bf16", "single") == "autocast-bf16"
    assert compute_mode("fp16", "ddp") == "autocast-fp16"
    assert compute_mode("bf16", "fsdp") == "autocast-bf16"
    assert compute_mode("pure-bf16", "single") == "half-bf16"
    assert compute_mode("pure-bf16", "deepspeed") == "half-bf16"


def test_breakdown_sums_to_activations():
    for mode in ("fp32", "autocast-bf16", "half-bf16"):
        for ckpt in ("none", "full", "selective"):
            est = activation_memory(_llama(), _spec(attention="eager", activation_checkpointing=ckpt), mode)
            parts = {k: v for k, v in est.breakdown.items()
                     if k != "per_layer" and not k.startswith(("temp:", "info:"))}
            assert sum(parts.values()) == est.activations
            assert est.temporaries == max(v for k, v in est.breakdown.items() if k.startswith("temp:"))
            assert isinstance(est, ActivationEstimate)


@pytest.mark.parametrize("mode", ["fp32", "autocast-bf16", "half-bf16"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_full_checkpointing_saves_less(mode, attn):
    none = activation_memory(_llama(), _spec(attention=attn), mode)
    full = activation_memory(_llama(), _spec(attention=attn, activation_checkpointing="full"), mode)
    assert full.activations < none.activations / 4
    # the recomputed layer is a temporary
    assert full.breakdown["temp:layer_backward"] > none.breakdown["temp:layer_backward"]


def test_checkpointed_layer_keeps_only_its_input():
    arch = _llama()
    b, s, h = 2, 1024, arch.hidden_size
    for mode, stream in (("autocast-bf16", 4), ("half-bf16", 2), ("fp32", 4)):
        est = activation_memory(arch, _spec(seq_len=s, micro_batch_size=b, activation_checkpointing="full"), mode)
        assert est.breakdown["per_layer"] == b * s * h * stream


def test_eager_saves_more_than_sdpa_at_long_sequence():
    for mode in ("autocast-bf16", "half-bf16"):
        eager = activation_memory(_llama(), _spec(seq_len=4096, attention="eager"), mode)
        sdpa = activation_memory(_llama(), _spec(seq_len=4096, attention="sdpa"), mode)
        flash = activation_memory(_llama(), _spec(seq_len=4096, attention="flash"), mode)
        assert eager.activations > 1.5 * sdpa.activations
        assert flash.activations == sdpa.activations
        # the b*h*s^2 terms: fp32 softmax output + its 16-bit copy, per layer
        extra = eager.breakdown["per_layer"] - sdpa.breakdown["per_layer"]
        assert extra == 32 * 4096 * 4096 * 6 - 32 * 4096 * 4   # minus SDPA's fp32 logsumexp


def test_selective_drops_the_quadratic_terms():
    eager = activation_memory(_llama(), _spec(seq_len=4096, attention="eager"), "half-bf16")
    sel = activation_memory(_llama(), _spec(seq_len=4096, attention="eager", activation_checkpointing="selective"),
                            "half-bf16")
    sdpa = activation_memory(_llama(), _spec(seq_len=4096), "half-bf16")
    assert sel.breakdown["per_layer"] < eager.breakdown["per_layer"] / 3
    sel_sdpa = activation_memory(_llama(), _spec(seq_len=4096, activation_checkpointing="selective"), "half-bf16")
    assert sel_sdpa.activations == sdpa.activations


@given(batch=st.integers(1, 16), seq=st.integers(1, 4096))
@settings(max_examples=40, deadline=None)
def test_per_layer_is_linear_in_batch(batch, seq):
    one = activation_memory(_llama(), _spec(seq_len=seq, micro_batch_size=1), "autocast-bf16")
    many = activation_memory(_llama(), _spec(seq_len=seq, micro_batch_size=batch), "autocast-bf16")
    assert many.breakdown["per_layer"] == batch * one.breakdown["per_layer"]
    # the RoPE cos/sin are (1, s, d); labels are (s + 1) int64 for b = 1, b*s otherwise; the rest is linear
    rope = one.breakdown["rope_cache"]
    assert many.breakdown["rope_cache"] == rope
    assert abs((many.activations - rope) - batch * (one.activations - rope)) <= 12 * batch


def test_gqa_saves_less_than_mha_at_equal_width():
    mha = activation_memory(_llama(), _spec(), "half-bf16")
    gqa = activation_memory(_llama(num_key_value_heads=8), _spec(), "half-bf16")
    assert gqa.breakdown["per_layer"] < mha.breakdown["per_layer"]
    # k and v at 8 of 32 heads: 2 * (1 - 8/32) * b*s*h * 2 bytes less per layer
    assert mha.breakdown["per_layer"] - gqa.breakdown["per_layer"] == 2 * 2048 * 4096 * 2 * 3 // 4
    # eager materializes repeat_kv: k and v are saved at full width again
    mha_e = activation_memory(_llama(), _spec(attention="eager"), "half-bf16")
    gqa_e = activation_memory(_llama(num_key_value_heads=8), _spec(attention="eager"), "half-bf16")
    assert mha_e.breakdown["per_layer"] == gqa_e.breakdown["per_layer"]


def test_logits_term_scales_with_vocab():
    small = activation_memory(_llama(vocab_size=32000), _spec(), "half-bf16")
    big = activation_memory(_llama(vocab_size=128000), _spec(), "half-bf16")
    n = 2048
    # fp32 log_softmax output: 4 bytes per token and vocab entry
    assert big.breakdown["logits_and_loss"] - small.breakdown["logits_and_loss"] == 4 * n * 96000
    assert big.temporaries - small.temporaries == (8 + 2) * n * 96000   # two fp32 grads + held bf16 logits


def test_dropout_masks_are_counted():
    arch = _llama(hidden_dropout=0.0)
    with_drop = activation_memory(arch.model_copy(update={"hidden_dropout": 0.1}), _spec(), "half-bf16")
    without = activation_memory(arch, _spec(), "half-bf16")
    # two 1-byte masks of b*s*h per layer
    assert with_drop.breakdown["per_layer"] - without.breakdown["per_layer"] == 2 * 2048 * 4096


def test_autocast_keeps_fp32_stream_tensors():
    half = activation_memory(_llama(), _spec(), "half-bf16")
    ac = activation_memory(_llama(), _spec(), "autocast-bf16")
    fp32 = activation_memory(_llama(), _spec(), "fp32")
    assert half.breakdown["per_layer"] < ac.breakdown["per_layer"] < fp32.breakdown["per_layer"]
    assert "info:autocast_weight_copies" in ac.breakdown and "info:autocast_weight_copies" not in half.breakdown


def test_freeze_saves_only_trainable_layers():
    full = activation_memory(_llama(), _spec(), "half-bf16")
    frz = activation_memory(_llama(), _spec(method="freeze", freeze_trainable_layers=2), "half-bf16")
    assert frz.breakdown["layers"] < 2 * full.breakdown["per_layer"] + 1
    assert frz.activations < full.activations / 8


def test_lora_adapters_follow_peft_casting():
    """peft casts each adapter input to the fp32 adapter dtype: in a bf16 model that fp32 copy is saved."""
    spec = _spec(method="lora", lora=LoraSpec(rank=16, target_modules=("q_proj",)))
    est = activation_memory(_llama(), spec, "half-bf16")
    none = activation_memory(_llama(), _spec(method="lora", lora=LoraSpec(rank=16, target_modules=("o_proj",))),
                             "half-bf16")
    assert est.activations > 0 and none.activations > 0
    qlora = activation_memory(_llama(), _spec(method="qlora"), "half-bf16")
    lora = activation_memory(_llama(), _spec(method="lora"), "half-bf16")
    # bitsandbytes MatMul4Bit saves its (bf16) input whenever it requires grad; peft's LoRA path saves the fp32
    # cast of the same input for lora_A: QLoRA keeps both (bitsandbytes/autograd/_functions.py)
    assert qlora.activations > lora.activations
    assert "info:qlora_dequantized_weight" in qlora.breakdown
    assert qlora.breakdown["temp:layer_backward"] > lora.breakdown["temp:layer_backward"]


def test_moe_routes_top_k_tokens():
    dense = _llama(num_key_value_heads=8, intermediate_size=14336)
    moe = dense.model_copy(update={"family": "mixtral", "num_experts": 8, "experts_per_token": 2})
    d = activation_memory(dense, _spec(), "half-bf16")
    m = activation_memory(moe, _spec(), "half-bf16")
    # every token goes through 2 experts: about twice the MLP tensors of the dense model
    assert 1.5 * d.breakdown["per_layer"] < m.breakdown["per_layer"] < 2.5 * d.breakdown["per_layer"]


def test_softcapping_adds_a_tanh_over_the_logits():
    base = _llama(vocab_size=256000)
    capped = base.model_copy(update={"final_logit_softcapping": 30.0})
    a = activation_memory(base, _spec(), "half-bf16")
    c = activation_memory(capped, _spec(), "half-bf16")
    assert c.breakdown["logits_and_loss"] - a.breakdown["logits_and_loss"] == 2 * 2048 * 256000


@given(
    hidden=st.sampled_from([256, 1024, 4096]),
    heads=st.sampled_from([4, 8, 16]),
    kv_div=st.sampled_from([1, 2, 4]),
    vocab=st.integers(1000, 300_000),
    seq=st.integers(1, 8192),
    batch=st.integers(1, 8),
    mode=st.sampled_from(["fp32", "autocast-bf16", "autocast-fp16", "half-bf16", "half-fp16"]),
    attn=st.sampled_from(["eager", "sdpa", "flash"]),
    family=st.sampled_from(["llama", "gpt2", "gpt_neox", "opt", "gemma2", "phi3"]),
)
@settings(max_examples=60, deadline=None)
def test_properties_hold_for_random_shapes(hidden, heads, kv_div, vocab, seq, batch, mode, attn, family):
    extra = {}
    if family in ("gpt2", "gpt_neox", "opt"):
        extra = dict(norm="layernorm", mlp="plain", hidden_act="gelu_new", fused_qkv=family != "opt",
                     position="learned" if family != "gpt_neox" else "rope",
                     parallel_residual=family == "gpt_neox", rotary_pct=0.25 if family == "gpt_neox" else 1.0)
        kv_div = 1
    arch = Architecture(family=family, num_layers=4, hidden_size=hidden, num_attention_heads=heads,
                        num_key_value_heads=heads // kv_div, head_dim=hidden // heads,
                        intermediate_size=4 * hidden, vocab_size=vocab, **extra)
    none = activation_memory(arch, _spec(seq_len=seq, micro_batch_size=batch, attention=attn), mode)
    full = activation_memory(arch, _spec(seq_len=seq, micro_batch_size=batch, attention=attn,
                                         activation_checkpointing="full"), mode)
    assert none.activations > 0 and none.temporaries > 0
    assert full.breakdown["per_layer"] <= none.breakdown["per_layer"]
    assert none.temporaries >= 8 * batch * seq * vocab     # fp32 grads of the logits
    longer = activation_memory(arch, _spec(seq_len=seq + 64, micro_batch_size=batch, attention=attn), mode)
    assert longer.activations > none.activations
