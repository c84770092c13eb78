"""--task infer for multi-head latent attention (DeepSeek-V3): the KV cache is what transformers' DynamicCache
really holds (the compressed latent, measured on a real tiny model), not per-head K and V."""

from __future__ import annotations

import json

import pytest

from advisor.api import estimate
from advisor.hf_config import architecture_from_hf_config
from advisor.memory.inference import mla_kv_cache_bytes

TINY = {"model_type": "deepseek_v3", "hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 32,
        "num_hidden_layers": 3, "first_k_dense_replace": 1, "num_attention_heads": 4, "num_key_value_heads": 4,
        "n_routed_experts": 4, "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1, "kv_lora_rank": 16,
        "q_lora_rank": 32, "qk_rope_head_dim": 8, "qk_nope_head_dim": 16, "v_head_dim": 16, "vocab_size": 256}


def test_mla_cache_equals_what_transformers_keeps():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.AutoConfig.for_model(**TINY)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    batch, seq = 2, 7
    with torch.no_grad():
        out = model(input_ids=torch.zeros((batch, seq), dtype=torch.long), use_cache=True)
    cache = getattr(out, "cache", None) or out.past_key_values
    held = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert held == mla_kv_cache_bytes(architecture_from_hf_config(TINY), seq, batch, 4)


def test_deepseek_v3_inference_counts_the_latent_and_says_so():
    est = estimate("deepseek-v3", gpu="h200", gpus=8, task="infer", seq_len=4096)
    replica = next(lay for lay in est.inference if lay.layout == "replica-per-gpu")
    assert replica.kv_cache == 61 * (512 + 64) * 4096 * 2          # 61 layers, bf16: 274 MiB (per-head K/V: 22.9 GiB)
    assert any("compressed latent" in n for n in est.notes)
    assert "compressed latent" in json.dumps(est.model_dump(mode="json"))
