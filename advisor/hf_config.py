"""Reading a Hugging Face ``config.json`` and normalizing it into an :class:`Architecture`.

The same code path serves a user's ``config.json`` and an entry of the shipped catalog
(``advisor/data/models.yaml`` holds the real config keys). Absent keys get the default the matching
transformers config class applies, so the shape here is the shape ``from_config`` would build.
Only the standard library and pydantic are imported: no torch, no transformers.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from advisor.architecture import Architecture
from advisor.errors import InputError, did_you_mean

_MAX_INT = 2**31 - 1
_MAX_CONFIG_BYTES = 16 * 1024 * 1024


def _show(value: Any) -> str:
    """A value as it may appear in a one-line message: repr, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
_REQUIRED = object()


def load_hf_config(path: str | os.PathLike) -> dict:
    """Parse a ``config.json`` (or the ``config.json`` inside a folder) into a dict."""
    p = Path(path)
    try:
        if p.is_dir():
            p = p / "config.json"
        if not p.exists():
            raise InputError(f"{p}: no such file", field="model")
        if not p.is_file():
            raise InputError(f"{p}: not a regular file", field="model")
        if p.stat().st_size > _MAX_CONFIG_BYTES:
            raise InputError(f"{p}: too large for a config.json ({p.stat().st_size} bytes)", field="model")
        text = p.read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:   # ValueError: a NUL in the path; UnicodeDecodeError
        raise InputError(f"{p}: cannot read ({exc.__class__.__name__}: {exc})", field="model") from None
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
                         field="model") from None
    except (ValueError, RecursionError) as exc:   # e.g. an integer literal over Python's digit limit
        raise InputError(f"{p}: not valid JSON ({exc.__class__.__name__})", field="model") from None
    if not isinstance(cfg, dict):
        raise InputError(f"{p}: expected a JSON object of config keys, got {type(cfg).__name__}",
                         field="model")
    return cfg


class _Reader:
    """Typed access to config keys; every bad value raises an InputError naming the key."""

    def __init__(self, cfg: dict, source: str, family: str):
        self.cfg = cfg
        self.source = source
        self.family = family

    def fail(self, key: str, message: str) -> InputError:
        return InputError(f"{self.source}: {key} {message}", field="model")

    def _lookup(self, keys: tuple[str, ...]) -> tuple[str, Any, bool]:
        for key in keys:
            if key in self.cfg:
                return key, self.cfg[key], True
        return keys[0], None, False

    def integer(self, *keys: str, default: Any = _REQUIRED, minimum: int = 1) -> int:
        """A whole number >= minimum; ``default`` when absent or null (required when no default)."""
        key, value, present = self._lookup(keys)
        if not present or value is None:
            if default is _REQUIRED:
                raise self.fail(key, f"is missing (required for {self.family})")
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(key, f"must be an integer, got {_show(value)}")
        if isinstance(value, float):
            if not math.isfinite(value) or not value.is_integer():
                raise self.fail(key, f"must be an integer, got {_show(value)}")
            value = int(value)
        if value < minimum:
            raise self.fail(key, f"must be at least {minimum}, got {value}")
        if value > _MAX_INT:
            raise self.fail(key, f"is absurdly large ({value})")
        return value

    def flag(self, *keys: str, default: bool) -> bool:
        key, value, present = self._lookup(keys)
        if not present or value is None:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise self.fail(key, f"must be true or false, got {_show(value)}")

    def number(self, *keys: str, default: float | None, low: float, high: float,
              high_open: bool = False) -> float | None:
        """A number in [low, high] (or [low, high) with high_open); ``default`` when absent or null."""
        key, value, present = self._lookup(keys)
        if not present or value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(key, f"must be a number, got {_show(value)}")
        if value < low or value > high or (high_open and value == high):
            bracket = ")" if high_open else "]"
            raise self.fail(key, f"must be in [{low:g}, {high:g}{bracket}, got {_show(value)}")
        return float(value)

    def optional_int(self, key: str, absent: int | None) -> int | None:
        """An optional whole number: ``absent`` when the key is missing, None when it is null."""
        if key not in self.cfg:
            return absent
        return self.integer(key, default=None)

    def dropout(self, *keys: str, default: float = 0.0) -> float:
        """A dropout probability in [0, 1); ``default`` (the class default) when absent."""
        return self.number(*keys, default=default, low=0.0, high=1.0, high_open=True)

    def text(self, *keys: str, default: str) -> str:
        key, value, present = self._lookup(keys)
        if not present or value is None:
            return default
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, got {_show(value)}")
        return value

    def head_dim(self, hidden: int, heads: int, default: int | None = None) -> int:
        """``head_dim`` when given, else the family default, else hidden/heads (which must divide)."""
        if self.cfg.get("head_dim") is not None:
            return self.integer("head_dim")
        if default is not None and "head_dim" not in self.cfg:
            return default
        return self.split_heads(hidden, heads)

    def split_heads(self, hidden: int, heads: int, hidden_key: str = "hidden_size") -> int:
        if hidden % heads:
            raise self.fail("num_attention_heads", f"({heads}) must divide {hidden_key} ({hidden}) "
                                                   f"when head_dim is not given")
        return hidden // heads

    def kv_heads(self, heads: int, default: int | None, key: str = "num_key_value_heads") -> int:
        """KV heads: absent → the family's class default (None: = heads); null → heads; must divide heads."""
        if key not in self.cfg:
            kv = heads if default is None else default
        else:
            kv = self.integer(key, default=heads)
        if kv > heads or heads % kv:
            where = "" if key in self.cfg else f", the transformers default for {self.family}"
            raise self.fail(key, f"({kv}{where}) must divide num_attention_heads ({heads})")
        return kv


