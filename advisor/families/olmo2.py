"""OLMo-2 (transformers/models/olmo2/modeling_olmo2.py).

Post-norm layers (post_attention / post_feedforward norms only) and RMSNorm over the whole q and k projections.
"""

from __future__ import annotations

from .base import Family, llama_proxy, read_llama_like


def read(r):
    return read_llama_like(r, kv=None, head_dim=None, tie=False, max_pos=2048, act="silu",
                           extra=lambda r: dict(norms_per_layer=2, qk_norm_full=True))


FAMILY = Family(model_type="olmo2", modeling="transformers/models/olmo2/modeling_olmo2.py", read=read,
                fsdp_layer_class="Olmo2DecoderLayer", proxy=llama_proxy)
