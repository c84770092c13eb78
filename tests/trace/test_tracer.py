"""The tracer's own contracts: extrapolation by layer kind, the disk cache, PEFT LoRA, the light fast path."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from advisor.hf_config import architecture_from_hf_config  # noqa: E402
from advisor.param_count import lora_trainable_parameters  # noqa: E402
from advisor.trace import TraceSettings, trace_model  # noqa: E402
from advisor.trace import tracer  # noqa: E402

from .conftest import trace_cases  # noqa: E402

CASES = trace_cases()


@pytest.mark.slow
@pytest.mark.parametrize("model_type, layers", [("gemma3_text", 13), ("deepseek_v3", 6), ("llama4_text", 9)])
def test_extrapolated_depth_equals_a_full_depth_trace(model_type, layers):
    """Prefix per layer kind + extrapolation = tracing every layer (hybrids: local/global, dense/MoE, NoPE), byte
    for byte: what a model builds once for a kind of layer (Gemma-3's global rotary tables and mask) is in the
    prefix, since a kind is costed at its second occurrence."""
    cfg = dict(CASES[model_type], num_hidden_layers=layers)
    settings = TraceSettings(seq_len=32)
    result = trace_model(cfg, settings, use_cache=False)
    assert result.traced_prefix < layers and len(set(result.layer_kinds)) >= 2
    config, _ = tracer.check_causal_lm(cfg)
    full = tracer._trace_prefix(config, layers, settings.model_copy(update={"attention": result.attention}), False)
    assert result.activations == full.activations


@pytest.mark.slow
def test_cache_is_keyed_by_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("DSADVISE_CACHE_DIR", str(tmp_path))      # the dsadvise cache folder (advisor/trace/cache.py)
    cfg = CASES["qwen3"]
    first = trace_model(cfg, TraceSettings(seq_len=32))
    files = list(tmp_path.glob("trace-[0-9a-f]*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["activations"] == first.activations
    assert trace_model(cfg, TraceSettings(seq_len=32)) == first            # read back, not re-traced
    longer = trace_model(cfg, TraceSettings(seq_len=64))
    assert longer.activations > first.activations
    assert len(list(tmp_path.glob("trace-[0-9a-f]*.json"))) == 2


@pytest.mark.slow
def test_peft_lora_trainable_equals_the_arithmetic():
    cfg = dict(CASES["qwen3"])
    traced = tracer.trace_parameters(cfg, TraceSettings(seq_len=1, method="lora", lora_rank=8), use_cache=False)
    arch = architecture_from_hf_config(cfg)
    assert traced.trainable == lora_trainable_parameters(arch, 8, ("all-linear",))
    assert traced.total == sum(traced.per_layer) + traced.embedding + traced.lm_head   # adapters sit in layers


@pytest.mark.slow
def test_lora_trace_saves_less_than_full_fine_tuning():
    cfg = CASES["qwen3"]
    full = trace_model(cfg, TraceSettings(seq_len=32), use_cache=False)
    lora = trace_model(cfg, TraceSettings(seq_len=32, method="lora"), use_cache=False)
    assert 0 < lora.activations and lora.parameters.trainable < full.parameters.trainable


def test_estimate_of_a_catalog_model_imports_no_torch():
    code = ("import sys; from advisor.api import estimate; estimate('llama-3-8b', gpu='h100-sxm'); "
            "bad = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_allocation_sequence_is_recorded():
    cfg = dict(CASES["qwen3"], num_hidden_layers=2)   # the prefix traced is the whole model
    result = trace_model(cfg, TraceSettings(seq_len=16), use_cache=False)
    assert result.traced_prefix == result.num_layers
    phases = {e.phase for e in result.events}
    assert phases == {"forward", "backward"}
    level = peak = 0
    for e in result.events:
        level += e.delta
        peak = max(peak, level)
    assert peak >= result.activations   # everything saved is allocated at once at the end of the forward
