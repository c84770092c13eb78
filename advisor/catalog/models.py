"""The model catalog and turning what a user typed (a name, a size, a path) into an architecture.

Only pydantic, yaml and json are used on this path: resolving a model must stay fast, so neither torch
nor transformers is imported here.
"""

import re
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from advisor.datacache import computed
from advisor.datafiles import load_data
from advisor.architecture import Architecture
from advisor.errors import InputError, did_you_mean
from advisor.param_count import count_parameters

MIN_SIZE = 10_000_000
MAX_SIZE = 2_000_000_000_000
AS_IS_TOLERANCE = 0.15   # a catalog model within ±15% of an asked size is used unchanged

# Size tiers, tried in order: the nearest model of the first tier with one within tolerance wins.
_TIERS: tuple[frozenset[str], ...] = (frozenset({"llama"}), frozenset({"qwen2", "qwen3", "mistral"}))
_REFERENCE_FAMILIES = frozenset().union(*_TIERS)


class CatalogModel(BaseModel):
    """One catalog entry; ``parameters`` is the exact element count of its architecture."""

    model_config = ConfigDict(frozen=True)

    name: str
    aliases: tuple[str, ...] = ()
    hf_id: str
    description: str
    architecture: Architecture
    parameters: int
    # issue 17 (C): False for entries kept for a published measurement (models.yaml ``by_size: false``): a bare
    # size (``--model 30B``) never picks them over the reference families' models
    by_size: bool = True


class ResolvedModel(BaseModel):
    """What a model argument resolved to, where it came from, and a one-line note for the user."""

    model_config = ConfigDict(frozen=True)

    name: str
    architecture: Architecture
    source: Literal["catalog", "size", "config", "traced"]
    note: str


def _catalog_fields(models: tuple[CatalogModel, ...]) -> list[dict]:
    """The catalog as plain data for the datacache (the architecture's excluded ``source_config`` too)."""
    return [{**m.model_dump(mode="json"), "architecture": {**m.architecture.model_dump(mode="json"),
                                                           "source_config": m.architecture.source_config}}
            for m in models]


def _catalog_from_fields(fields: list[dict]) -> tuple[CatalogModel, ...]:
    return tuple(CatalogModel.model_validate(f) for f in fields)         # validated again, from plain data


@lru_cache(maxsize=1)
@computed("catalog", _catalog_fields, _catalog_from_fields)  # a start validates cached fields instead of
def _catalog() -> tuple[CatalogModel, ...]:                  # reading every family's config (datacache)
    from advisor.hf_config import architecture_from_hf_config   # here: a start that reads the cached catalog
                                                                 # imports no config reader
    entries = load_data("models.yaml")["models"]
    models = []
    for entry in entries:
        arch = architecture_from_hf_config(entry["config"], source=f"models.yaml:{entry['name']}")
        models.append(CatalogModel(name=entry["name"], aliases=tuple(entry.get("aliases", ())),
                                   hf_id=entry["hf_id"], description=entry["description"],
                                   architecture=arch, parameters=count_parameters(arch).total,
                                   by_size=entry.get("by_size", True)))
    return tuple(models)


def list_models() -> list[CatalogModel]:
    """Every catalog model, in catalog order (parsed once, then cached)."""
    return list(_catalog())


def lookup_keys(model: CatalogModel) -> tuple[str, ...]:
    """Every spelling that names ``model``: name, aliases, hf_id and the hf_id's last path part."""
    return (model.name, *model.aliases, model.hf_id, model.hf_id.rsplit("/", 1)[-1])


@lru_cache(maxsize=1)
def _index() -> dict[str, CatalogModel]:
    index: dict[str, CatalogModel] = {}
    for model in _catalog():
        for key in lookup_keys(model):
            index.setdefault(key.lower(), model)
    return index


def find_model(text: str) -> CatalogModel | None:
    """The catalog model named ``text`` (case-insensitive name, alias or hf_id), or None."""
    return _index().get(text.strip().lower())


# ---------------------------------------------------------------- sizes

