"""Real ``transformers`` models for the harness: built from config dicts with random weights, few layers.

``catalog_config`` reads a model's config from ``advisor/data/models.yaml`` (the dict the estimator
normalizes, so harness and estimate see one architecture). ``build_model`` builds 1 decoder layer;
``add_shared_layer`` appends a second one that shares the first's parameters (parameters are excluded from
what is measured, so sharing them changes nothing measured and halves the memory). ``apply_method`` turns a
model into LoRA (a faithful stand-in for peft's ``LoraLayer.forward``; peft is not installed) or freeze
tuning. This module builds; it patches nothing (``semantics``) and measures nothing (``kinds``).
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.harness.semantics import mode_dtypes

ROOT = Path(__file__).resolve().parents[2]


@functools.lru_cache(maxsize=None)
def _catalog(path: Path) -> list[dict[str, Any]]:
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8"))["models"]


def catalog_config(name: str) -> dict[str, Any]:
    """The ``config`` dict (real HF config.json keys) of a model in ``advisor/data/models.yaml``: the same
    dict the estimator normalizes, so harness and estimate see one architecture."""
    path = ROOT / "advisor" / "data" / "models.yaml"
    for entry in _catalog(path):
        if entry["name"] == name or name in entry.get("aliases", ()):
            return dict(entry["config"])
    raise KeyError(f"{name!r} is not in {path}")


def layer_list(model: nn.Module) -> nn.ModuleList:
    """The ModuleList holding the decoder layers (the longest ModuleList whose items are all one class)."""
    best = None
    for m in model.modules():
        if isinstance(m, nn.ModuleList) and len(m) > 0 and len({type(x) for x in m}) == 1:
            if "Layer" in type(m[0]).__name__ or "Block" in type(m[0]).__name__:
                if best is None or len(m) > len(best):
                    best = m
    if best is None:
        raise RuntimeError("cannot find the decoder layers")
    return best


SELECTIVE = "dsadvise_selective_eager"


def register_selective() -> None:
    """Selective recomputation (Korthikanti et al. 2022) for eager attention: the attention interface call
    (QKᵀ, soft-capping, softmax, dropout, ·V) runs under a non-reentrant checkpoint, so only its inputs are
    kept. Registered as an attention implementation that wraps the model's own ``eager_attention_forward``."""
    import sys

    from torch.utils.checkpoint import checkpoint
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    def selective(module, query, key, value, attention_mask, **kwargs):
        eager = sys.modules[type(module).__module__].eager_attention_forward
        return checkpoint(eager, module, query, key, value, attention_mask, use_reentrant=False, **kwargs)

    AttentionInterface.register(SELECTIVE, selective)
    ALL_MASK_ATTENTION_FUNCTIONS.register(SELECTIVE, eager_mask)


def make_config(cfg: dict[str, Any], attn: str, num_layers: int = 1, **overrides: Any):
    from transformers import AutoConfig

    d = dict(cfg)
    d.update(overrides)
    model_type = d.pop("model_type")
    d["num_hidden_layers"] = num_layers
    if model_type == "gpt2":
        d["n_layer"] = num_layers
    config = AutoConfig.for_model(model_type, **d)
    config._attn_implementation = attn
    config.use_cache = False
    return config


def build_model(cfg: dict[str, Any], *, attn: str = "sdpa", mode: str = "fp32", seed: int = 0,
                **overrides: Any) -> nn.Module:
    """A 1-layer random-weight model in train mode, with weights in the mode's dtype."""
    wdtype, _ = mode_dtypes(mode)
    config = make_config(cfg, attn, 1, **overrides)
    return instantiate(config, attn, wdtype, seed)


