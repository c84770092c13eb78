"""GPT-NeoX / Pythia (transformers/models/gpt_neox/modeling_gpt_neox.py).

LayerNorm, fused ``query_key_value``, partial rotary ending in ``torch.cat([q_embed, q_pass])``, and the
parallel residual block (``use_parallel_residual``: attention and MLP read the same input).
"""

from __future__ import annotations

from advisor.architecture import Architecture

from .base import PROXY_HEADS, PROXY_HIDDEN, PROXY_INNER, PROXY_LAYERS, PROXY_POSITIONS, PROXY_TOKENS, \
    PROXY_VOCAB, Family, proxy_kv_heads
from .replay import DecoderReplay


class GPTNeoXReplay(DecoderReplay):
    rope_cat = True

    def layer(self, x, selective: bool):
        """GPTNeoXLayer: with ``use_parallel_residual`` x + attn(ln1(x)) + mlp(ln2(x)), else Llama's order."""
        a, tr = self.a, self.tr
        if not a.parallel_residual:
            return super().layer(x, selective)
        base, train, hp = tr.term, self.layer_trainable, a.hidden_dropout
        tr.term = base + "|attn"
        att = tr.dropout(self.attention(self.norm(x, train), selective), hp)
        tr.term = base + "|mlp"
        m = tr.dropout(self.mlp(self.norm(x, train)), hp)
        tr.term = base
        return tr.add(tr.add(m, att), x)


def read(r):
    hidden = r.integer("hidden_size")
    heads = r.integer("num_attention_heads")
    rope = r.cfg.get("rope_parameters") if isinstance(r.cfg.get("rope_parameters"), dict) else {}
    if "rotary_pct" in r.cfg or "partial_rotary_factor" not in rope:
        pct = r.number("rotary_pct", default=0.25, low=1e-9, high=1.0)
    else:
        pct = type(r)(rope, r.source, r.family).number("partial_rotary_factor", default=0.25, low=1e-9, high=1.0)
    bias = r.flag("attention_bias", default=True)
    return Architecture(
        family="gpt_neox", num_layers=r.integer("num_hidden_layers"), hidden_size=hidden,
        num_attention_heads=heads, num_key_value_heads=heads, head_dim=r.split_heads(hidden, heads),
        intermediate_size=r.integer("intermediate_size"), vocab_size=r.integer("vocab_size"),
        max_position_embeddings=r.integer("max_position_embeddings", default=2048),
        tie_word_embeddings=r.flag("tie_word_embeddings", default=False),
        norm="layernorm", norm_bias=True,
        mlp="plain", hidden_act=r.text("hidden_act", default="gelu"),
        qkv_bias=bias, o_bias=bias, mlp_bias=True, fused_qkv=True,
        position="rope", rotary_pct=pct, parallel_residual=r.flag("use_parallel_residual", default=True),
        attention_dropout=r.dropout("attention_dropout"), hidden_dropout=r.dropout("hidden_dropout"),
    )


def proxy(arch: Architecture) -> dict:
    return {"model_type": "gpt_neox", "hidden_size": PROXY_HIDDEN, "intermediate_size": PROXY_INNER,
            "num_hidden_layers": PROXY_LAYERS, "num_attention_heads": PROXY_HEADS, "rotary_pct": arch.rotary_pct,
            "use_parallel_residual": arch.parallel_residual, "max_position_embeddings": PROXY_POSITIONS,
            "vocab_size": PROXY_VOCAB, "tie_word_embeddings": arch.tie_word_embeddings, **PROXY_TOKENS}


FAMILY = Family(model_type="gpt_neox", modeling="transformers/models/gpt_neox/modeling_gpt_neox.py", read=read,
                fsdp_layer_class="GPTNeoXLayer", proxy=proxy, replay=GPTNeoXReplay,
                native_linear_names={"query_key_value": ("qkv_proj",), "dense": ("o_proj",), "dense_h_to_4h": ("fc1",),
                                     "dense_4h_to_h": ("fc2",)})
