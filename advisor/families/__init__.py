"""The family registry: everything dsadvise knows about one model family lives in one module here.

A family module (``advisor/families/<module>.py``, diffable against transformers'
``models/<model_type>/modeling_<model_type>.py``) defines ``FAMILY``, a :class:`~advisor.families.base.Family`:
its config reader (HF ``config.json`` → :class:`~advisor.architecture.Architecture`, with the config class's
defaults), its parameter layout (native linear names for LoRA), its forward replay (a
:class:`~advisor.families.replay.DecoderReplay` subclass, or None when its activations are traced), its FSDP
wrap class, its ZeRO-3 leaf modules and its proxy config for ``dry-run``. A model_type without a module is
traced on the real transformers model (:mod:`advisor.trace`): the tracer is the family of last resort.

Modules are imported on first use (this index costs nothing to import), so a command pays only for the
families it touches.
"""

from __future__ import annotations

from collections.abc import Iterator, Set
from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Family

# model_type -> module under advisor/families (the only list of families; everything else is in the module)
_MODULES: dict[str, str] = {
    "llama": "llama", "mistral": "mistral", "mixtral": "mixtral", "qwen2": "qwen2", "qwen3": "qwen3",
    "gemma": "gemma", "gemma2": "gemma2", "phi3": "phi3", "gpt2": "gpt2", "opt": "opt", "falcon": "falcon",
    "bloom": "bloom", "gpt_neox": "gpt_neox", "qwen3_moe": "qwen3_moe", "gemma3_text": "gemma3_text",
    "olmo2": "olmo2", "smollm3": "smollm3", "glm4": "glm4", "gpt_oss": "gpt_oss",
    "deepseek_v3": "deepseek_v3",
    "llama4_text": "llama4_text",   # issue 14 (A1)
    "phi": "phi",                   # issue 17 (C): Phi-1/1.5/2
}

MODEL_TYPES: tuple[str, ...] = tuple(sorted(_MODULES))


def has_family(model_type: str) -> bool:
    """True when ``model_type`` has a family module (an arithmetic config reader and parameter layout)."""
    return model_type in _MODULES


def family(model_type: str) -> Family:
    """The :class:`~advisor.families.base.Family` of ``model_type`` (KeyError when it has none)."""
    return import_module(f"{__name__}.{_MODULES[model_type]}").FAMILY


def fsdp_layer_class(model_type: str) -> str | None:
    """The decoder-layer class FSDP's TRANSFORMER_BASED_WRAP wraps for ``model_type``; None when unknown."""
    return family(model_type).fsdp_layer_class if model_type in _MODULES else None


def z3_leaf_modules(model_type: str) -> tuple[str, ...]:
    """Class names to pass to ``deepspeed.utils.set_z3_leaf_modules`` for ``model_type`` (its MoE blocks:
    ZeRO-3 gathers a leaf module's parameters at once instead of hooking each expert, which a router that
    skips experts would otherwise leave waiting); empty for dense families and unknown ones."""
    return family(model_type).z3_leaf_modules if model_type in _MODULES else ()


def z3_leaf_advice(model_type: str) -> str | None:
    """One line telling a ZeRO-3 user to mark ``model_type``'s MoE blocks as leaf modules, with the code; None for
    families without MoE blocks. Why: ZeRO-3 fetches parameters per submodule through forward hooks, and a
    router that sends no token to some expert never runs that expert's hooks, so the prefetch order recorded in
    the first step breaks (deepspeed/utils/z3_leaf_module.py; DeepSpeed's Mixtral/Qwen-MoE fine-tuning notes)."""
    leaves = z3_leaf_modules(model_type)
    if not leaves:
        return None
    module = family(model_type).modeling.removesuffix(".py").replace("/", ".")
    names = ", ".join(leaves)
    return (f"ZeRO-3 with {model_type} experts: before accelerator.prepare / deepspeed.initialize, call "
            f"`from deepspeed.utils import set_z3_leaf_modules; from {module} import {names}; "
            f"set_z3_leaf_modules(model, [{names}])` so each MoE block is gathered whole (a router that skips an "
            f"expert otherwise stalls ZeRO-3's parameter prefetch); the estimate already gathers a whole MoE "
            f"layer at once")


class _Replayed(Set):
    """The model_types whose activations are replayed arithmetically (``FAMILY.replay`` is set); membership
    imports only the family asked about."""

    def __contains__(self, model_type: object) -> bool:
        return isinstance(model_type, str) and model_type in _MODULES and family(model_type).replay is not None

    def __iter__(self) -> Iterator[str]:
        return (m for m in MODEL_TYPES if m in self)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"REPLAYED_FAMILIES({sorted(self)})"


REPLAYED_FAMILIES: Set[str] = _Replayed()


class _FsdpClasses(Set):
    """Read-only mapping-like view model_type → FSDP wrap class (``FSDP_LAYER_CLASSES[...]``, ``.get``)."""

    def __contains__(self, model_type: object) -> bool:
        return isinstance(model_type, str) and model_type in _MODULES

    def __iter__(self) -> Iterator[str]:
        return iter(MODEL_TYPES)

    def __len__(self) -> int:
        return len(MODEL_TYPES)

    def __getitem__(self, model_type: str) -> str:
        return family(model_type).fsdp_layer_class

    def get(self, model_type: str, default: str | None = None) -> str | None:
        return fsdp_layer_class(model_type) or default

    def values(self) -> list[str]:
        return [self[m] for m in MODEL_TYPES]

    def items(self) -> list[tuple[str, str]]:
        return [(m, self[m]) for m in MODEL_TYPES]


FSDP_LAYER_CLASSES = _FsdpClasses()