_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(?:e\+?(\d{1,3}))?\s*(k|m|b|bn|t)?", re.IGNORECASE)
_SUFFIX = {None: 1, "k": 10**3, "m": 10**6, "b": 10**9, "bn": 10**9, "t": 10**12}


def parse_size(text: str) -> int | None:
    """A parameter count from ``7B``, ``1.5b``, ``350M``, ``6.7e9``, ``1T`` ...; None when not a size.

    Sizes outside 10M–2T raise :class:`InputError`.
    """
    if not isinstance(text, str):
        return None
    match = _SIZE.fullmatch(text.strip())
    if not match:
        return None
    mantissa, exponent, suffix = match.groups()
    try:
        value = Decimal(mantissa) * (Decimal(10) ** int(exponent or 0)) * _SUFFIX[suffix and suffix.lower()]
    except InvalidOperation:
        return None
    if value < MIN_SIZE or value > MAX_SIZE:
        raise InputError(f"{text.strip()!r} is not a plausible model size: give between 10M and 2T parameters",
                         field="model")
    return int(value.to_integral_value())


def human_count(n: int) -> str:
    """``6738415616`` → ``6.74B``; ``124439808`` → ``124.4M``."""
    for unit, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}" if unit != "M" else f"{n / scale:.1f}{unit}"
    return f"{n / 1e3:.1f}K"


def _within(count: int, target: int) -> bool:
    return abs(count - target) <= AS_IS_TOLERANCE * target


def _nearest(models: list[CatalogModel], target: int) -> CatalogModel | None:
    return min(models, key=lambda m: abs(m.parameters - target), default=None)


def _llama_style(arch: Architecture, layers: int) -> Architecture:
    """A plain Llama-shaped copy of ``arch``'s widths with ``layers`` decoder layers."""
    return Architecture(
        family="llama", num_layers=layers, hidden_size=arch.hidden_size,
        num_attention_heads=arch.num_attention_heads, num_key_value_heads=arch.num_key_value_heads,
        head_dim=arch.head_dim, intermediate_size=arch.intermediate_size, vocab_size=arch.vocab_size,
        max_position_embeddings=arch.max_position_embeddings, tie_word_embeddings=arch.tie_word_embeddings)


def _solve_layers(arch: Architecture, target: int) -> Architecture:
    """``arch`` with the layer count (>= 1) whose total is nearest ``target``."""
    one = count_parameters(arch.model_copy(update={"num_layers": 1}))
    fixed = one.total - one.per_layer
    layers = max(1, round((target - fixed) / one.per_layer))
    return arch.model_copy(update={"num_layers": layers})


