"""Phi-1 / Phi-1.5 / Phi-2 (transformers/models/phi/modeling_phi.py).

One LayerNorm per layer (with bias) feeding attention and MLP in parallel (``PhiDecoderLayer``:
``attn + mlp + residual``, each branch through ``resid_dropout``); separate q/k/v projections and ``dense``, all
with biases; partial rotary (``partial_rotary_factor``) on the first dims of each head, ending in
``torch.cat((query_rot, query_pass))``; a plain ``fc1``/``fc2`` MLP (``gelu_new``); final LayerNorm and an lm_head
with a bias. ``qk_layernorm`` (a LayerNorm over each head's q and k) is not replayed: such configs are traced.
"""

from __future__ import annotations

from advisor.architecture import Architecture

from .base import PROXY_HEADS, PROXY_HIDDEN, PROXY_INNER, PROXY_LAYERS, PROXY_POSITIONS, PROXY_TOKENS, \
    PROXY_VOCAB, Family
from .replay import DecoderReplay


class PhiReplay(DecoderReplay):
    rope_cat = True             # torch.cat((query_rot, query_pass), dim=-1): a new contiguous tensor

    def layer(self, x, selective: bool):
        """PhiDecoderLayer: n = input_layernorm(x); dropout(attn(n)) + dropout(mlp(n)) + x (one shared norm)."""
        tr = self.tr
        base, hp = tr.term, self.a.hidden_dropout
        tr.term = base + "|attn"
        n = self.norm(x, self.layer_trainable)
        att = tr.dropout(self.attention(n, selective), hp)
        tr.term = base + "|mlp"
        m = tr.dropout(self.mlp(n), hp)
        tr.term = base
        return tr.add(tr.add(att, m), x)


def _rotary_fraction(r) -> float:
    """PhiConfig's ``partial_rotary_factor`` (default 0.5), top level or inside ``rope_parameters`` (v5 files)."""
    rope = r.cfg.get("rope_parameters")
    if "partial_rotary_factor" not in r.cfg and isinstance(rope, dict) and "partial_rotary_factor" in rope:
        return type(r)(rope, r.source, r.family).number("partial_rotary_factor", default=0.5, low=1e-9, high=1.0)
    return r.number("partial_rotary_factor", default=0.5, low=1e-9, high=1.0)


def read(r):
    from advisor.hf_config import NeedsTrace

    if r.flag("qk_layernorm", default=False):
        raise NeedsTrace("phi with qk_layernorm (a LayerNorm over each head's q and k) has no arithmetic replay")
    hidden = r.integer("hidden_size", default=2048)           # PhiConfig's defaults (configuration_phi.py)
    heads = r.integer("num_attention_heads", default=32)
    return Architecture(
        family="phi", num_layers=r.integer("num_hidden_layers", default=24), hidden_size=hidden,
        num_attention_heads=heads, num_key_value_heads=r.kv_heads(heads, None),
        head_dim=r.split_heads(hidden, heads),
        intermediate_size=r.integer("intermediate_size", default=8192),
        vocab_size=r.integer("vocab_size", default=51200),
        max_position_embeddings=r.integer("max_position_embeddings", default=2048),
        tie_word_embeddings=r.flag("tie_word_embeddings", default=False),
        norm="layernorm", norm_bias=True, norms_per_layer=1,
        mlp="plain", hidden_act=r.text("hidden_act", default="gelu_new"),
        qkv_bias=True, o_bias=True, mlp_bias=True, lm_head_bias=True,
        position="rope", rotary_pct=_rotary_fraction(r),
        attention_dropout=r.dropout("attention_dropout"), hidden_dropout=r.dropout("resid_pdrop"),
        embedding_dropout=r.dropout("embd_pdrop"),
    )


def proxy(arch: Architecture) -> dict:
    return {"model_type": "phi", "hidden_size": PROXY_HIDDEN, "intermediate_size": PROXY_INNER,
            "num_hidden_layers": PROXY_LAYERS, "num_attention_heads": PROXY_HEADS,
            "partial_rotary_factor": arch.rotary_pct, "max_position_embeddings": PROXY_POSITIONS,
            "vocab_size": PROXY_VOCAB, "tie_word_embeddings": arch.tie_word_embeddings, **PROXY_TOKENS}


FAMILY = Family(model_type="phi", modeling="transformers/models/phi/modeling_phi.py", read=read,
                fsdp_layer_class="PhiDecoderLayer", proxy=proxy, replay=PhiReplay,
                native_linear_names={"dense": ("o_proj",)})
