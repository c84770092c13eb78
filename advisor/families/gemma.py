"""Gemma (transformers/models/gemma/modeling_gemma.py).

Llama's forward with GemmaRMSNorm (``x.float() * (1 + w.float())``) and embeddings scaled by sqrt(hidden).
"""

from __future__ import annotations

from .base import PROXY_HEAD_DIM, Family, llama_proxy, read_llama_like
from .replay import DecoderReplay


class GemmaReplay(DecoderReplay):
    gemma_norm = True
    scaled_embedding = True


def read(r):
    return read_llama_like(r, kv=16, head_dim=256, tie=True, max_pos=8192, act="gelu_pytorch_tanh",
                           act_keys=("hidden_activation", "hidden_act"))


def proxy(arch):
    return llama_proxy(arch, head_dim=PROXY_HEAD_DIM)


FAMILY = Family(model_type="gemma", modeling="transformers/models/gemma/modeling_gemma.py", read=read,
                fsdp_layer_class="GemmaDecoderLayer", proxy=proxy, replay=GemmaReplay)
