"""Reading a Hugging Face ``config.json`` and normalizing it into an :class:`Architecture`.

The same code path serves a user's ``config.json`` and an entry of the shipped catalog
(``advisor/data/models.yaml`` holds the real config keys). Each family's reader lives in its module under
:mod:`advisor.families`; absent keys get the default the matching transformers config class applies, so the
shape here is the shape ``from_config`` would build.
Only the standard library and pydantic are imported: no torch, no transformers.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from advisor.architecture import Architecture
from advisor.errors import InputError
from advisor.families import MODEL_TYPES, family, has_family

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


class NeedsTrace(Exception):
    """A config of an arithmetic family that uses a variant the arithmetic does not cover: trace it instead."""


Reader = _Reader   # what family modules' ``read`` functions receive (advisor/families)
SUPPORTED_MODEL_TYPES: tuple[str, ...] = MODEL_TYPES


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
    if not has_family(model_type):
        # never counted as another family: the caller traces the real model or refuses in one line
        raise NeedsTrace(f"model_type {model_type!r} has no arithmetic family")
    reader = _Reader(cfg, source, model_type)
    try:
        arch = family(model_type).read(reader)   # the family's own reader (advisor/families/<module>.py)
        # the config itself travels with the shape: families the activation replay does not cover are traced
        return arch.model_copy(update={"source_config": json.dumps(cfg, sort_keys=True, default=str)})
    except ValidationError as exc:   # a value the readers let through but Architecture refuses
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err.get("loc", ())) or "config"
        raise InputError(f"{source}: {loc}: {err.get('msg', 'invalid value')}", field="model") from None