# ---------------------------------------------------------------- llama-shaped (gated MLP, RMSNorm)

# Per model_type: defaults of the transformers config class for keys that may be absent.
#   kv: num_key_value_heads default (None = num_attention_heads); head_dim: class default (None = hidden/heads)
_LLAMA_LIKE: dict[str, dict[str, Any]] = {
    "llama":   dict(kv=None, head_dim=None, tie=False, max_pos=2048, act="silu"),
    "mistral": dict(kv=8, head_dim=None, tie=False, max_pos=131072, act="silu", sliding=4096),
    "mixtral": dict(kv=8, head_dim=None, tie=False, max_pos=131072, act="silu", sliding=None),
    "qwen2":   dict(kv=32, head_dim=None, tie=False, max_pos=32768, act="silu"),
    "qwen3":   dict(kv=32, head_dim=128, tie=False, max_pos=32768, act="silu"),
    "gemma":   dict(kv=16, head_dim=256, tie=True, max_pos=8192, act="gelu_pytorch_tanh"),
    "gemma2":  dict(kv=4, head_dim=256, tie=True, max_pos=8192, act="gelu_pytorch_tanh", sliding=4096),
    "phi3":    dict(kv=None, head_dim=None, tie=False, max_pos=4096, act="silu", sliding=None),
    # 2025 families (transformers 5 config classes: Gemma3TextConfig, Qwen3MoeConfig, Olmo2Config,
    # SmolLM3Config, Glm4Config)
    "gemma3_text": dict(kv=4, head_dim=256, tie=True, max_pos=131072, act="gelu_pytorch_tanh", sliding=4096),
    "qwen3_moe": dict(kv=4, head_dim=None, tie=False, max_pos=32768, act="silu"),
    "olmo2":   dict(kv=None, head_dim=None, tie=False, max_pos=2048, act="silu"),
    "smollm3": dict(kv=4, head_dim=None, tie=True, max_pos=32768, act="silu"),
    "glm4":    dict(kv=2, head_dim=128, tie=False, max_pos=131072, act="silu"),
}


