"""The tracer against the CPU harness: every causal-LM model_type of issue 14's list, at reduced width.

The harness builds the real model with random weights and records what autograd saves with
``saved_tensors_hooks`` (benchmarks/harness/kinds/saved.py); the tracer builds it on fake tensors, traces a prefix per layer
kind and extrapolates to the full depth. Parameters must agree exactly; saved bytes within −3 … +10 %.
"""

from __future__ import annotations

import gc

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from advisor.trace import TraceSettings, trace_model  # noqa: E402
from advisor.trace.tracer import _ATTN_DROPOUT_KEYS  # noqa: E402

from .conftest import trace_cases  # noqa: E402

CASES = trace_cases()
SEQ = 64


def measured(harness, cfg: dict, attention: str, mode: str = "fp32") -> tuple[int, int]:
    """(parameter elements, saved bytes) of the real full-depth model under the harness's accounting (SDPA:
    attention dropout off, as on a GPU where the fused kernels save no mask; harness module docstring)."""
    config = harness.make_config(cfg, attention, cfg["num_hidden_layers"])
    if attention == "sdpa":   # also the class defaults (SeedOss: attention_dropout 0.1), not only given keys
        for key in _ATTN_DROPOUT_KEYS:
            if getattr(config, key, None):
                setattr(config, key, 0.0)
    model = harness.instantiate(config, attention, torch.float32, 0)
    params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, cfg["vocab_size"], (1, SEQ), generator=torch.Generator().manual_seed(0))
    snap, out = harness.saved(model, mode, ids)
    del out, model
    gc.collect()
    return params, snap.activations


@pytest.mark.slow
@pytest.mark.parametrize("model_type", sorted(CASES))
def test_traced_parameters_and_saved_bytes_match_the_harness(harness, model_type):
    cfg = CASES[model_type]
    traced = trace_model(cfg, TraceSettings(seq_len=SEQ), use_cache=False)
    params, saved = measured(harness, cfg, traced.attention)
    assert traced.parameters.total == params
    assert sum(traced.parameters.per_layer) + traced.parameters.embedding + traced.parameters.lm_head == params
    assert -0.03 <= (traced.activations - saved) / saved <= 0.10, (traced.activations, saved)
    assert traced.num_layers == cfg["num_hidden_layers"] and len(traced.saved_per_layer) == traced.num_layers


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["gemma3_text", "deepseek_v3", "gpt_oss"])
def test_autocast_bf16_against_the_harness(harness, model_type):
    """Under bf16 autocast (CUDA's op lists on both sides)."""
    cfg = CASES[model_type]
    traced = trace_model(cfg, TraceSettings(seq_len=SEQ, mode="autocast-bf16"), use_cache=False)
    _, saved = measured(harness, cfg, traced.attention, "autocast-bf16")
    assert -0.03 <= (traced.activations - saved) / saved <= 0.10, (traced.activations, saved)
