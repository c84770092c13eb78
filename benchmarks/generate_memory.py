"""Inference memory of a real ``generate`` on CPU against dsadvise's ``--task infer`` estimate.

Usage::

    python benchmarks/generate_memory.py          # the table of cases below (seconds each)

Each case builds a small model from a config (bf16 weights, SDPA; eager for Gemma-2), runs ``model.generate`` (greedy,
``DynamicCache``) on a random prompt and measures:

* weights: the bytes of the model's parameters and buffers;
* KV cache: the bytes of every key/value storage the cache holds, right after the prefill and at the end of
  generation (distinct storages: a sliding layer's window is a view of the prefill's states until the first
  decoding step replaces it; ``transformers.cache_utils.DynamicSlidingWindowLayer``); the larger is the peak;
* peak: the profiler's peak of the whole ``generate`` above the weights (KV cache + the prefill's transient).

Estimated: ``per_gpu.breakdown`` of ``estimate(..., task="infer", seq_len=prompt+new, prompt_len=prompt)``
(weights, KV cache, weights + KV cache + prefill transient), without the GPU-only overhead.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

LLAMA = dict(model_type="llama", hidden_size=256, intermediate_size=688, num_hidden_layers=4,
             num_attention_heads=4, num_key_value_heads=2, vocab_size=8000, tie_word_embeddings=False,
             max_position_embeddings=4096)
MISTRAL = dict(model_type="mistral", hidden_size=256, intermediate_size=688, num_hidden_layers=4,
               num_attention_heads=4, num_key_value_heads=2, vocab_size=8000, tie_word_embeddings=False,
               max_position_embeddings=4096, sliding_window=64)
GEMMA2 = dict(model_type="gemma2", hidden_size=256, intermediate_size=688, num_hidden_layers=4,
              num_attention_heads=4, num_key_value_heads=2, head_dim=64, vocab_size=8000,
              max_position_embeddings=4096, sliding_window=64)
# Llama-4 text (issue 17, Z): three chunked-attention layers (cached as sliding windows of attention_chunk_size) and one
# full layer
LLAMA4 = dict(model_type="llama4_text", hidden_size=256, intermediate_size=344, intermediate_size_mlp=688,
              num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=64, vocab_size=8000,
              num_local_experts=2, num_experts_per_tok=1, interleave_moe_layer_step=1, attention_chunk_size=64,
              max_position_embeddings=4096)

# name, config, prompt tokens, new tokens, batch
CASES = [
    ("llama prompt 512 + 64", LLAMA, 512, 64, 1),
    ("llama prompt 256 + 32, batch 4", LLAMA, 256, 32, 4),
    ("mistral window 64, prompt 512 + 64", MISTRAL, 512, 64, 1),
    ("mistral window 64, prompt 32 + 224", MISTRAL, 32, 224, 1),
    ("gemma2 window 64, prompt 32 + 224", GEMMA2, 32, 224, 1),
    ("llama4 chunk 64, prompt 512 + 64", LLAMA4, 512, 64, 1),
    ("llama4 chunk 64, prompt 32 + 224", LLAMA4, 32, 224, 1),
]


def _attn(cfg: dict) -> str:
    """SDPA, or eager where transformers has no SDPA path (Gemma-2's soft-capping)."""
    return "eager" if cfg["model_type"] == "gemma2" else "sdpa"


def _storages_bytes(tensors) -> int:
    seen = {}
    for t in tensors:
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


def _cache_tensors(cache):
    for layer in cache.layers:
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if t is not None and t.numel():
                yield t


def measure(cfg: dict, prompt: int, new: int, batch: int) -> dict:
    """Weights, KV cache (after prefill, at the end) and the whole generate's peak above the weights (bytes)."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

    from benchmarks.harness.profiling import MARK_BYTES as _MARK_BYTES, mark as _mark, raw_curve

    torch.manual_seed(0)
    hf = AutoConfig.for_model(**cfg)
    hf._attn_implementation = _attn(cfg)
    model = AutoModelForCausalLM.from_config(hf).to(torch.bfloat16).eval()
    weights = _storages_bytes(list(model.parameters()) + list(model.buffers()))
    ids = torch.randint(0, cfg["vocab_size"], (batch, prompt))
    with torch.no_grad():
        cache = DynamicCache(config=hf)
        model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        kv_prefill = _storages_bytes(_cache_tensors(cache))
        del cache
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            _mark()
            out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                 return_dict_in_generate=True, pad_token_id=0)
            kv_end = _storages_bytes(_cache_tensors(out.past_key_values))
            del out
            _mark()
    curve, marks = raw_curve(prof)
    base = curve[marks[0]] - _MARK_BYTES
    peak = max(curve[marks[0] + 2:marks[1]]) - base
    return {"weights": weights, "kv_prefill": kv_prefill, "kv_end": kv_end, "kv": max(kv_prefill, kv_end),
            "peak": weights + peak}


def estimated(cfg: dict, prompt: int, new: int, batch: int) -> dict:
    from advisor.api import estimate
    from advisor.catalog.models import ResolvedModel
    from advisor.hf_config import architecture_from_hf_config

    model = ResolvedModel(name=cfg["model_type"], architecture=architecture_from_hf_config(cfg), source="config",
                          note="")
    g = estimate(model, vram=80, task="infer", seq_len=prompt + new, prompt_len=prompt, micro_batch=batch,
                 precision="bf16", attention=_attn(cfg)).per_gpu
    return {"weights": g.breakdown["weights"], "kv": g.breakdown["KV cache"], "peak": g.total - g.overhead}


def main() -> int:
    mib = 2 ** 20
    print("| case | weights measured / est. MiB | KV cache peak measured / est. MiB | KV after prefill / at end MiB "
          "| peak measured / est. MiB | peak error |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, cfg, prompt, new, batch in CASES:
        m, e = measure(cfg, prompt, new, batch), estimated(cfg, prompt, new, batch)
        err = (e["peak"] - m["peak"]) / m["peak"]
        print(f"| {name} | {m['weights'] / mib:.2f} / {e['weights'] / mib:.2f} | {m['kv'] / mib:.2f} / "
              f"{e['kv'] / mib:.2f} | {m['kv_prefill'] / mib:.2f} / {m['kv_end'] / mib:.2f} | "
              f"{m['peak'] / mib:.2f} / {e['peak'] / mib:.2f} | {err * 100:+.1f}% |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