def instantiate(config, attn: str, wdtype: torch.dtype, seed: int) -> nn.Module:
    """from_config without transformers' slow random init (minutes of RNG on 2 cores for 7B widths); every
    parameter is filled from one small seeded random block instead (values do not change what is saved)."""
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    prev = torch.get_default_dtype()
    torch.set_default_dtype(wdtype)
    try:
        with no_init_weights():
            model = AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    finally:
        torch.set_default_dtype(prev)
    model.to(wdtype)
    model.tie_weights()   # no_init_weights also skips the tying that init_weights does (tied lm_head)
    g = torch.Generator().manual_seed(seed)
    block = (torch.randn(_FILL, generator=g) * 0.02).to(wdtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.view(-1)
            if "norm" in name and p.dim() == 1 and "bias" not in name:
                flat.fill_(1.0)
                continue
            for i in range(0, flat.numel(), _FILL):
                n = min(_FILL, flat.numel() - i)
                flat[i:i + n].copy_(block[:n])
    model.train()
    return model


_FILL = 1_000_003  # prime, so the repeated block does not line up with rows


def add_shared_layer(model: nn.Module) -> None:
    """Append a copy of the first decoder layer that shares its parameters (layer_idx = next index)."""
    layers = layer_list(model)
    first = layers[0]
    memo = {id(p): p for p in first.parameters()}
    new = copy.deepcopy(first, memo)
    idx = len(layers)
    for m in new.modules():
        if hasattr(m, "layer_idx"):
            m.layer_idx = idx
    if hasattr(new, "gradient_checkpointing"):
        new.gradient_checkpointing = first.gradient_checkpointing
    layers.append(new)
    cfg = model.config
    cfg.num_hidden_layers = idx + 1
    lt = getattr(cfg, "layer_types", None)
    if lt is not None and len(lt) < idx + 1:
        cfg.layer_types = list(lt) + [lt[idx % len(lt)] if len(lt) > 1 else lt[0]]


# ----------------------------------------------------------------------------------------------------------
# LoRA / freeze (peft is not installed: a faithful stand-in for peft's LoraLayer.forward)
# ----------------------------------------------------------------------------------------------------------
LORA_TARGETS_ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                    "qkv_proj", "gate_up_proj", "query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h",
                    "c_attn", "c_proj", "c_fc", "fc1", "fc2", "out_proj", "w1", "w2", "w3")


class LoraLinear(nn.Module):
    """``peft.tuners.lora.Linear`` forward: base(x) + B(A(dropout(x.to(A.dtype)))) * scaling.

    peft keeps adapter weights in fp32 (``autocast_adapter_dtype=True``) and casts the input to the adapter
    dtype (``_cast_input_dtype``) before ``lora_A``; dropout defaults to 0 (identity).
    """

    def __init__(self, base: nn.Module, rank: int, alpha: float = 32.0, dropout: float = 0.0):
        super().__init__()
        self.base_layer = base
        w = base.weight
        in_f, out_f = (w.shape[1], w.shape[0]) if isinstance(base, nn.Linear) else (w.shape[0], w.shape[1])
        self.lora_A = nn.Linear(in_f, rank, bias=False, dtype=torch.float32)
        self.lora_B = nn.Linear(rank, out_f, bias=False, dtype=torch.float32)
        nn.init.normal_(self.lora_B.weight, std=0.02)  # random (not zero) so every path is exercised
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = alpha / rank

    def forward(self, x):
        result = self.base_layer(x)
        dtype = result.dtype
        xa = x.to(self.lora_A.weight.dtype) if x.dtype != self.lora_A.weight.dtype else x
        result = result + self.lora_B(self.lora_A(self.dropout(xa))) * self.scaling
        return result.to(dtype)


def apply_method(model: nn.Module, method: str, *, lora_rank: int = 16, trainable_layers: int = 2) -> None:
    """full: everything trains; lora: frozen base + adapters on every linear of the decoder layers;
    freeze: only the last ``trainable_layers`` decoder layers train (LLaMA-Factory's freeze tuning)."""
    if method == "full":
        return
    for p in model.parameters():
        p.requires_grad_(False)
    layers = layer_list(model)
    if method == "lora":
        from transformers.pytorch_utils import Conv1D

        for layer in layers:
            for name, mod in list(layer.named_modules()):
                for cname, child in list(mod.named_children()):
                    if isinstance(child, (nn.Linear, Conv1D)) and cname in LORA_TARGETS_ALL:
                        setattr(mod, cname, LoraLinear(child, lora_rank))
    elif method == "freeze":
        for layer in list(layers)[-trainable_layers:]:
            for p in layer.parameters():
                p.requires_grad_(True)
    else:
        raise ValueError(f"unsupported method {method!r}")


def sdpa_no_attn_dropout(cfg: dict[str, Any]) -> dict[str, Any]:
    """Attention-probability dropout off for SDPA runs (CPU has no fused SDPA-dropout kernel;
    ``benchmarks/harness/semantics.py``, "Not patched")."""
    out = {}
    for key in ("attn_pdrop", "attention_dropout"):
        if cfg.get(key):
            out[key] = 0.0
    return out

