"""Qwen3-MoE (Qwen3-30B-A3B, Qwen3-235B-A22B) (transformers/models/qwen3_moe/modeling_qwen3_moe.py).

Qwen3's attention (per-head q/k norms) with a sparse MoE block in every layer (``num_experts`` gated experts of
width ``moe_intermediate_size``, top ``num_experts_per_tok``, no shared expert). Configs with dense layers
(``mlp_only_layers``, ``decoder_sparse_step`` > 1) are traced. The forward is Llama's with the MoE block of
:meth:`DecoderReplay.moe` (Qwen3MoeSparseMoeBlock: softmax router in fp32, top-k, renormalized, transformers v5
grouped_mm experts — the same code path as Mixtral's); tests/trace/test_catalog_agreement.py holds it against
the tracer.
"""

from __future__ import annotations

from advisor.hf_config import NeedsTrace

from .base import PROXY_HEAD_DIM, PROXY_INNER, Family, attention_lora_only, llama_proxy, proxy_experts, \
    qwen_window, read_experts, read_llama_like
from .replay import DecoderReplay


class Qwen3MoeReplay(DecoderReplay):
    """Qwen3MoeTopKRouter: softmax(router_logits, dtype=torch.float), top-k, renormalized (norm_topk_prob), then
    ``.to(router_logits.dtype)``."""

    router_softmax_dtype = True
    router_cast_back = True
    peft_moe_params = True


def extra(r):
    mlp_only = r.cfg.get("mlp_only_layers") or []
    if mlp_only or r.integer("decoder_sparse_step", default=1) != 1:
        raise NeedsTrace("qwen3_moe with dense layers (mlp_only_layers / decoder_sparse_step)")
    experts = read_experts(r, "num_experts", 128, 8)
    # Qwen3MoeConfig's default is False; the released models set true
    return dict(experts, moe_norm_topk=r.flag("norm_topk_prob", default=False))


def read(r):
    return read_llama_like(r, kv=4, head_dim=None, tie=False, max_pos=32768, act="silu", window=qwen_window,
                           extra=extra, intermediate=("moe_intermediate_size", 768), qk_norm=True)


def proxy(arch):
    experts, top_k = proxy_experts(arch)
    return llama_proxy(arch, head_dim=PROXY_HEAD_DIM, num_experts=experts, moe_intermediate_size=PROXY_INNER // 4,
                       num_experts_per_tok=top_k)


FAMILY = Family(model_type="qwen3_moe", modeling="transformers/models/qwen3_moe/modeling_qwen3_moe.py", read=read,
                fsdp_layer_class="Qwen3MoeDecoderLayer", proxy=proxy, replay=Qwen3MoeReplay,
                z3_leaf_modules=("Qwen3MoeSparseMoeBlock",), replay_covers=attention_lora_only)