class NeedsTrace(Exception):
    """A config of an analytic family that uses a variant the arithmetic does not cover: trace it instead."""


def _llama_like(r: _Reader) -> Architecture:
    fam = r.family
    d = _LLAMA_LIKE[fam]
    hidden = r.integer("hidden_size")
    heads = r.integer("num_attention_heads")
    kv = r.kv_heads(heads, d["kv"])
    extra: dict[str, Any] = {}

    attention_bias = r.flag("attention_bias", default=fam == "glm4")
    if fam == "qwen2":            # Qwen2Attention: q/k/v always carry a bias, o_proj never
        qkv_bias, o_bias = True, False
    elif fam in ("mistral", "mixtral", "phi3"):   # these classes hard-code bias=False
        qkv_bias = o_bias = False
    elif fam == "glm4":           # Glm4Attention: q/k/v bias=attention_bias, o_proj bias=False
        qkv_bias, o_bias = attention_bias, False
    else:
        qkv_bias = o_bias = attention_bias

    if fam in ("qwen2", "qwen3", "qwen3_moe"):   # Qwen2Config: sliding_window only counts with use_sliding_window
        window = r.optional_int("sliding_window", 4096) if r.flag("use_sliding_window", default=False) else None
    elif "sliding" in d:
        window = r.optional_int("sliding_window", d["sliding"])
    else:
        window = None

    if fam == "mixtral":
        experts = r.integer("num_local_experts", default=8)
        top_k = r.integer("num_experts_per_tok", default=2)
        if top_k > experts:
            raise r.fail("num_experts_per_tok", f"({top_k}) exceeds num_local_experts ({experts})")
        extra.update(num_experts=experts, experts_per_token=top_k)
    if fam == "qwen3_moe":
        mlp_only = r.cfg.get("mlp_only_layers") or []
        if mlp_only or r.integer("decoder_sparse_step", default=1) != 1:
            raise NeedsTrace("qwen3_moe with dense layers (mlp_only_layers / decoder_sparse_step)")
        experts = r.integer("num_experts", default=128)
        top_k = r.integer("num_experts_per_tok", default=8)
        if top_k > experts:
            raise r.fail("num_experts_per_tok", f"({top_k}) exceeds num_experts ({experts})")
        extra.update(num_experts=experts, experts_per_token=top_k)
    if fam == "gemma3_text":
        extra.update(attn_logit_softcapping=r.number("attn_logit_softcapping", default=None, low=0, high=1e9),
                     final_logit_softcapping=r.number("final_logit_softcapping", default=None, low=0, high=1e9),
                     norms_per_layer=4)   # Gemma3DecoderLayer: the four norms of Gemma-2
    if fam == "olmo2":
        extra.update(norms_per_layer=2, qk_norm_full=True)   # post_attention / post_feedforward; q_norm, k_norm
    if fam == "glm4":
        extra.update(norms_per_layer=4, fused_gate_up=True)   # + post_self_attn / post_mlp layernorms
    if fam == "gemma2":
        extra.update(attn_logit_softcapping=r.number("attn_logit_softcapping", default=50.0, low=0, high=1e9),
                     final_logit_softcapping=r.number("final_logit_softcapping", default=30.0, low=0, high=1e9),
                     norms_per_layer=4)   # input, post_attention, pre_feedforward, post_feedforward
    if fam == "phi3":
        extra.update(fused_qkv=True, fused_gate_up=True,
                     hidden_dropout=r.dropout("resid_pdrop"), embedding_dropout=r.dropout("embd_pdrop"))

    return Architecture(
        family=fam,
        num_layers=r.integer("num_hidden_layers"),
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=r.head_dim(hidden, heads, d["head_dim"]),
        intermediate_size=r.integer("moe_intermediate_size", default=768) if fam == "qwen3_moe"
        else r.integer("intermediate_size"),
        vocab_size=r.integer("vocab_size"),
        max_position_embeddings=r.integer("max_position_embeddings", default=d["max_pos"]),
        tie_word_embeddings=r.flag("tie_word_embeddings", default=d["tie"]),
        norm="rmsnorm",
        mlp="gated",
        hidden_act=r.text("hidden_activation", "hidden_act", default=d["act"]) if fam.startswith("gemma")
        else r.text("hidden_act", default=d["act"]),
        qkv_bias=qkv_bias,
        o_bias=o_bias,
        mlp_bias=r.flag("mlp_bias", default=False) if fam in ("llama", "smollm3") else False,
        qk_norm=fam in ("qwen3", "qwen3_moe", "gemma3_text"),
        position="rope",
        attention_dropout=r.dropout("attention_dropout"),
        sliding_window=window,
        **extra,
    )


