"""The GPU catalog: datasheet figures of known accelerators (``advisor/data/gpus.yaml``) and name lookup.

``resolve_gpu`` accepts the spellings people and tools use for the same card: the canonical id (``a100-80g``),
marketing names in any case and with any separators (``A100 80GB``, ``a100_80gb``) and the device name that
``nvidia-smi`` / ``torch.cuda.get_device_name`` print (``NVIDIA A100-SXM4-80GB``). A partial name that fits one
entry only is accepted (``4090``); one that fits several (``h100``, ``a100``) is refused, naming the candidates,
because guessing between e.g. 40 and 80 GB would silently skew every estimate.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from advisor.datafiles import load_data
from advisor.errors import InputError, did_you_mean
from advisor.specs import GiB, GPUInfo

__all__ = ["list_gpus", "resolve_gpu", "normalize_gpu_name"]

# Words that vendors put in front of the model and that never tell two catalog entries apart.
_VENDOR_WORDS = frozenset({"nvidia", "tesla", "geforce", "amd", "instinct"})
_SIZE_UNITS = frozenset({"g", "gb", "gib"})
_SIZE_SUFFIX = re.compile(r"(?<=\d)(?:gb|gib)$")  # "80gb" -> "80g", also glued on: "a10080gb" -> "a10080g"
_SPLIT = re.compile(r"[^0-9a-z]+")


def _tokens(text: str) -> tuple[str, ...]:
    """Lower-case words of ``text`` without vendor words, memory sizes spelled ``<n>g`` (``80 GB`` -> ``80g``)."""
    text = unicodedata.normalize("NFKC", text).lower()
    raw = [t for t in _SPLIT.split(text) if t]
    out: list[str] = []
    i = 0
    while i < len(raw):
        tok = raw[i]
        if tok.isdigit() and i + 1 < len(raw) and raw[i + 1] in _SIZE_UNITS:
            tok, i = tok + "g", i + 1
        else:
            tok = _SIZE_SUFFIX.sub("g", tok)
        if tok not in _VENDOR_WORDS:
            out.append(tok)
        i += 1
    return tuple(out)


def normalize_gpu_name(text: str) -> str:
    """The key names are compared by: ``'NVIDIA A100-SXM4-80GB'`` -> ``'a100sxm480g'``."""
    return "".join(_tokens(text))


def _entry(raw: dict) -> GPUInfo:
    fields = dict(raw)
    if "memory_gib" in fields:
        fields["memory_bytes"] = round(float(fields.pop("memory_gib")) * GiB)
    if "aliases" in fields and fields["aliases"] is not None:
        fields["aliases"] = tuple(fields["aliases"])
    return GPUInfo(**fields)


@lru_cache(maxsize=1)
def _catalog() -> tuple[GPUInfo, ...]:
    data = load_data("gpus.yaml")
    return tuple(_entry(raw) for raw in data["gpus"])


@lru_cache(maxsize=1)
def _index() -> tuple[dict[str, GPUInfo], tuple[tuple[frozenset[str], GPUInfo], ...]]:
    """Exact keys -> GPU, and the token sets of every name and alias for partial matches."""
    exact: dict[str, GPUInfo] = {}
    token_sets: list[tuple[frozenset[str], GPUInfo]] = []
    for gpu in _catalog():
        for spelling in (gpu.name, *gpu.aliases):
            toks = _tokens(spelling)
            exact.setdefault("".join(toks), gpu)
            token_sets.append((frozenset(toks), gpu))
    return exact, tuple(token_sets)


def list_gpus() -> list[GPUInfo]:
    """Every catalog entry, in catalog order (a fresh list; the entries themselves are frozen)."""
    return list(_catalog())


def resolve_gpu(text: str) -> GPUInfo:
    """The catalog entry ``text`` names; :class:`InputError` (field ``gpu``) when it names none or several."""
    names = [g.name for g in _catalog()]
    toks = _tokens(text) if isinstance(text, str) else ()
    if toks:
        exact, token_sets = _index()
        hit = exact.get("".join(toks))
        if hit is not None:
            return hit
        wanted = frozenset(toks)
        found = [gpu for toks_of, gpu in token_sets if wanted <= toks_of]
        candidates = [g for g in _catalog() if any(g is f for f in found)]
        if len(candidates) == 1:
            return candidates[0]
        if candidates:
            raise InputError(f"ambiguous GPU {text!r}: it matches {', '.join(g.name for g in candidates)}; "
                             "name one of them", field="gpu")
    raise InputError(f"unknown GPU {text!r}; known: {', '.join(names)}"
                     f"{did_you_mean(str(text), names)}", field="gpu")
