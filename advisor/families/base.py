"""What a family module declares (:class:`Family`) and the pieces most families share: the Llama-shaped
config reader and the Llama-shaped proxy config. No torch, no transformers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from advisor.architecture import Architecture

if TYPE_CHECKING:
    from advisor.hf_config import _Reader as Reader

    from .replay import DecoderReplay


@dataclass(frozen=True)
class Family:
    """One model family: everything dsadvise knows about it, in one place."""

    model_type: str
    modeling: str                                   # the transformers modeling file the module is read from
    read: Callable[[Reader], Architecture]          # config.json keys -> Architecture (config-class defaults)
    fsdp_layer_class: str                           # the decoder layer FSDP's TRANSFORMER_BASED_WRAP wraps
    proxy: Callable[[Architecture], dict]           # a 2-layer, hidden-64 config of the same structure (dry-run)
    replay: type[DecoderReplay] | None = None       # the forward replay; None: activations traced (advisor.trace)
    # module names as this family spells them -> normalized linear names (advisor.param_count.linear_shapes)
    native_linear_names: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # MoE block classes for deepspeed.utils.set_z3_leaf_modules (deepspeed/utils/z3_leaf_module.py)
    z3_leaf_modules: tuple[str, ...] = ()
    # (arch, training) -> False where the replay does not cover the run (its activations are then traced on the
    # real model); None: the replay covers every run of the family
    replay_covers: Callable[[Architecture, Any], bool] | None = None
    # issue 14 (A1): LoRA targets PEFT accepts but that fail in training, each with the one-line reason; and the
    # normalized linears ``all-linear`` leaves out here (PEFT: LoraConfig(exclude_modules=...)), with the reason
    lora_refused: Mapping[str, str] = field(default_factory=dict)
    all_linear_excludes: tuple[str, ...] = ()
    # every routed expert runs on every token, the unrouted scaled by 0 (Llama-4's Llama4TextMoe): the hardware
    # computes all experts' matmuls (step time), not the top-k's
    dense_expert_compute: bool = False


# ---------------------------------------------------------------- the Llama-shaped config reader

def same_bias(attention_bias: bool) -> tuple[bool, bool]:
    """LlamaAttention: q, k, v and o projections all carry ``bias=config.attention_bias``."""
    return attention_bias, attention_bias


def no_bias(attention_bias: bool) -> tuple[bool, bool]:
    """Attention classes that hard-code ``bias=False`` (Mistral, Mixtral, Phi-3)."""
    return False, False


def no_window(r: Reader) -> int | None:
    return None


def window_default(default: int | None) -> Callable[[Reader], int | None]:
    """``sliding_window`` with the config class's default (null: no window)."""
    return lambda r: r.optional_int("sliding_window", default)


def qwen_window(r: Reader) -> int | None:
    """Qwen2Config: ``sliding_window`` only counts with ``use_sliding_window``."""
    return r.optional_int("sliding_window", 4096) if r.flag("use_sliding_window", default=False) else None


def nothing(r: Reader) -> dict[str, Any]:
    return {}


def read_experts(r: Reader, experts_key: str, experts_default: int, top_k_default: int) -> dict[str, Any]:
    """Routed experts and top-k of an MoE config (``num_experts_per_tok`` must not exceed the experts)."""
    experts = r.integer(experts_key, default=experts_default)
    top_k = r.integer("num_experts_per_tok", default=top_k_default)
    if top_k > experts:
        raise r.fail("num_experts_per_tok", f"({top_k}) exceeds {experts_key} ({experts})")
    return dict(num_experts=experts, experts_per_token=top_k)


