"""The family registry: one module per family, loaded on first use, naming classes its modeling file defines."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from advisor import families
from advisor.catalog.models import list_models
from advisor.hf_config import SUPPORTED_MODEL_TYPES
from advisor.memory.activations import REPLAYED_FAMILIES
from advisor.specs import GiB, HardwareSpec, StrategySpec, TrainingSpec


def _transformers_root() -> Path | None:
    spec = importlib.util.find_spec("transformers")   # locates the package without importing it (no torch)
    return Path(spec.origin).parent.parent if spec and spec.origin else None


def test_the_index_and_the_estimate_path_import_no_family_module_and_no_torch():
    code = ("import sys, advisor.families, advisor.memory.activations, advisor.hf_config, advisor.param_count; "
            "print(sorted(m for m in sys.modules if m.startswith('advisor.families.') or m in ('torch', "
            "'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_model_type_has_its_own_module():
    assert SUPPORTED_MODEL_TYPES == families.MODEL_TYPES
    for model_type in families.MODEL_TYPES:
        fam = families.family(model_type)
        assert fam.model_type == model_type
        assert fam.read.__module__ == f"advisor.families.{model_type}"
    assert not families.has_family("falcon_h1") and families.fsdp_layer_class("foo") is None
    assert families.z3_leaf_modules("foo") == () and "foo" not in REPLAYED_FAMILIES


def test_catalog_families_resolve_through_the_registry():
    for model in list_models():
        assert families.has_family(model.architecture.family)
        assert model.architecture.is_moe == bool(families.z3_leaf_modules(model.architecture.family))


@pytest.mark.skipif(_transformers_root() is None, reason="transformers is not installed")
@pytest.mark.parametrize("model_type", families.MODEL_TYPES)
def test_named_classes_are_defined_in_the_modeling_file(model_type):
    """FSDP's wrap class and ZeRO-3's leaf modules are classes of the family's transformers modeling file (read
    as text: the names are what accelerate and DeepSpeed look up on the model)."""
    fam = families.family(model_type)
    source = (_transformers_root() / fam.modeling).read_text()
    for name in (fam.fsdp_layer_class, *fam.z3_leaf_modules):
        assert re.search(rf"^class {name}\(", source, re.M), f"{name} not in {fam.modeling}"


def _note(model_name: str, zero_stage: int) -> list[str]:
    from advisor.catalog.models import resolve_model
    from advisor.render.context import build_context

    ctx = build_context(resolve_model(model_name), HardwareSpec(gpus_per_node=8, vram_bytes=80 * GiB),
                        TrainingSpec(seq_len=1024, micro_batch_size=1, precision="bf16"),
                        StrategySpec(backend="deepspeed", zero_stage=zero_stage), gradient_accumulation_steps=1)
    return [n for n in ctx["notes"] if "set_z3_leaf_modules" in n]


def test_zero3_moe_launch_advice_names_the_leaf_modules():
    (note,) = _note("mixtral-8x7b", 3)
    assert "from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock" in note
    assert "set_z3_leaf_modules(model, [MixtralSparseMoeBlock])" in note
    assert _note("mixtral-8x7b", 2) == [] and _note("llama-3.1-8b", 3) == []


def proxy_moe_layers(arch, cfg: dict) -> int:
    """MoE layers of the proxy: all but the leading dense ones (DeepSeek's first_k_dense_replace)."""
    if "interleave_moe_layer_step" in cfg:   # Llama-4: every step-th layer (Llama4TextConfig.moe_layers)
        return len(range(cfg["interleave_moe_layer_step"] - 1, cfg["num_hidden_layers"], cfg["interleave_moe_layer_step"]))
    return cfg["num_hidden_layers"] - (cfg.get("first_k_dense_replace", 0) if arch.dense_layers else 0)


def _ff(layer):
    """The decoder layer's feed-forward block (``mlp``; Llama-4: ``feed_forward``)."""
    return layer.mlp if hasattr(layer, "mlp") else layer.feed_forward


def test_leaf_modules_are_the_moe_blocks_of_the_real_model():
    """The classes ZeRO-3 is told to treat as leaves (``set_z3_leaf_modules`` matches by class) are in the built
    dry-run proxy of each MoE family, one per decoder layer, each holding its layer's router and experts."""
    transformers = pytest.importorskip("transformers")
    from advisor.render.proxy import proxy_hf_config

    seen = set()
    for model in list_models():
        fam = model.architecture.family
        if fam in seen or not families.z3_leaf_modules(fam):
            continue
        seen.add(fam)
        cfg = proxy_hf_config(model.architecture)
        net = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**cfg))
        layer = next(x for x in net.model.layers if type(_ff(x)).__name__ in families.z3_leaf_modules(fam))
        blocks = [m for m in net.modules() if type(m).__name__ in families.z3_leaf_modules(fam)]
        moe_layers = proxy_moe_layers(model.architecture, cfg)
        assert len(blocks) == moe_layers and blocks[0] is _ff(layer), fam
        layer_params = sum(p.numel() for p in layer.parameters())
        attention = sum(p.numel() for p in layer.self_attn.parameters())
        norms = sum(p.numel() for n, p in layer.named_parameters() if "norm" in n and not n.startswith("self_attn."))
        assert sum(p.numel() for p in blocks[0].parameters()) == layer_params - attention - norms, fam
    assert seen
