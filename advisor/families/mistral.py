"""Mistral (transformers/models/mistral/modeling_mistral.py).

Llama's forward; attention projections hard-code ``bias=False``; sliding window 4096 by default.
"""

from __future__ import annotations

from .base import Family, llama_proxy, no_bias, read_llama_like, window_default
from .replay import DecoderReplay


def read(r):
    return read_llama_like(r, kv=8, head_dim=None, tie=False, max_pos=131072, act="silu", biases=no_bias,
                           window=window_default(4096))


def proxy(arch):
    return llama_proxy(arch, **({"sliding_window": 16} if arch.sliding_window else {}))


FAMILY = Family(model_type="mistral", modeling="transformers/models/mistral/modeling_mistral.py", read=read,
                fsdp_layer_class="MistralDecoderLayer", proxy=proxy, replay=DecoderReplay)
