"""OPT (transformers/models/opt/modeling_opt.py).

Learned positions with a 2-row offset and (b, s) position ids from a cumsum, LayerNorm, ReLU MLP,
``q_proj(x) * scaling`` before the head split; OPT-350m's project_in/project_out and post-norm layers.
"""

from __future__ import annotations

from advisor.architecture import Architecture

from .base import PROXY_HEADS, PROXY_HIDDEN, PROXY_INNER, PROXY_LAYERS, PROXY_POSITIONS, PROXY_TOKENS, \
    PROXY_VOCAB, Family, proxy_kv_heads
from .replay import DecoderReplay


class OPTReplay(DecoderReplay):
    batch_position_ids = True
    scale_q_after_proj = True


def read(r):
    hidden = r.integer("hidden_size")
    heads = r.integer("num_attention_heads")
    positions = r.integer("max_position_embeddings", default=2048)
    proj = r.integer("word_embed_proj_dim", default=hidden)
    bias = r.flag("enable_bias", default=True)
    pre_norm = r.flag("do_layer_norm_before", default=True)
    return Architecture(
        family="opt", num_layers=r.integer("num_hidden_layers"), hidden_size=hidden,
        num_attention_heads=heads, num_key_value_heads=heads, head_dim=r.split_heads(hidden, heads),
        intermediate_size=r.integer("ffn_dim"), vocab_size=r.integer("vocab_size"),
        max_position_embeddings=positions, tie_word_embeddings=r.flag("tie_word_embeddings", default=True),
        norm="layernorm", norm_bias=True, norm_affine=r.flag("layer_norm_elementwise_affine", default=True),
        # OPTDecoder keeps its final LayerNorm only for pre-norm models (OPT-350m is post-norm)
        final_norm=pre_norm and not r.flag("_remove_final_layer_norm", default=False),
        mlp="plain", hidden_act=r.text("activation_function", default="relu"),
        qkv_bias=bias, o_bias=bias, mlp_bias=bias,
        position="learned",
        learned_position_rows=positions + 2,   # OPTLearnedPositionalEmbedding offset: 2 extra rows
        word_embed_proj_dim=proj if proj != hidden else None,
        attention_dropout=r.dropout("attention_dropout"),
        hidden_dropout=r.dropout("dropout", default=0.1),
    )


def proxy(arch: Architecture) -> dict:
    proj = PROXY_HIDDEN // 2 if arch.word_embed_proj_dim and arch.word_embed_proj_dim != arch.hidden_size \
        else PROXY_HIDDEN
    return {"model_type": "opt", "hidden_size": PROXY_HIDDEN, "ffn_dim": PROXY_INNER,
            "num_hidden_layers": PROXY_LAYERS, "num_attention_heads": PROXY_HEADS, "word_embed_proj_dim": proj,
            "max_position_embeddings": PROXY_POSITIONS, "vocab_size": PROXY_VOCAB, "do_layer_norm_before": True,
            "enable_bias": arch.qkv_bias, "layer_norm_elementwise_affine": arch.norm_affine,
            "tie_word_embeddings": arch.tie_word_embeddings, **PROXY_TOKENS}


FAMILY = Family(model_type="opt", modeling="transformers/models/opt/modeling_opt.py", read=read,
                fsdp_layer_class="OPTDecoderLayer", proxy=proxy, replay=OPTReplay,
                native_linear_names={"out_proj": ("o_proj",)})
