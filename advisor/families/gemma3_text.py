"""Gemma-3 text (transformers/models/gemma3/modeling_gemma3.py).

Gemma-2's layer with per-head q/k norms and 5:1 local (sliding window) / global layers; no soft-capping by
default.
"""

from __future__ import annotations

from .base import PROXY_HEAD_DIM, Family, llama_proxy, read_llama_like, window_default
from .gemma2 import Gemma2Replay

LAYER_TYPES = ("sliding_attention", "full_attention")


class Gemma3Replay(Gemma2Replay):
    rope_per_layer_kind = True

    def _head_norm(self, x):
        """q_norm / k_norm: Gemma3RMSNorm(head_dim) on the (b, h, s, d) view."""
        return self.norm(x, self.layer_trainable, width=self.a.head_dim)


def pattern(r) -> tuple[str, ...]:
    """The repeating layer-type pattern: ``layer_types`` (its shortest period) or, as Gemma3TextConfig derives
    it, ``sliding_window_pattern`` (default 6): layer i is full attention when (i + 1) % pattern == 0."""
    types = r.cfg.get("layer_types")
    if types is None:
        n = r.integer("sliding_window_pattern", default=6)
        return tuple("sliding_attention" if (i + 1) % n else "full_attention" for i in range(n))
    if not isinstance(types, list) or not types or any(t not in LAYER_TYPES for t in types):
        raise r.fail("layer_types", f"must be a list of {' / '.join(LAYER_TYPES)}")
    period = next(p for p in range(1, len(types) + 1) if all(t == types[i % p] for i, t in enumerate(types)))
    return tuple(types[:period])


def extra(r):
    return dict(attn_logit_softcapping=r.number("attn_logit_softcapping", default=None, low=0, high=1e9),
                final_logit_softcapping=r.number("final_logit_softcapping", default=None, low=0, high=1e9),
                norms_per_layer=4,   # Gemma3DecoderLayer: the four norms of Gemma-2
                layer_pattern=pattern(r))


def read(r):
    return read_llama_like(r, kv=4, head_dim=256, tie=True, max_pos=131072, act="gelu_pytorch_tanh",
                           act_keys=("hidden_activation", "hidden_act"), window=window_default(4096), extra=extra,
                           qk_norm=True)


def proxy(arch):
    return llama_proxy(arch, head_dim=PROXY_HEAD_DIM, sliding_window=16, query_pre_attn_scalar=PROXY_HEAD_DIM)


FAMILY = Family(model_type="gemma3_text", modeling="transformers/models/gemma3/modeling_gemma3.py", read=read,
                fsdp_layer_class="Gemma3DecoderLayer", proxy=proxy, replay=Gemma3Replay)