# ---------------------------------------------------------------- GPT-2, OPT, Falcon, BLOOM, GPT-NeoX

def _gpt2(r: _Reader) -> Architecture:
    if r.flag("add_cross_attention", default=False):
        raise r.fail("add_cross_attention", "is true: GPT-2 with cross-attention is not a plain causal LM "
                                            "and is not supported")
    hidden = r.integer("n_embd", "hidden_size")
    heads = r.integer("n_head", "num_attention_heads")
    positions = r.integer("n_positions", "max_position_embeddings", default=1024)
    return Architecture(
        family="gpt2", num_layers=r.integer("n_layer", "num_hidden_layers"), hidden_size=hidden,
        num_attention_heads=heads, num_key_value_heads=heads, head_dim=r.split_heads(hidden, heads, "n_embd"),
        intermediate_size=r.integer("n_inner", default=4 * hidden), vocab_size=r.integer("vocab_size"),
        max_position_embeddings=positions, tie_word_embeddings=r.flag("tie_word_embeddings", default=True),
        norm="layernorm", norm_bias=True, mlp="plain",
        hidden_act=r.text("activation_function", default="gelu_new"),
        qkv_bias=True, o_bias=True, mlp_bias=True, fused_qkv=True,
        position="learned", learned_position_rows=positions,
        attention_dropout=r.dropout("attn_pdrop", default=0.1),
        hidden_dropout=r.dropout("resid_pdrop", default=0.1),
        embedding_dropout=r.dropout("embd_pdrop", default=0.1),
    )


def _opt(r: _Reader) -> Architecture:
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


def _falcon(r: _Reader) -> Architecture:
    hidden = r.integer("hidden_size", "n_embed")
    heads = r.integer("num_attention_heads", "n_head")
    head_dim = r.split_heads(hidden, heads)
    new_arch = r.flag("new_decoder_architecture", default=False)
    multi_query = r.flag("multi_query", default=True)
    parallel = r.flag("parallel_attn", default=True)
    if new_arch:
        kv = r.kv_heads(heads, None, key="num_kv_heads")
    else:   # FalconAttention: one shared k/v head with multi_query, else a plain 3*hidden fused projection
        kv = 1 if multi_query else heads
    n_ln = r.integer("num_ln_in_parallel_attn", default=2 if new_arch else 1)
    # FalconDecoderLayer: sequential → input + post_attention norms; parallel → ln_attn + ln_mlp or one norm
    norms = 2 if (not parallel or n_ln == 2) else 1
    bias = r.flag("bias", default=False)
    alibi = r.flag("alibi", default=False)
    return Architecture(
        family="falcon", num_layers=r.integer("num_hidden_layers", "n_layer"), hidden_size=hidden,
        num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim,
        intermediate_size=r.integer("ffn_hidden_size", default=4 * hidden), vocab_size=r.integer("vocab_size"),
        max_position_embeddings=r.integer("max_position_embeddings", default=2048),
        tie_word_embeddings=r.flag("tie_word_embeddings", default=True),
        norm="layernorm", norm_bias=True, norms_per_layer=norms,
        mlp="plain", hidden_act=r.text("activation", default="gelu"),
        qkv_bias=bias, o_bias=bias, mlp_bias=bias, fused_qkv=True,
        position="alibi" if alibi else "rope", parallel_residual=parallel or new_arch,
        attention_dropout=r.dropout("attention_dropout"), hidden_dropout=r.dropout("hidden_dropout"),
    )


