"""Falcon (transformers/models/falcon/modeling_falcon.py).

Parallel attention/MLP block, fused ``query_key_value`` (multi-query, grouped for the new decoder
architecture), optional ALiBi. Activations are traced: the replay under-counted it (its multi-query SDPA call
without ``enable_gqa`` takes SDPA's math kernel, which saves the attention probabilities: -53 % for Falcon-7B
at s=512), while the trace equals the harness (benchmarks/cases/saved.yaml, tests/trace).
"""

from __future__ import annotations

from advisor.architecture import Architecture

from .base import PROXY_HEADS, PROXY_HIDDEN, PROXY_INNER, PROXY_LAYERS, PROXY_POSITIONS, PROXY_TOKENS, \
    PROXY_VOCAB, Family, proxy_kv_heads


def read(r):
    hidden = r.integer("hidden_size", "n_embed")
    heads = r.integer("num_attention_heads", "n_head")
    head_dim = r.split_heads(hidden, heads)
    new_arch = r.flag("new_decoder_architecture", default=False)
    multi_query = r.flag("multi_query", default=True)
    parallel = r.flag("parallel_attn", default=True)
    if new_arch:
        kv = r.kv_heads(heads, None, key="num_kv_heads")
    else:   # FalconAttention: one shared k/v head with multi_query, else a plain 3*hidden fused projection
        kv = 1 if multi_query else heads
    n_ln = r.integer("num_ln_in_parallel_attn", default=2 if new_arch else 1)
    # FalconDecoderLayer: sequential → input + post_attention norms; parallel → ln_attn + ln_mlp or one norm
    norms = 2 if (not parallel or n_ln == 2) else 1
    bias = r.flag("bias", default=False)
    alibi = r.flag("alibi", default=False)
    return Architecture(
        family="falcon", num_layers=r.integer("num_hidden_layers", "n_layer"), hidden_size=hidden,
        num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim,
        intermediate_size=r.integer("ffn_hidden_size", default=4 * hidden), vocab_size=r.integer("vocab_size"),
        max_position_embeddings=r.integer("max_position_embeddings", default=2048),
        tie_word_embeddings=r.flag("tie_word_embeddings", default=True),
        norm="layernorm", norm_bias=True, norms_per_layer=norms,
        mlp="plain", hidden_act=r.text("activation", default="gelu"),
        qkv_bias=bias, o_bias=bias, mlp_bias=bias, fused_qkv=True,
        position="alibi" if alibi else "rope", parallel_residual=parallel or new_arch,
        attention_dropout=r.dropout("attention_dropout"), hidden_dropout=r.dropout("hidden_dropout"),
    )


def proxy(arch: Architecture) -> dict:
    kv = proxy_kv_heads(arch)
    return {"model_type": "falcon", "hidden_size": PROXY_HIDDEN, "num_hidden_layers": PROXY_LAYERS,
            "num_attention_heads": PROXY_HEADS, "num_kv_heads": kv, "multi_query": kv == 1,
            "new_decoder_architecture": kv not in (1, PROXY_HEADS), "parallel_attn": arch.parallel_residual,
            "bias": arch.qkv_bias, "alibi": arch.position == "alibi", "vocab_size": PROXY_VOCAB,
            "max_position_embeddings": PROXY_POSITIONS, "tie_word_embeddings": arch.tie_word_embeddings,
            **PROXY_TOKENS}


FAMILY = Family(model_type="falcon", modeling="transformers/models/falcon/modeling_falcon.py", read=read,
                fsdp_layer_class="FalconDecoderLayer", proxy=proxy, native_linear_names={"query_key_value": ("qkv_proj",), "dense": ("o_proj",), "dense_h_to_4h": ("fc1",),
                                     "dense_4h_to_h": ("fc2",)})
