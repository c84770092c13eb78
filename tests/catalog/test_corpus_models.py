"""Catalog entries added for the published GPU corpus (issue 17): Yi-34B, TinyLlama-1.1B, phi-2, StableLM-Alpha-3B.

Each count is the element count of the transformers model built from the entry's config on the meta device (no
weights, no hub), checked here against that build, and against the model's published size class.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml

from advisor.catalog.models import find_model, resolve_model
from advisor.datafiles import load_data
from advisor.param_count import count_parameters

CORPUS = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_memory_corpus.yaml"

# name -> (architecture class transformers builds, exact parameters, published size)
NEW = {
    "yi-34b": ("LlamaForCausalLM", 34_388_917_248, 34e9),
    "tiny-llama-1.1b": ("LlamaForCausalLM", 1_100_048_384, 1.1e9),
    "phi-2": ("PhiForCausalLM", 2_779_683_840, 2.7e9),
    "stablelm-base-alpha-3b": ("GPTNeoXForCausalLM", 3_637_321_728, 3e9),
}


@pytest.mark.parametrize("name", sorted(NEW))
def test_count_is_the_real_models(name):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging

    cfg = {e["name"]: e["config"] for e in load_data("models.yaml")["models"]}[name]
    logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))
    arch_class, exact, published = NEW[name]
    assert type(model).__name__ == arch_class
    real = sum(p.numel() for p in model.parameters())
    assert count_parameters(resolve_model(name).architecture).total == real == exact
    assert abs(real - published) <= 0.22 * published


@pytest.mark.parametrize("spelling, name", [
    ("01-ai/Yi-34B", "yi-34b"), ("Yi-34B", "yi-34b"), ("tiny-llama", "tiny-llama-1.1b"),
    ("TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T", "tiny-llama-1.1b"), ("microsoft/phi-2", "phi-2"),
    ("stabilityai/stablelm-base-alpha-3b", "stablelm-base-alpha-3b"),
])
def test_the_names_sources_use_resolve(spelling, name):
    assert find_model(spelling).name == name


def test_phi2_is_replayed_and_litgpt_shapes_agree():
    """phi-2 has an arithmetic family with a replay (no trace at estimate time); its shapes are litgpt's phi-2
    (litgpt/config.py at fd71063c: n_embd 2560, 32 layers and heads, rotary 0.4, padded vocab 51200)."""
    from advisor.memory.activations import REPLAYED_FAMILIES

    arch = resolve_model("phi-2").architecture
    assert arch.family in REPLAYED_FAMILIES
    assert (arch.hidden_size, arch.num_layers, arch.num_attention_heads, arch.vocab_size) == (2560, 32, 32, 51200)
    assert int(arch.head_dim * arch.rotary_pct) == 32 and arch.intermediate_size == 4 * 2560


def test_corpus_points_of_these_models_are_estimated():
    """The corpus points that waited only for these entries name them and carry their sources' settings."""
    points = {p["id"]: p for p in yaml.safe_load(CORPUS.read_text())["points"]}
    ids = ["answerai-yi-34b-qlora-bs2-3090", "answerai-yi-34b-qlora-offload-bs4-3090", "litgpt-tiny-llama-full-1xa10g",
           "litgpt-stablelm-base-alpha-3b-lora-1xa10g", "litgpt-phi-2-full-4xa10g",
           "litgpt-stablelm-base-alpha-3b-full-4xa10g", "litgpt-phi-2-lora-1xa10g", "litgpt-tiny-llama-lora-1xa10g",
           "litgpt-tiny-llama-qlora-1xa10g", "litgpt-stablelm-base-alpha-3b-qlora-1xa10g", "litgpt-phi-2-qlora-1xa10g"]
    for pid in ids:
        p = points[pid]
        assert resolve_model(p["model"]).source == "catalog", pid
        assert "not in the model catalog" not in p.get("why_not", ""), pid
        assert p.get("assumptions") and p.get("strategy") and p.get("checkpointing"), pid
        assert p["measured"]["value"] and not p.get("reference"), pid
    assert all(points[i].get("expressible", True) for i in ids)
    # lora_head: true in the config files: LoRA on the lm_head too
    head = ("litgpt-phi-2-lora", "litgpt-phi-2-qlora", "litgpt-tiny-llama-lora", "litgpt-tiny-llama-qlora")
    assert all("lm_head" in points[i]["lora_targets"] for i in ids if i.startswith(head))
    assert all(points[i]["qlora_quantizer"] == "lightning" for i in ids if "-qlora-" in i and i.startswith("litgpt"))


@pytest.mark.parametrize("size, name", [("1.1B", "llama-3.2-1b"), ("34B", "qwen2.5-32b"), ("30B", "qwen3-32b")])
def test_a_bare_size_never_picks_them(size, name):
    """``by_size: false``: TinyLlama (1.10B) and Yi-34B (34.39B) are nearer these sizes than the models a bare size
    resolved to before they were added; the size resolution keeps its reference models."""
    r = resolve_model(size)
    assert (r.name, r.source) == (name, "size")
    assert not any(m.name in NEW for m in [find_model(r.name)])
