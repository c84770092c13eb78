"""Mixtral (transformers/models/mixtral/modeling_mixtral.py).

Mistral's attention with a sparse MoE block (router + ``num_local_experts`` gated experts, top-k);
the MoE replay is :meth:`DecoderReplay.moe` (transformers v5 grouped_mm experts).
"""

from __future__ import annotations

from .base import Family, attention_lora_only, llama_proxy, no_bias, proxy_experts, read_experts, read_llama_like, \
    window_default
from .replay import DecoderReplay


def read(r):
    return read_llama_like(r, kv=8, head_dim=None, tie=False, max_pos=131072, act="silu", biases=no_bias,
                           window=window_default(None),
                           extra=lambda r: read_experts(r, "num_local_experts", 8, 2))


def proxy(arch):
    experts, top_k = proxy_experts(arch)
    return llama_proxy(arch, num_local_experts=experts, num_experts_per_tok=top_k)


class MixtralReplay(DecoderReplay):
    """Mixtral's forward is Llama's with the MoE block of :meth:`DecoderReplay.moe`; PEFT's LoRA adapts its 3-D
    expert weights and router (ParamWrapper), as in Qwen3-MoE."""

    peft_moe_params = True


FAMILY = Family(model_type="mixtral", modeling="transformers/models/mixtral/modeling_mixtral.py", read=read,
                fsdp_layer_class="MixtralDecoderLayer", proxy=proxy, replay=MixtralReplay,
                native_linear_names={"gate": ("router",), "w1": ("gate_proj",), "w3": ("up_proj",),
                                     "w2": ("down_proj",)},
                z3_leaf_modules=("MixtralSparseMoeBlock",), replay_covers=attention_lora_only)
