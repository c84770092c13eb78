"""GPT-OSS (gpt-oss-20b, gpt-oss-120b; transformers/models/gpt_oss/modeling_gpt_oss.py).

Alternating sliding-window (128) and full attention layers (``layer_types``), a learned attention sink logit per
head, q/k/v/o biases, and an MoE block in every layer: a biased router (top ``num_experts_per_tok`` of
``num_local_experts``) and fused experts with biases (``gate_up_proj`` [E, h, 2i] + bias, ``down_proj`` [E, i, h]
+ bias, clamped SwiGLU). Parameters are counted here; activations are traced on the real model (no replay yet:
the sink concatenation and the clamped GLU are not replayed).
"""

from __future__ import annotations

from .base import PROXY_HEAD_DIM, PROXY_INNER, Family, llama_proxy, proxy_experts, read_experts, read_llama_like, \
    window_default

LAYER_TYPES = ("sliding_attention", "full_attention")


def pattern(r) -> tuple[str, ...]:
    """``layer_types`` (its shortest period), else GptOssConfig's default: sliding, full, sliding, ..."""
    types = r.cfg.get("layer_types")
    if types is None:
        return LAYER_TYPES
    if not isinstance(types, list) or not types or any(t not in LAYER_TYPES for t in types):
        raise r.fail("layer_types", f"must be a list of {' / '.join(LAYER_TYPES)}")
    period = next(p for p in range(1, len(types) + 1) if all(t == types[i % p] for i, t in enumerate(types)))
    return tuple(types[:period])


def extra(r):
    return dict(read_experts(r, "num_local_experts", 128, 4), mlp_bias=True,
                router_bias=True, attention_sinks=True, layer_pattern=pattern(r))


def read(r):
    return read_llama_like(r, kv=8, head_dim=64, tie=False, max_pos=131072, act="silu", attention_bias=True,
                           window=window_default(128), extra=extra)


def proxy(arch):
    experts, top_k = proxy_experts(arch)
    return llama_proxy(arch, head_dim=PROXY_HEAD_DIM, num_local_experts=experts, num_experts_per_tok=top_k,
                       intermediate_size=PROXY_INNER // 2, sliding_window=16)


FAMILY = Family(model_type="gpt_oss", modeling="transformers/models/gpt_oss/modeling_gpt_oss.py", read=read,
                fsdp_layer_class="GptOssDecoderLayer", proxy=proxy, z3_leaf_modules=("GptOssMLP",),
                native_linear_names={"router": ("router",)})
