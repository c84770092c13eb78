"""BLOOM (transformers/models/bloom/modeling_bloom.py).

ALiBi, an embedding LayerNorm, fused ``query_key_value``, a fixed 4*hidden GELU MLP. Activations are traced
(the replay under-counted its eager ALiBi attention; the trace equals the harness).
"""

from __future__ import annotations

from advisor.architecture import Architecture

from .base import PROXY_HEADS, PROXY_HIDDEN, PROXY_INNER, PROXY_LAYERS, PROXY_POSITIONS, PROXY_TOKENS, \
    PROXY_VOCAB, Family, proxy_kv_heads


def read(r):
    hidden = r.integer("hidden_size", "n_embed")
    heads = r.integer("n_head", "num_attention_heads")
    return Architecture(
        family="bloom", num_layers=r.integer("n_layer", "num_hidden_layers"), hidden_size=hidden,
        num_attention_heads=heads, num_key_value_heads=heads, head_dim=r.split_heads(hidden, heads),
        intermediate_size=4 * hidden,   # BloomMLP is fixed at 4*hidden
        vocab_size=r.integer("vocab_size"),
        max_position_embeddings=r.integer("seq_length", "max_position_embeddings", default=2048),
        tie_word_embeddings=r.flag("tie_word_embeddings", default=True),
        norm="layernorm", norm_bias=True, embedding_norm=True,
        mlp="plain", hidden_act="gelu", qkv_bias=True, o_bias=True, mlp_bias=True, fused_qkv=True,
        position="alibi",
        attention_dropout=r.dropout("attention_dropout"), hidden_dropout=r.dropout("hidden_dropout"),
    )


def proxy(arch: Architecture) -> dict:
    return {"model_type": "bloom", "hidden_size": PROXY_HIDDEN, "n_layer": PROXY_LAYERS, "n_head": PROXY_HEADS,
            "vocab_size": PROXY_VOCAB, "tie_word_embeddings": arch.tie_word_embeddings, **PROXY_TOKENS}


FAMILY = Family(model_type="bloom", modeling="transformers/models/bloom/modeling_bloom.py", read=read,
                fsdp_layer_class="BloomBlock", proxy=proxy, native_linear_names={"query_key_value": ("qkv_proj",), "dense": ("o_proj",), "dense_h_to_4h": ("fc1",),
                                     "dense_4h_to_h": ("fc2",)})
