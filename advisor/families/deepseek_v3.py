"""DeepSeek-V3 / DeepSeek-R1 (transformers/models/deepseek_v3/modeling_deepseek_v3.py).

Multi-head latent attention (MLA): q through a low-rank ``q_a_proj`` → RMSNorm → ``q_b_proj`` (heads x
(qk_nope + qk_rope)), keys and values through ``kv_a_proj_with_mqa`` (kv_lora_rank + a shared rope key) →
RMSNorm → ``kv_b_proj`` (heads x (qk_nope + v_head_dim)); for inference only the compressed kv_lora_rank +
qk_rope_head_dim per token need caching. The first ``first_k_dense_replace`` layers have a dense gated MLP of
``intermediate_size``; the others an MoE block: a sigmoid router over ``n_routed_experts`` (group-limited top-k,
an ``e_score_correction_bias`` buffer, no parameter), fused routed experts of ``moe_intermediate_size`` and
``n_shared_experts`` shared experts (one MLP of n_shared x moe_intermediate_size) every token passes through.
The multi-token-prediction layer of the checkpoint (``num_nextn_predict_layers``) is not built by transformers
and is not counted. Parameters are counted here; activations are traced on the real model (no replay yet).
"""

from __future__ import annotations

from .base import PROXY_HEADS, PROXY_INNER, Family, llama_proxy, proxy_experts, read_experts, read_llama_like


def extra(r):
    heads = r.integer("num_attention_heads")
    nope = r.integer("qk_nope_head_dim", default=128)
    rope = r.integer("qk_rope_head_dim", default=64)
    q_lora = r.cfg.get("q_lora_rank", 1536)
    experts = read_experts(r, "n_routed_experts", 256, 8)
    layers = r.integer("num_hidden_layers")
    return dict(experts,
                num_key_value_heads=heads, head_dim=nope + rope, qk_rope_head_dim=rope,
                q_lora_rank=0 if q_lora is None else r.integer("q_lora_rank", default=1536),
                kv_lora_rank=r.integer("kv_lora_rank", default=512),
                v_head_dim=r.integer("v_head_dim", default=128),
                shared_expert_size=r.integer("n_shared_experts", default=1, minimum=0)
                * r.integer("moe_intermediate_size", default=2048),
                dense_layers=min(r.integer("first_k_dense_replace", default=3, minimum=0), layers),
                dense_intermediate_size=r.integer("intermediate_size", default=18432),
                moe_norm_topk=r.flag("norm_topk_prob", default=True))


def read(r):
    return read_llama_like(r, kv=None, head_dim=None, tie=False, max_pos=4096, act="silu", extra=extra,
                           intermediate=("moe_intermediate_size", 2048))


def proxy(arch):
    experts, top_k = proxy_experts(arch)
    return llama_proxy(arch, num_key_value_heads=PROXY_HEADS, n_routed_experts=experts, num_experts_per_tok=top_k,
                       moe_intermediate_size=PROXY_INNER // 4, n_shared_experts=1, first_k_dense_replace=1,
                       n_group=1, topk_group=1, q_lora_rank=32, kv_lora_rank=16, qk_rope_head_dim=8,
                       qk_nope_head_dim=8, v_head_dim=16)


FAMILY = Family(model_type="deepseek_v3", modeling="transformers/models/deepseek_v3/modeling_deepseek_v3.py",
                read=read, fsdp_layer_class="DeepseekV3DecoderLayer", proxy=proxy,
                z3_leaf_modules=("DeepseekV3MoE",),
                native_linear_names={"gate": ("router",)})
