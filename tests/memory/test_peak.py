"""Whole-step peak: the moments of a training step against the profiler's peak of a real step, and the
rules for when gradients and activations overlap (``advisor/memory/peak.py``).

The live tests train small real ``transformers`` models (2 layers, reduced widths, fp32, AdamW foreach)
for two steps on CPU and compare the peak of the second step (``benchmarks/measure.py``) with the
estimator's per-GPU total minus its GPU-only overhead. The full campaign at real widths is
``python benchmarks/accuracy.py --step`` (``docs/accuracy.md``, "Whole training step").
"""

from __future__ import annotations


import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from advisor.api import estimate
from advisor.catalog.models import ResolvedModel
from advisor.hf_config import architecture_from_hf_config
from advisor.estimate_report import render_estimate

LOW, HIGH = -0.03, 0.10


SMALL = {
    # tied embeddings, large vocabulary for its width: the loss backward or the tied-gradient sum peaks
    "qwen2-tied": dict(model_type="qwen2", hidden_size=256, intermediate_size=768, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=32000, tie_word_embeddings=True),
    # untied, eager attention: layer activations dominate at long sequences
    "llama-untied": dict(model_type="llama", hidden_size=512, intermediate_size=1408, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=8, vocab_size=8000, tie_word_embeddings=False),
    # learned positions, LayerNorm, GELU, tied
    "gpt2": dict(model_type="gpt2", n_embd=384, n_layer=2, n_head=6, n_positions=1024, vocab_size=16000,
                 activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
    # a small vocabulary: the decoder layers' backward is the peak, not the loss
    "llama-v1k": dict(model_type="llama", hidden_size=512, intermediate_size=1408, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=8, vocab_size=1000, tie_word_embeddings=False),
}

LIVE = [
    # model, attention, checkpointing, seq, batch
    ("qwen2-tied", "sdpa", "none", 256, 2),
    ("qwen2-tied", "sdpa", "none", 16, 1),
    ("llama-untied", "eager", "none", 512, 2),
    ("llama-untied", "sdpa", "full", 256, 1),
    ("llama-untied", "sdpa", "none", 32, 1),
    ("gpt2", "eager", "none", 256, 2),
    ("llama-v1k", "eager", "none", 1024, 1),
    ("llama-v1k", "sdpa", "full", 1024, 2),
]


def _estimate(cfg: dict, attn: str, ckpt: str, seq: int, batch: int):
    model = ResolvedModel(name="small", architecture=architecture_from_hf_config(cfg), source="config", note="")
    return estimate(model, vram=80, seq_len=seq, micro_batch=batch, precision="fp32", optimizer="adamw",
                    attention=attn, checkpointing=ckpt, strategy="single")


@pytest.mark.slow
@pytest.mark.parametrize("model,attn,ckpt,seq,batch", LIVE, ids=["-".join(map(str, c)) for c in LIVE])
def test_total_matches_measured_step_peak(model, attn, ckpt, seq, batch, benchmark_module):
    """Parameters + Adam states + the profiler's peak of a whole second step vs total - overhead."""
    measure = benchmark_module("measure")
    cfg = SMALL[model]
    r = measure.measure_step_peak(cfg, num_layers=2, seq_len=seq, batch=batch, mode="fp32", attn=attn,
                                  checkpointing=ckpt)
    g = _estimate(cfg, attn, ckpt, seq, batch).per_gpu
    assert g.parameters == r.params
    assert g.parameters + g.optimizer_states == r.params + r.adam_states
    measured = r.params + r.adam_states + r.peak
    estimated = g.total - g.overhead
    err = (estimated - measured) / measured
    assert LOW <= err <= HIGH, (f"{g.peak_moment}: estimated {estimated:,} vs measured {measured:,} "
                                f"({err:+.2%}); overlap {g.phase_overlap:,}")
    if model == "llama-v1k":
        assert g.peak_moment == "top layer backward"


def test_overlap_only_where_gradients_are_formed_in_backward():
    kw = dict(vram=80, precision="bf16", seq_len=8192, checkpointing="none")
    single = estimate("gpt2", **kw).per_gpu
    assert single.phase_overlap > 0 and single.peak_moment
    assert estimate("gpt2", gpus=2, strategy="ddp", **kw).per_gpu.phase_overlap > 0
    # DeepSpeed's flat gradient partitions, FSDP's sharded gradients, accumulation and adapters keep the sum
    for other in (dict(gpus=2, strategy="zero2"), dict(gpus=2, strategy="zero3"), dict(gpus=2, strategy="fsdp-full"),
                  dict(global_batch=4), dict(method="lora"), dict(method="freeze")):
        g = estimate("gpt2", **{**kw, **other}).per_gpu
        assert g.phase_overlap == 0, other


def test_accumulation_keeps_every_gradient_alive():
    kw = dict(vram=80, precision="bf16", seq_len=8192)
    one, four = estimate("gpt2", **kw).per_gpu, estimate("gpt2", global_batch=4, **kw).per_gpu
    assert four.total - one.total == one.phase_overlap + (four.overhead - one.overhead)


def test_overlap_is_shown_in_the_report():
    est = estimate("gpt2", vram=80, precision="bf16", seq_len=8192)
    text = render_estimate(est)
    assert "not alive together" in text and f"peak at the {est.per_gpu.peak_moment}" in text
    assert "not alive together" not in render_estimate(estimate("gpt2", vram=80, gpus=2, strategy="zero2"))


@settings(max_examples=60, deadline=None)
@given(model=st.sampled_from(["gpt2", "qwen2.5-0.5b", "llama-3.2-1b", "gemma-2-2b", "opt-1.3b", "7B"]),
       seq=st.sampled_from([64, 512, 4096, 32768]), batch=st.integers(1, 16),
       precision=st.sampled_from(["fp32", "bf16", "pure-bf16"]),
       ckpt=st.sampled_from(["none", "full", "selective"]), attention=st.sampled_from(["sdpa", "eager"]),
       optimizer=st.sampled_from(["adamw", "sgd", "adafactor", "adamw-8bit"]))
def test_peak_never_exceeds_the_sum_and_fields_add_up(model, seq, batch, precision, ckpt, attention, optimizer):
    g = estimate(model, vram=80, seq_len=seq, micro_batch=batch, precision=precision, checkpointing=ckpt,
                 attention=attention, optimizer=optimizer).per_gpu
    assert g.phase_overlap >= 0
    assert all(v >= 0 for v in (g.parameters, g.gradients, g.optimizer_states, g.activations, g.temporaries,
                                g.buffers, g.overhead))
    assert g.total == (g.parameters + g.gradients + g.optimizer_states + g.activations + g.temporaries
                       + g.buffers + g.overhead - g.phase_overlap)
    # the peak holds at least every gradient (the optimizer step) and every activation (the loss backward)
    allocated = g.total - g.overhead
    assert allocated >= g.parameters + g.optimizer_states + g.buffers + g.gradients
    assert allocated >= g.parameters + g.optimizer_states + g.buffers + g.activations


@pytest.mark.slow
def test_ddp_total_matches_measured_step_peak(benchmark_module):
    """DDP in 2 real processes (gloo): buckets rebuilt in step 2, gradients formed in backward."""
    ddp_step = benchmark_module("ddp_step")
    r = ddp_step.run_case("eager", 512, 16000)
    assert r["world"] == 2
    assert r["overlap"] > 0
    assert LOW <= r["error"] <= HIGH, r
