"""Qwen3 (dense) (transformers/models/qwen3/modeling_qwen3.py).

Llama's forward plus per-head RMSNorm of q and k (``q_norm``/``k_norm``, width head_dim); head_dim 128.
"""

from __future__ import annotations

from .base import PROXY_HEAD_DIM, Family, llama_proxy, qwen_window, read_llama_like
from .replay import DecoderReplay


def read(r):
    return read_llama_like(r, kv=32, head_dim=128, tie=False, max_pos=32768, act="silu", window=qwen_window,
                           qk_norm=True)


def proxy(arch):
    return llama_proxy(arch, head_dim=PROXY_HEAD_DIM)


FAMILY = Family(model_type="qwen3", modeling="transformers/models/qwen3/modeling_qwen3.py", read=read,
                fsdp_layer_class="Qwen3DecoderLayer", proxy=proxy, replay=DecoderReplay)
