"""Qwen2 / Qwen2.5 (transformers/models/qwen2/modeling_qwen2.py).

Llama's forward; q/k/v always carry a bias, o_proj never; the window only with ``use_sliding_window``.
"""

from __future__ import annotations

from .base import Family, llama_proxy, qwen_window, read_llama_like
from .replay import DecoderReplay


def read(r):
    return read_llama_like(r, kv=32, head_dim=None, tie=False, max_pos=32768, act="silu",
                           biases=lambda b: (True, False), window=qwen_window)


FAMILY = Family(model_type="qwen2", modeling="transformers/models/qwen2/modeling_qwen2.py", read=read,
                fsdp_layer_class="Qwen2DecoderLayer", proxy=llama_proxy, replay=DecoderReplay)