def read_llama_like(r: Reader, *, kv: int | None, head_dim: int | None, tie: bool, max_pos: int, act: str,
                    attention_bias: bool = False,
                    biases: Callable[[bool], tuple[bool, bool]] = same_bias,
                    window: Callable[[Reader], int | None] = no_window,
                    extra: Callable[[Reader], dict[str, Any]] = nothing,
                    intermediate: tuple[str, int | None] = ("intermediate_size", None),
                    act_keys: tuple[str, ...] = ("hidden_act",),
                    mlp_bias: bool = False, qk_norm: bool = False) -> Architecture:
    """A gated-MLP, RMSNorm, RoPE decoder (LlamaConfig's keys). ``kv``, ``head_dim``, ``tie``, ``max_pos``,
    ``act``, ``attention_bias``: the config class's defaults for absent keys (None: heads, hidden/heads);
    ``biases``: (qkv, o) bias from ``attention_bias``; ``window``/``extra``: the family's other keys;
    ``intermediate``: the MLP width key and its default; ``mlp_bias``: read ``mlp_bias`` (LlamaMLP)."""
    hidden = r.integer("hidden_size")
    heads = r.integer("num_attention_heads")
    kv_heads = r.kv_heads(heads, kv)
    qkv_bias, o_bias = biases(r.flag("attention_bias", default=attention_bias))
    sliding = window(r)
    more = extra(r)
    key, default = intermediate
    fields = dict(
        family=r.family,
        num_layers=r.integer("num_hidden_layers"),
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=r.head_dim(hidden, heads, head_dim),
        intermediate_size=r.integer(key) if default is None else r.integer(key, default=default),
        vocab_size=r.integer("vocab_size"),
        max_position_embeddings=r.integer("max_position_embeddings", default=max_pos),
        tie_word_embeddings=r.flag("tie_word_embeddings", default=tie),
        norm="rmsnorm",
        mlp="gated",
        hidden_act=r.text(*act_keys, default=act),
        qkv_bias=qkv_bias,
        o_bias=o_bias,
        mlp_bias=r.flag("mlp_bias", default=False) if mlp_bias else False,
        qk_norm=qk_norm,
        position="rope",
        attention_dropout=r.dropout("attention_dropout"),
        sliding_window=sliding,
    )
    return Architecture(**{**fields, **more})   # ``extra`` may set any field, overriding the Llama default


# ---------------------------------------------------------------- what an MoE family's replay covers

# LoRA targets the replay writes in an MoE model: the attention projections, and all-linear, under which PEFT
# (0.21) adapts the 3-D expert weights and the router through ParamWrapper (replayed in
# families/replay.py: merged weights, fused gate_up at rank 2r) but no nn.Linear of the MLP. MLP names alone
# (gate_proj/up_proj/down_proj) adapt only the experts and leave the layers before them without gradients, which
# the replay's layer plan does not cover: traced.
ATTENTION_LORA_TARGETS = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "q_a_proj", "q_b_proj",
                                    "kv_a_proj_with_mqa", "kv_b_proj"})


def attention_lora_only(arch: Architecture, training: Any) -> bool:
    """``Family.replay_covers`` of MoE families: every run but LoRA/QLoRA whose targets name MLP modules other
    than through all-linear (DeepSeek-V3 with down_proj alone: the replay was 65 % short of the trace)."""
    if training.method not in ("lora", "qlora") or not arch.is_moe:
        return True
    targets = training.lora.target_modules
    targets = {targets} if isinstance(targets, str) else set(targets)
    return targets <= ATTENTION_LORA_TARGETS | {"all-linear"}


# ---------------------------------------------------------------- the proxy config (advisor.render.proxy)

PROXY_LAYERS = 2
PROXY_HIDDEN = 64
PROXY_HEADS = 4
PROXY_HEAD_DIM = PROXY_HIDDEN // PROXY_HEADS
PROXY_INNER = 128
PROXY_VOCAB = 256
PROXY_POSITIONS = 256
PROXY_TOKENS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


def proxy_kv_heads(arch: Architecture) -> int:
    """KV heads of the proxy: all (MHA), one (MQA) or two (GQA), like the target."""
    if arch.num_key_value_heads == arch.num_attention_heads:
        return PROXY_HEADS
    return 1 if arch.num_key_value_heads == 1 else 2


def llama_proxy(arch: Architecture, model_type: str | None = None, **updates: Any) -> dict:
    """A 2-layer Llama-shaped config of ``model_type`` (default: ``arch.family``) plus ``updates``."""
    cfg = {"model_type": model_type or arch.family, "hidden_size": PROXY_HIDDEN, "intermediate_size": PROXY_INNER,
           "num_hidden_layers": PROXY_LAYERS, "num_attention_heads": PROXY_HEADS,
           "num_key_value_heads": proxy_kv_heads(arch), "vocab_size": PROXY_VOCAB,
           "max_position_embeddings": PROXY_POSITIONS, "tie_word_embeddings": arch.tie_word_embeddings,
           **PROXY_TOKENS}
    cfg.update(updates)
    return cfg


def proxy_experts(arch: Architecture) -> tuple[int, int]:
    """(experts, top-k) of an MoE proxy: 2 to 4 experts, 1 or 2 per token."""
    return min(max(arch.num_experts, 2), 4), min(max(arch.experts_per_token, 1), 2)
