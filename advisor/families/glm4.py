"""GLM-4 (transformers/models/glm4/modeling_glm4.py).

Four norms per layer (post_self_attn / post_mlp), fused ``gate_up_proj``, q/k/v bias, partial rotary.
"""

from __future__ import annotations

from .base import PROXY_HEAD_DIM, Family, llama_proxy, read_llama_like


def read(r):
    return read_llama_like(r, kv=2, head_dim=128, tie=False, max_pos=131072, act="silu", attention_bias=True,
                           biases=lambda b: (b, False),   # Glm4Attention: q/k/v bias=attention_bias, o_proj none
                           extra=lambda r: dict(norms_per_layer=4, fused_gate_up=True))


def proxy(arch):
    return llama_proxy(arch, head_dim=PROXY_HEAD_DIM, attention_bias=arch.qkv_bias)


FAMILY = Family(model_type="glm4", modeling="transformers/models/glm4/modeling_glm4.py", read=read,
                fsdp_layer_class="Glm4DecoderLayer", proxy=proxy)
