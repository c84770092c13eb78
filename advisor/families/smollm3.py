"""SmolLM3 (transformers/models/smollm3/modeling_smollm3.py).

Llama's layer; some layers skip RoPE (``no_rope_layers``); tied embeddings by default.
"""

from __future__ import annotations

from .base import Family, llama_proxy, read_llama_like


def read(r):
    return read_llama_like(r, kv=4, head_dim=None, tie=True, max_pos=32768, act="silu", mlp_bias=True)


FAMILY = Family(model_type="smollm3", modeling="transformers/models/smollm3/modeling_smollm3.py", read=read,
                fsdp_layer_class="SmolLM3DecoderLayer", proxy=llama_proxy)
