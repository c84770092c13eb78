"""Gemma-3 text (transformers/models/gemma3/modeling_gemma3.py).

Gemma-2's layer with per-head q/k norms and 5:1 local (sliding window) / global layers; no soft-capping by
default.
"""

from __future__ import annotations

from .base import PROXY_HEAD_DIM, Family, llama_proxy, read_llama_like, window_default


def extra(r):
    return dict(attn_logit_softcapping=r.number("attn_logit_softcapping", default=None, low=0, high=1e9),
                final_logit_softcapping=r.number("final_logit_softcapping", default=None, low=0, high=1e9),
                norms_per_layer=4)   # Gemma3DecoderLayer: the four norms of Gemma-2


def read(r):
    return read_llama_like(r, kv=4, head_dim=256, tie=True, max_pos=131072, act="gelu_pytorch_tanh",
                           act_keys=("hidden_activation", "hidden_act"), window=window_default(4096), extra=extra,
                           qk_norm=True)


def proxy(arch):
    return llama_proxy(arch, head_dim=PROXY_HEAD_DIM, sliding_window=16, query_pre_attn_scalar=PROXY_HEAD_DIM)


FAMILY = Family(model_type="gemma3_text", modeling="transformers/models/gemma3/modeling_gemma3.py", read=read,
                fsdp_layer_class="Gemma3DecoderLayer", proxy=proxy)