def _bloom(r: _Reader) -> Architecture:
    hidden = r.integer("hidden_size", "n_embed")
    heads = r.integer("n_head", "num_attention_heads")
    return Architecture(
        family="bloom", num_layers=r.integer("n_layer", "num_hidden_layers"), hidden_size=hidden,
        num_attention_heads=heads, num_key_value_heads=heads, head_dim=r.split_heads(hidden, heads),
        intermediate_size=4 * hidden,   # BloomMLP is fixed at 4*hidden
        vocab_size=r.integer("vocab_size"),
        max_position_embeddings=r.integer("seq_length", "max_position_embeddings", default=2048),
        tie_word_embeddings=r.flag("tie_word_embeddings", default=True),
        norm="layernorm", norm_bias=True, embedding_norm=True,
        mlp="plain", hidden_act="gelu", qkv_bias=True, o_bias=True, mlp_bias=True, fused_qkv=True,
        position="alibi",
        attention_dropout=r.dropout("attention_dropout"), hidden_dropout=r.dropout("hidden_dropout"),
    )


def _gpt_neox(r: _Reader) -> Architecture:
    hidden = r.integer("hidden_size")
    heads = r.integer("num_attention_heads")
    rope = r.cfg.get("rope_parameters") if isinstance(r.cfg.get("rope_parameters"), dict) else {}
    if "rotary_pct" in r.cfg or "partial_rotary_factor" not in rope:
        pct = r.number("rotary_pct", default=0.25, low=1e-9, high=1.0)
    else:
        pct = _Reader(rope, r.source, r.family).number("partial_rotary_factor", default=0.25, low=1e-9, high=1.0)
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


_BUILDERS: dict[str, Callable[[_Reader], Architecture]] = {
    **{name: _llama_like for name in _LLAMA_LIKE},
    "gpt2": _gpt2, "opt": _opt, "falcon": _falcon, "bloom": _bloom, "gpt_neox": _gpt_neox,
}
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted(_BUILDERS))


def architecture_from_hf_config(cfg: dict, *, source: str = "config.json") -> Architecture:
    """Normalize a HF config dict into an :class:`Architecture` (shapes in elements, per model_type).

    Raises :class:`NeedsTrace` for a model_type without an arithmetic family here (or a variant the arithmetic
    does not cover), so that the caller traces the real model (:mod:`advisor.trace`) or refuses it."""
    if not isinstance(cfg, dict):
        raise InputError(f"{source}: expected a mapping of config keys, got {type(cfg).__name__}", field="model")
    model_type = cfg.get("model_type")
    if model_type is not None and not isinstance(model_type, str):
        raise InputError(f"{source}: model_type must be a string, got {model_type!r}", field="model")
    if model_type is None:
        raise InputError(f"{source}: no model_type: dsadvise needs a Hugging Face config.json with model_type "
                         f"(arithmetic families: {', '.join(SUPPORTED_MODEL_TYPES)}; any other causal LM "
                         f"transformers builds is traced)", field="model")
    if model_type not in _BUILDERS:
        # never counted as another family: the caller traces the real model or refuses in one line
        raise NeedsTrace(f"model_type {model_type!r} has no arithmetic family")
    reader = _Reader(cfg, source, model_type)
    try:
        arch = _BUILDERS[model_type](reader)
        # the config itself travels with the shape: families the activation replay does not cover are traced
        return arch.model_copy(update={"source_config": json.dumps(cfg, sort_keys=True, default=str)})
    except ValidationError as exc:   # a value the readers let through but Architecture refuses
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err.get("loc", ())) or "config"
        raise InputError(f"{source}: {loc}: {err.get('msg', 'invalid value')}", field="model") from None
