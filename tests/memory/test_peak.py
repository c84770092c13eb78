"""Whole-step peak: the moments of a training step against the profiler's peak of a real step, and the
rules for when gradients and activations overlap (``advisor/memory/peak.py``).

The live tests train small real ``transformers`` models (2 layers, reduced widths, fp32, AdamW foreach)
for two steps on CPU and compare the peak of the second step (``benchmarks.harness``, kind ``step``) with
the estimator's per-GPU total minus its GPU-only overhead. The full campaign at real widths is
``python -m benchmarks.accuracy --measure --kind step`` (``docs/accuracy.md``, "Whole training step").
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
def test_total_matches_measured_step_peak(model, attn, ckpt, seq, batch, harness_kind):
    """Parameters + Adam states + the profiler's peak of a whole second step vs total - overhead."""
    cfg = SMALL[model]
    r = harness_kind("step").measure_step_peak(cfg, num_layers=2, seq_len=seq, batch=batch, mode="fp32", attn=attn,
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
    # formed in backward: DDP, ZeRO-1 (every 16-bit param.grad), ZeRO-2 (grads_in_partition)
    for formed in (dict(gpus=2, strategy="ddp"), dict(gpus=2, strategy="zero1"), dict(gpus=2, strategy="zero2")):
        g = estimate("gpt2", **{**kw, **formed}).per_gpu
        assert g.phase_overlap > 0 and g.peak_moment == "loss backward", formed
    # ZeRO-3's flat gradient partition, FSDP's sharded FlatParameter gradients, accumulation and adapters keep
    # every gradient through the backward
    for other in (dict(gpus=2, strategy="zero3"), dict(gpus=2, strategy="fsdp-full"), dict(global_batch=4),
                  dict(method="lora"), dict(method="freeze")):
        g = estimate("gpt2", **{**kw, **other}).per_gpu
        assert g.peak_moment == "backward (gradients persist)", other
        assert g.moments[g.peak_moment] == g.activations + g.temporaries + g.gradients, other


def test_deepspeed_fp32_step_gradient_only_at_the_step():
    """ZeRO-1/2/3 build the fp32 gradient only inside optimizer.step: not alive with the activations."""
    kw = dict(model="llama-3-8b", vram=80, gpus=8, precision="bf16", seq_len=4096)
    for stage in (1, 2, 3):
        g = estimate(**kw, strategy=f"zero{stage}").per_gpu
        assert "fp32 gradient partition for the step" not in g.breakdown
        assert g.moments["optimizer step"] < g.moments[g.peak_moment] or g.peak_moment == "optimizer step"


def test_zero3_sub_group_caps_the_step_gradient():
    """stage3 steps one sub group at a time: a smaller sub_group_size, a smaller optimizer-step moment."""
    kw = dict(model="mixtral-8x7b", vram=80, gpus=8, precision="bf16", seq_len=1024, strategy="zero3")
    big = estimate(**kw).per_gpu.moments["optimizer step"]
    small = estimate(**kw, sub_group_size=10**8).per_gpu.moments["optimizer step"]
    assert small < big


def test_zero1_offload_keeps_16bit_gradients_on_the_gpu():
    """ZeRO-1 reduces at the boundary: every 16-bit gradient is on the GPU at the end of backward (stage 2 not)."""
    kw = dict(model="llama-3-8b", vram=80, gpus=8, precision="bf16", offload_optimizer="cpu", cpu_ram=1024)
    one, two = estimate(**kw, strategy="zero1").per_gpu, estimate(**kw, strategy="zero2").per_gpu
    psi = estimate("llama-3-8b", vram=80).model.parameters
    assert one.gradients == 2 * psi and two.gradients == 0
    # the end of ZeRO-1's backward holds every 16-bit gradient (+ the epilogue's fp64 norm of one of them)
    assert one.total - one.parameters - one.buffers - one.overhead >= 2 * psi


def test_breakdown_adds_up_to_total_everywhere():
    for kw in (dict(), dict(gpus=8, strategy="zero1"), dict(gpus=8, strategy="zero3"), dict(gpus=8, strategy="fsdp-full"),
               dict(gpus=8, strategy="zero2", offload_optimizer="cpu"), dict(method="qlora"),
               dict(gpus=8, strategy="fsdp-grad-op", method="lora"), dict(task="infer")):
        g = estimate("llama-3-8b", vram=80, precision="bf16", seq_len=4096, **kw).per_gpu
        assert sum(g.breakdown.values()) == g.total, kw


def test_accumulation_keeps_every_gradient_alive():
    kw = dict(vram=80, precision="bf16", seq_len=8192)
    one, four = estimate("gpt2", **kw).per_gpu, estimate("gpt2", global_batch=4, **kw).per_gpu
    assert four.total - one.total == one.phase_overlap + (four.overhead - one.overhead)


def test_overlap_is_shown_in_the_report():
    est = estimate("gpt2", vram=80, precision="bf16", seq_len=8192)
    text = render_estimate(est)
    assert "not alive together" in text and f"peak at the {est.per_gpu.peak_moment}" in text
    assert "not alive together" not in render_estimate(estimate("gpt2", vram=80, global_batch=4))


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
def test_ddp_total_matches_measured_step_peak(harness_kind):
    """DDP in 2 real processes (gloo): buckets rebuilt in step 2, gradients formed in backward."""
    from benchmarks.harness.cases import Case

    ddp = harness_kind("ddp")
    case = Case("ddp", "calibration", dict(model="small-llama", mode="fp32", attn="eager", seq=512, batch=1,
                                           layers=2, world=2, overrides={"vocab_size": 16000}))
    measured = ddp.measure(case)
    assert measured["world"] == 2
    row = ddp.compare(case, measured)
    assert row.info["overlap"] > 0
    assert LOW <= row.error <= HIGH, (row.measured, row.estimated, row.info)


def test_sliding_window_kv_cache_holds_the_window_after_the_prompt():
    """Mistral v0.1 slides on every layer: a short prompt and a long generation keep at most the window;
    a prompt longer than the window keeps the prompt (a view of the prefill's states until the next step)."""
    kw = dict(vram=80, task="infer", seq_len=32768)
    long_prompt = estimate("mistral-7b-v0.1", **kw).per_gpu.breakdown["KV cache"]
    short_prompt = estimate("mistral-7b-v0.1", prompt_len=512, **kw).per_gpu.breakdown["KV cache"]
    assert short_prompt * 8 == long_prompt          # 4096-token window vs the 32768-token sequence
    llama = estimate("llama-2-7b", prompt_len=512, **{**kw, "seq_len": 4096}).per_gpu.breakdown["KV cache"]
    assert llama == estimate("llama-2-7b", **{**kw, "seq_len": 4096}).per_gpu.breakdown["KV cache"]


def test_consolidated_zero3_save_needs_the_model_in_rank0_cpu_ram():
    kw = dict(gpu="a100-80g", gpus=8, precision="bf16")
    zero3 = estimate("llama-2-70b", strategy="zero3", **kw)
    save = [v for k, v in zero3.per_node_cpu.breakdown.items() if k.startswith("checkpoint save")]
    assert save and save[0] > 0
    assert all(not k.startswith("checkpoint save") for k in estimate("llama-2-70b", strategy="fsdp-full",
                                                                       **kw).per_node_cpu.breakdown)
    tight = estimate("llama-2-70b", strategy="zero3", cpu_ram=120, **kw)
    assert not tight.fits and any("stage3_gather_16bit_weights_on_model_save=false" in n for n in tight.notes)


def test_fsdp_lora_unsharded_gradient_is_adapters_only():
    kw = dict(gpu="a100-80g", gpus=8, precision="bf16", strategy="fsdp-full", seq_len=1024)
    full = estimate("llama-3-8b", **kw).per_gpu.breakdown["FSDP unsharded layer gradient"]
    lora = estimate("llama-3-8b", method="lora", **kw).per_gpu.breakdown["FSDP unsharded layer gradient"]
    assert lora * 20 < full
    # QLoRA gathers the NF4 weights (bnb_4bit_quant_storage), not 16-bit ones
    g16 = estimate("llama-3-8b", method="lora", **kw).per_gpu.breakdown["FSDP gathered units (root + 2 layers)"]
    g4 = estimate("llama-3-8b", method="qlora", **kw).per_gpu.breakdown["FSDP gathered units (root + 2 layers)"]
    assert g4 < g16


@pytest.mark.slow
@pytest.mark.parametrize("case", ["zero1-offload", "zero3-subgroup", "fsdp-full"])
def test_real_engine_step_in_band(case):
    """Real DeepSpeed and FSDP engines in 2 processes (gloo): the whole step's peak, by moment, in band.
    ZeRO-1 + offload shows the 16-bit gradients; a 1M-element sub_group_size exercises ZeRO-3's step cap;
    FSDP FULL_SHARD runs with CUDA's release of the reduce-scatter input (engine_steps
    ``_cuda_release_of_reduce_scatter_inputs``: without it gloo's work objects kept whole units' gradients
    alive into the step, by load, docs/memory-model.md "Whole steps of real engines")."""
    from benchmarks import engine_steps

    r = engine_steps.run_case(case)
    assert r["world"] == 2
    assert LOW <= r["error"] <= HIGH, r
