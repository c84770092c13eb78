"""Phi-3 / Phi-4 / Phi-4-mini (transformers/models/phi3/modeling_phi3.py).

Llama's forward with fused ``qkv_proj`` and ``gate_up_proj``, partial rotary, residual/embedding dropout;
apply_rotary_pos_emb ends in ``torch.cat([q_embed, q_pass])`` (a new contiguous tensor).
"""

from __future__ import annotations

from .base import Family, llama_proxy, no_bias, read_llama_like, window_default
from .replay import DecoderReplay


class Phi3Replay(DecoderReplay):
    rope_cat = True


def extra(r):
    return dict(fused_qkv=True, fused_gate_up=True, hidden_dropout=r.dropout("resid_pdrop"),
                embedding_dropout=r.dropout("embd_pdrop"))


def read(r):
    return read_llama_like(r, kv=None, head_dim=None, tie=False, max_pos=4096, act="silu", biases=no_bias,
                           window=window_default(None), extra=extra)


FAMILY = Family(model_type="phi3", modeling="transformers/models/phi3/modeling_phi3.py", read=read,
                fsdp_layer_class="Phi3DecoderLayer", proxy=llama_proxy, replay=Phi3Replay)
