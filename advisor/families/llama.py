"""Llama 1–3.3 and every Llama-shaped model (transformers/models/llama/modeling_llama.py).

The reference decoder: pre-norm RMSNorm, RoPE, GQA, gated SiLU MLP; :class:`DecoderReplay` is its forward.
"""

from __future__ import annotations

from .base import Family, llama_proxy, read_llama_like
from .replay import DecoderReplay


def read(r):
    """LlamaConfig: kv heads default to the heads, head_dim to hidden/heads; ``attention_bias``/``mlp_bias``."""
    return read_llama_like(r, kv=None, head_dim=None, tie=False, max_pos=2048, act="silu", mlp_bias=True)


def proxy(arch):
    return llama_proxy(arch, attention_bias=arch.qkv_bias, mlp_bias=arch.mlp_bias)


FAMILY = Family(model_type="llama", modeling="transformers/models/llama/modeling_llama.py", read=read,
                fsdp_layer_class="LlamaDecoderLayer", proxy=proxy, replay=DecoderReplay)
