"""The software stack a run uses (``--torch-version``, ``--transformers-version``) and what each version changes in
GPU memory, read from ``advisor/data/stacks.yaml`` (the one table mapping versions to behaviours, with sources).

Versions are compared as ``major.minor``; ``None`` (not given) means dsadvise's default behaviour everywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from .datafiles import load_data

_VERSION = re.compile(r"^\s*v?(\d+)\.(\d+)(?:\.\d+)?(?:[.+\-]?[A-Za-z0-9]+)*\s*$")


def _minor(text: str) -> tuple[int, int] | None:
    m = _VERSION.match(str(text))
    return (int(m.group(1)), int(m.group(2))) if m else None


def _name(v: tuple[int, int]) -> str:
    return f"{v[0]}.{v[1]}"


@lru_cache(maxsize=1)
def _table() -> dict:
    return load_data("stacks.yaml")


def known_torch_versions() -> tuple[str, ...]:
    """The torch minor versions dsadvise knows (those with a NCCL entry in stacks.yaml), oldest first."""
    return tuple(sorted(_table()["torch"]["nccl"], key=_minor))


def normalize_version(kind: str, text: str) -> str:
    """``text`` as the ``major.minor`` dsadvise keys its tables by (``kind``: ``torch``, ``transformers`` or
    ``deepspeed``); raises ValueError with one line naming the versions it knows."""
    v = _minor(text)
    if kind == "torch":
        known = known_torch_versions()
        span = f"{known[0]} ... {known[-1]}"
        ok = v is not None and _name(v) in known
    else:   # transformers, deepspeed (session 10, helper R): a first ... last range
        t = _table()[kind]
        first, last = _minor(t["first"]), _minor(t["last"])
        span = f"{t['first']} ... {t['last']}"
        ok = v is not None and first <= v <= last
    if v is None:
        raise ValueError(f"expected a {kind} version such as {span.split(' ')[0]} or {span.split(' ')[0]}.1")
    if not ok:
        raise ValueError(f"dsadvise does not know {kind} {_name(v)}: it knows {span} (advisor/data/stacks.yaml)")
    return _name(v)


def _within(entry: dict, v: tuple[int, int]) -> bool:
    return _minor(entry["first"]) <= v <= _minor(entry["last"])


def nccl_version(torch_version: str | None) -> str | None:
    """The NCCL version of the PyPI wheels of ``torch_version`` (None when no version is given)."""
    if torch_version is None:
        return None
    return _table()["torch"]["nccl"][normalize_version("torch", torch_version)]


def nvls_bytes_per_channel_per_rank(torch_version: str | None) -> int | None:
    """Bytes of NCCL NVLS buffers per channel and per local rank (sm90) for the NCCL of ``torch_version``'s wheels;
    None when no version is given (the caller keeps its floor over NCCL versions)."""
    nccl = nccl_version(torch_version)
    if nccl is None:
        return None
    v = _minor(nccl)
    for entry in _table()["nccl_nvls"]:
        if _within(entry, v):
            return int(entry["bytes_per_channel_per_rank"])
    return 0       # before NCCL 2.18: no NVLS buffers mapped


def inline_fp32_loss(transformers_version: str | None) -> bool:
    """True when that transformers computes the causal-LM loss inside the model on fp32 logits (``--loss
    legacy-inline``); False when no version is given."""
    if transformers_version is None:
        return False
    return _within(_table()["transformers"]["inline_fp32_loss"],
                   _minor(normalize_version("transformers", transformers_version)))


def lora_adapters_in_base_dtype(transformers_version: str | None) -> bool:
    """True when the PEFT of that transformers' time (< 0.12, no ``autocast_adapter_dtype``) builds LoRA adapters in
    the base weight's floating dtype (advisor/data/stacks.yaml ``lora_adapters_in_base_dtype``): on a 16-bit model
    (pure bf16) they are 16-bit and the forward casts no input to fp32. False when no version is given (fp32
    adapters, PEFT >= 0.12)."""
    if transformers_version is None:
        return False
    return _within(_table()["transformers"]["lora_adapters_in_base_dtype"],
                   _minor(normalize_version("transformers", transformers_version)))


def sdpa_repeats_kv(transformers_version: str | None) -> bool:
    """True when that transformers' SDPA attention repeats a grouped-query model's K/V heads before the kernel
    (< 4.54: no ``enable_gqa``; stacks.yaml ``sdpa_repeat_kv``), so SDPA saves K and V with every query head;
    False when no version is given (transformers 5: ``enable_gqa`` without a mask)."""
    if transformers_version is None:
        return False
    return _within(_table()["transformers"]["sdpa_repeat_kv"],
                   _minor(normalize_version("transformers", transformers_version)))


def sdpa_contiguous_qkv(transformers_version: str | None) -> bool:
    """True when that transformers' ``sdpa_attention_forward`` makes q, k, v contiguous before SDPA on every device
    (4.48-4.55, stacks.yaml ``sdpa_contiguous_qkv``); False without a version."""
    if transformers_version is None:
        return False
    return _within(_table()["transformers"]["sdpa_contiguous_qkv"],
                   _minor(normalize_version("transformers", transformers_version)))


def family_stack_behaviour(key: str, arch, transformers_version: str | None) -> bool:
    """True when stacks.yaml ``transformers.<key>`` names ``arch``'s family for ``transformers_version``
    (``sdpa_mask_contiguous``, ``rotary_per_layer``); False without a version."""
    if transformers_version is None:
        return False
    entry = _table()["transformers"].get(key, {}).get(arch.family)
    return isinstance(entry, dict) and _within(entry, _minor(normalize_version("transformers", transformers_version)))


def default_loss(transformers_version: str | None) -> str:
    """The ``--loss`` a run has when it is not given: ``legacy-inline`` under a transformers that computed the loss
    inline (< 4.46), else ``plain``."""
    return "legacy-inline" if inline_fp32_loss(transformers_version) else "plain"


@dataclass(frozen=True)
class RotaryCaches:
    """Per-decoder-layer rotary cos/sin caches of an old transformers (buffers, bytes in fp32 per layer)."""

    family: str
    version: str
    names: str
    source: str
    elements_per_layer: int        # cos + sin


def rotary_caches(arch, transformers_version: str | None) -> RotaryCaches | None:
    """The rotary caches each decoder layer of ``arch`` owns under ``transformers_version`` (None where that
    version's model of this family has none, or no version is given): cos and sin, each
    max_position_embeddings x head_dim elements (stacks.yaml ``rotary_caches``)."""
    if transformers_version is None:
        return None
    v = _minor(normalize_version("transformers", transformers_version))
    entry = _table()["transformers"]["rotary_caches"].get(arch.family)
    if entry is None or not _within(entry, v):
        return None
    names = [n for first, n in sorted(entry["names"].items(), key=lambda kv: _minor(kv[0])) if _minor(first) <= v]
    return RotaryCaches(family=arch.family, version=_name(v), names=names[-1], source=entry["source"],
                        elements_per_layer=2 * arch.max_position_embeddings * arch.head_dim)


def causal_mask_buffer(arch, transformers_version: str | None) -> bool:
    """True when that transformers' model of ``arch``'s family registers a max_pos x max_pos bool ``causal_mask``
    buffer and builds a (batch, 1, max_pos, max_pos) mask from it every forward (llama 4.38, stacks.yaml
    ``causal_mask``); False without a version."""
    if transformers_version is None:
        return False
    entry = _table()["transformers"].get("causal_mask", {}).get(arch.family)
    return entry is not None and _within(entry, _minor(normalize_version("transformers", transformers_version)))


def not_counted(arch, transformers_version: str | None, attention: str | None = None) -> list[str]:
    """What that transformers does to memory for ``arch``'s family (under ``attention``, where an entry names the
    attention implementations it concerns) that dsadvise read but does not count."""
    if transformers_version is None:
        return []
    v = _minor(normalize_version("transformers", transformers_version))
    return [e["what"] for e in _table()["transformers"].get("not_counted", {}).get(arch.family, [])
            if _within(e, v) and (attention is None or attention in e.get("attention", (attention,)))]


# --- issue 17 (helper P): where a QLoRA layer's bitsandbytes QuantState is when FSDP (v1) wraps it ---
def quant_states_moved_at_wrap(transformers_version: str | None) -> bool:
    """True when the QLoRA quantization state (QuantState tensors) is off the GPU between loading and FSDP's wrap
    and comes back unit by unit as each unit is wrapped, under the PEFT of that transformers' time (< 0.12; the
    same proxy and stacks.yaml range as :func:`lora_adapters_in_base_dtype`, read from the same call): PEFT 0.10.0
    ... 0.11.1 tuners/lora/layer.py ``LoraLayer.update_layer`` ends with ``self.to(weight.device,
    dtype=weight.dtype)``, the whole layer, whose base ``Params4bit`` (packed data on the CPU after loading under
    FSDP) moves its QuantState along (bitsandbytes 0.43 nn/modules.py ``Params4bit.to`` -> functional.py
    ``QuantState.to``: absmax, offset, state2.absmax, state2.code), i.e. to the CPU; torch 2.2 FSDP
    ``_init_param_handle_from_module`` -> ``_move_module_to_device`` then calls ``Params4bit.to(gpu)`` for each
    unit's parameters, bringing its QuantStates back just before its packed data. PEFT 0.12.0 moves only the
    adapter (``_move_adapter_to_device_of_base_layer``). False when no version is given."""
    return lora_adapters_in_base_dtype(transformers_version)


def zero3_peft_save_adapters(transformers_version: str | None) -> bool:
    """True when that transformers' Trainer saves a PEFT model under DeepSpeed ZeRO-3 by gathering its trainable
    parameters only (>= 5.0, stacks.yaml ``zero3_peft_save_adapters``); True when no version is given (the current
    one). Session 10 (helper R)."""
    if transformers_version is None:
        return True
    return _within(_table()["transformers"]["zero3_peft_save_adapters"],
                   _minor(normalize_version("transformers", transformers_version)))


def zero3_reset_step_at_forward(deepspeed_version: str | None) -> bool | None:
    """Whether that DeepSpeed's ZeRO-3 coordinator resets its count at the start of every forward (>= 0.16, no
    carry-over from step() to the next step; stacks.yaml ``deepspeed.zero3_reset_step_at_forward``); None when no
    version is given (advisor/memory/zero3_gather.py then counts the larger of the two behaviours)."""
    if deepspeed_version is None:
        return None
    return _within(_table()["deepspeed"]["zero3_reset_step_at_forward"],
                   _minor(normalize_version("deepspeed", deepspeed_version)))


def zero_init_keeps_fp32_adapters(deepspeed_version: str | None) -> bool:
    """Whether that DeepSpeed keeps a zero.Init'ed model's fp32 LoRA adapters fp32 (no cast of a zero.Init model's
    parameters, >= 0.19.2: stacks.yaml ``deepspeed.zero_init_keeps_fp32_adapters``, keyed by minor version); True
    when no version is given (the larger: 4 bytes, as measured on 0.19.8)."""
    if deepspeed_version is None:
        return True
    return _within(_table()["deepspeed"]["zero_init_keeps_fp32_adapters"],
                   _minor(normalize_version("deepspeed", deepspeed_version)))
