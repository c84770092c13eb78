"""GPT-2 (transformers/models/gpt2/modeling_gpt2.py).

Learned positions, LayerNorm, fused ``c_attn`` (Conv1D), plain GELU MLP, dropout everywhere; eager attention
runs ``softmax(scores)`` without ``dtype=`` and then ``.type(value.dtype)``.
"""

from __future__ import annotations

from advisor.architecture import Architecture

from .base import PROXY_HEADS, PROXY_HIDDEN, PROXY_INNER, PROXY_LAYERS, PROXY_POSITIONS, PROXY_TOKENS, \
    PROXY_VOCAB, Family, proxy_kv_heads
from .replay import DecoderReplay


class GPT2Replay(DecoderReplay):
    softmax_no_dtype = True


def read(r):
    if r.flag("add_cross_attention", default=False):
        raise r.fail("add_cross_attention", "is true: GPT-2 with cross-attention is not a plain causal LM "
                                            "and is not supported")
    hidden = r.integer("n_embd", "hidden_size")
    heads = r.integer("n_head", "num_attention_heads")
    positions = r.integer("n_positions", "max_position_embeddings", default=1024)
    return Architecture(
        family="gpt2", num_layers=r.integer("n_layer", "num_hidden_layers"), hidden_size=hidden,
        num_attention_heads=heads, num_key_value_heads=heads, head_dim=r.split_heads(hidden, heads, "n_embd"),
        intermediate_size=r.integer("n_inner", default=4 * hidden), vocab_size=r.integer("vocab_size"),
        max_position_embeddings=positions, tie_word_embeddings=r.flag("tie_word_embeddings", default=True),
        norm="layernorm", norm_bias=True, mlp="plain",
        hidden_act=r.text("activation_function", default="gelu_new"),
        qkv_bias=True, o_bias=True, mlp_bias=True, fused_qkv=True,
        position="learned", learned_position_rows=positions,
        attention_dropout=r.dropout("attn_pdrop", default=0.1),
        hidden_dropout=r.dropout("resid_pdrop", default=0.1),
        embedding_dropout=r.dropout("embd_pdrop", default=0.1),
    )


def proxy(arch: Architecture) -> dict:
    return {"model_type": "gpt2", "n_embd": PROXY_HIDDEN, "n_layer": PROXY_LAYERS, "n_head": PROXY_HEADS,
            "n_inner": PROXY_INNER, "n_positions": PROXY_POSITIONS, "vocab_size": PROXY_VOCAB,
            "tie_word_embeddings": arch.tie_word_embeddings, "bos_token_id": 1, "eos_token_id": 2}


FAMILY = Family(model_type="gpt2", modeling="transformers/models/gpt2/modeling_gpt2.py", read=read,
                fsdp_layer_class="GPT2Block", proxy=proxy, replay=GPT2Replay,
                native_linear_names={"c_attn": ("qkv_proj",), "c_proj": ("o_proj", "fc2"), "c_fc": ("fc1",)})
