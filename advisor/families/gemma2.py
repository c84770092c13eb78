"""Gemma-2 (transformers/models/gemma2/modeling_gemma2.py).

Gemma's forward with four norms per layer (post-attention and post-feedforward norms around each block),
attention logit soft-capping (eager attention: SDPA refuses softcap) and final logit soft-capping.
"""

from __future__ import annotations

from .base import PROXY_HEAD_DIM, Family, llama_proxy, read_llama_like, window_default
from .gemma import GemmaReplay


class Gemma2Replay(GemmaReplay):
    sandwich_norm = True


def extra(r):
    return dict(attn_logit_softcapping=r.number("attn_logit_softcapping", default=50.0, low=0, high=1e9),
                final_logit_softcapping=r.number("final_logit_softcapping", default=30.0, low=0, high=1e9),
                norms_per_layer=4)   # input, post_attention, pre_feedforward, post_feedforward


def read(r):
    return read_llama_like(r, kv=4, head_dim=256, tie=True, max_pos=8192, act="gelu_pytorch_tanh",
                           act_keys=("hidden_activation", "hidden_act"), window=window_default(4096), extra=extra)


def proxy(arch):
    return llama_proxy(arch, head_dim=PROXY_HEAD_DIM, **({"sliding_window": 16} if arch.sliding_window else {}))


FAMILY = Family(model_type="gemma2", modeling="transformers/models/gemma2/modeling_gemma2.py", read=read,
                fsdp_layer_class="Gemma2DecoderLayer", proxy=proxy, replay=Gemma2Replay)