def _small_llama(target: int) -> Architecture:
    """A small Llama-style model (32k vocab, tied, head_dim 64) near ``target``: the widest hidden size
    that still leaves room for a sensible depth (layers >= max(2, hidden/64))."""
    best = None
    for hidden in range(128, 4097, 64):
        heads = hidden // 64
        inner = -(-8 * hidden // 3 // 64) * 64      # Llama's 8/3 × hidden, rounded up to 64
        shape = Architecture(family="llama", num_layers=1, hidden_size=hidden, num_attention_heads=heads,
                             num_key_value_heads=heads, head_dim=64, intermediate_size=inner, vocab_size=32000,
                             tie_word_embeddings=True)
        candidate = _solve_layers(shape, target)
        if best is None or candidate.num_layers >= max(2, hidden // 64):
            best = candidate
        else:
            break
    return best


def _from_size(text: str, target: int) -> ResolvedModel:
    dense = [m for m in _catalog() if not m.architecture.is_moe and m.by_size]
    for tier in (*_TIERS, None):
        pool = [m for m in dense if tier is None or m.architecture.family in tier]
        pick = _nearest(pool, target)
        if pick is not None and _within(pick.parameters, target):
            return ResolvedModel(
                name=pick.name, architecture=pick.architecture, source="size",
                note=f"{text}: no catalog model named; using {pick.name} ({pick.hf_id}, "
                     f"{human_count(pick.parameters)} parameters, within 15% of {human_count(target)})")
    ref = _nearest([m for m in dense if m.architecture.family in _REFERENCE_FAMILIES], target)
    arch = _solve_layers(_llama_style(ref.architecture, 1), target)
    total = count_parameters(arch).total
    shaped = f"shaped like {ref.name}"
    if not _within(total, target):
        arch = _small_llama(target)
        total = count_parameters(arch).total
        shaped = "(32k vocabulary, head_dim 64)"
    return ResolvedModel(
        name=f"llama-style-{human_count(target)}", architecture=arch, source="size",
        note=f"{text}: no catalog model within 15%; using a Llama-style architecture {shaped} with "
             f"{arch.num_layers} layers, hidden {arch.hidden_size}, {arch.num_attention_heads} heads "
             f"({human_count(total)} parameters)")


# ---------------------------------------------------------------- resolution

def _existing_path(text: str) -> Path | None:
    try:
        path = Path(text).expanduser()
        return path if path.exists() else None
    except (OSError, ValueError, RuntimeError):   # embedded NUL, name too long, unknown ~user
        return None


def _activation_note(arch: Architecture) -> str:
    """What the user must be told when the activations of an arithmetic family come from a trace."""
    from advisor.memory.activations import REPLAYED_FAMILIES

    if arch.family in REPLAYED_FAMILIES:
        return ""
    return (f"; parameters by arithmetic, activations traced on the real transformers model ({arch.family} has "
            f"no forward replay; needs torch and transformers, cached after the first run per setting)")


def _traced(cfg: dict, file: str, name: str, why: str) -> ResolvedModel:
    """A config without an arithmetic family: traced on the real transformers model, or refused in one line."""
    try:
        from advisor.trace.estimate import traced_architecture
        arch, arch_class = traced_architecture(cfg, source=file)
    except ImportError as exc:
        raise InputError(f"{file}: {why}; tracing it needs torch and transformers ({exc.name} is not installed)",
                         field="model") from None
    total = count_parameters(arch)
    moe = (f", {human_count(total.active_per_token)} active per token" if total.active_per_token < total.total
           else "")
    return ResolvedModel(
        name=name, architecture=arch, source="traced",
        note=f"{file}: {why}; parameters and activations are traced on the real {arch_class} (built from the "
             f"config on meta/fake tensors, no weights): {arch.num_layers} layers, "
             f"{human_count(total.total)} parameters{moe}")


def _from_config(path: Path) -> ResolvedModel:
    from advisor.hf_config import NeedsTrace, architecture_from_hf_config, load_hf_config

    cfg = load_hf_config(path)
    file = path / "config.json" if path.is_dir() else path
    name = (path if path.is_dir() else path.parent).resolve().name or str(file)
    try:
        arch = architecture_from_hf_config(cfg, source=str(file))
    except NeedsTrace as why:
        return _traced(cfg, str(file), name, str(why))
    total = count_parameters(arch).total
    return ResolvedModel(
        name=name, architecture=arch, source="config",
        note=f"{file}: {arch.family}, {arch.num_layers} layers, hidden {arch.hidden_size} "
             f"({human_count(total)} parameters){_activation_note(arch)}")


def resolve_model(text: str) -> ResolvedModel:
    """Resolve a model argument: an existing config path, then a catalog name/alias/hf_id, then a size."""
    if not isinstance(text, str) or not text.strip():
        raise InputError("give a catalog model name, a size such as 7B, or a path to a config.json",
                         field="model")
    text = text.strip()
    path = _existing_path(text)
    if path is not None:
        return _from_config(path)
    model = find_model(text)
    if model is not None:
        return ResolvedModel(
            name=model.name, architecture=model.architecture, source="catalog",
            note=f"{model.name}: {model.description} ({model.hf_id}, {human_count(model.parameters)} parameters)"
                 f"{_activation_note(model.architecture)}")
    target = parse_size(text)
    if target is not None:
        return _from_size(text, target)
    names = [key for m in _catalog() for key in (m.name, *m.aliases)]
    raise InputError(f"unknown model {text!r}{did_you_mean(text, names)}: give a catalog model name, "
                     f"a size such as 7B, or a path to a config.json or model folder", field="model")
