"""Parameter counts against the real transformers models, built on the meta device (no weights, no hub).

Every catalog entry is built with ``AutoModelForCausalLM.from_config`` and its parameters are counted
with torch; the arithmetic in :mod:`advisor.param_count` must match exactly, part by part.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from advisor.datafiles import load_data  # noqa: E402
from advisor.architecture import Architecture  # noqa: E402
from advisor.errors import InputError  # noqa: E402
from advisor.hf_config import architecture_from_hf_config  # noqa: E402
from advisor.param_count import (  # noqa: E402
    count_parameters,
    linear_shapes,
    lora_target_names,
    lora_trainable_parameters,
)

CATALOG = {entry["name"]: entry["config"] for entry in load_data("models.yaml")["models"]}

# Module path inside a decoder layer → normalized name (the mapping param_count documents).
NORMALIZED = {
    "self_attn.q_proj": "q_proj", "self_attn.k_proj": "k_proj", "self_attn.v_proj": "v_proj",
    "self_attn.o_proj": "o_proj", "self_attn.out_proj": "o_proj", "self_attn.qkv_proj": "qkv_proj",
    "self_attn.dense": "o_proj", "mlp.fc1": "fc1", "mlp.fc2": "fc2",   # Phi (issue 17, C)
    "attn.c_attn": "qkv_proj", "attn.c_proj": "o_proj", "mlp.c_fc": "fc1", "mlp.c_proj": "fc2",
    "self_attention.query_key_value": "qkv_proj", "self_attention.dense": "o_proj",
    "attention.query_key_value": "qkv_proj", "attention.dense": "o_proj",
    "mlp.dense_h_to_4h": "fc1", "mlp.dense_4h_to_h": "fc2", "fc1": "fc1", "fc2": "fc2",
    "mlp.gate_proj": "gate_proj", "mlp.up_proj": "up_proj", "mlp.down_proj": "down_proj",
    "mlp.gate_up_proj": "gate_up_proj",
    # DeepSeek-V3 multi-head latent attention and shared experts
    "self_attn.q_a_proj": "q_a_proj", "self_attn.q_b_proj": "q_b_proj",
    "self_attn.kv_a_proj_with_mqa": "kv_a_proj_with_mqa", "self_attn.kv_b_proj": "kv_b_proj",
    "mlp.shared_experts.gate_proj": "shared_gate_proj", "mlp.shared_experts.up_proj": "shared_up_proj",
    "mlp.shared_experts.down_proj": "shared_down_proj",
    # Llama-4 (issue 14): feed_forward is a dense MLP or a Llama4TextMoe (router, experts, shared_expert)
    "feed_forward.gate_proj": "gate_proj", "feed_forward.up_proj": "up_proj", "feed_forward.down_proj": "down_proj",
    "feed_forward.router": "router", "feed_forward.shared_expert.gate_proj": "shared_gate_proj",
    "feed_forward.shared_expert.up_proj": "shared_up_proj", "feed_forward.shared_expert.down_proj": "shared_down_proj",
}


def build(cfg: dict):
    """The transformers causal LM for ``cfg`` on the meta device."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = AutoConfig.for_model(**cfg)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)


@lru_cache(maxsize=None)
def catalog_model(name: str):
    return build(CATALOG[name])


def decoder_layers(model, num_layers: int):
    """The ModuleList holding the decoder layers, found by length (works for every family)."""
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == num_layers:
            return module
    raise AssertionError("no decoder layer list found")


def numel(params) -> int:
    return sum(p.numel() for p in params)


def real_linear_shapes(layer) -> dict[str, tuple[int, int, int]]:
    """(in, out, copies) of every linear-like module of one real decoder layer, by normalized name."""
    from transformers.pytorch_utils import Conv1D

    shapes: dict[str, tuple[int, int, int]] = {}
    for path, module in layer.named_modules():
        if isinstance(module, torch.nn.Linear) and path.endswith("router"):   # Llama4Router is an nn.Linear
            shapes["router"] = (module.in_features, module.out_features, 1)
        elif isinstance(module, torch.nn.Linear):
            shapes[NORMALIZED[path]] = (module.in_features, module.out_features, 1)
        elif isinstance(module, Conv1D):      # GPT-2: weight is (in, out)
            shapes[NORMALIZED[path]] = (module.weight.shape[0], module.weight.shape[1], 1)
        elif path.endswith("experts") and hasattr(module, "gate_up_proj"):   # transformers 5 fused experts
            # GPT-OSS and Llama-4 (Llama4TextExperts, bmm): gate_up_proj [E, h, 2i], down_proj [E, i, h]
            if getattr(module, "is_transposed", False) or type(module).__name__ == "Llama4TextExperts":
                experts, hidden, two_inner = module.gate_up_proj.shape
                shapes["down_proj"] = (module.down_proj.shape[1], module.down_proj.shape[2], experts)
            else:                                         # Mixtral: gate_up_proj [E, 2i, h], down_proj [E, h, i]
                experts, two_inner, hidden = module.gate_up_proj.shape
                shapes["down_proj"] = (module.down_proj.shape[2], module.down_proj.shape[1], experts)
            shapes["gate_proj"] = shapes["up_proj"] = (hidden, two_inner // 2, experts)
        elif path.endswith(("mlp.gate", "mlp.router")) and hasattr(module, "weight"):   # MoE router
            shapes["router"] = (module.weight.shape[1], module.weight.shape[0], 1)
    return shapes


def real_parts(model, num_layers: int) -> dict[str, int]:
    """embedding / lm_head / per_layer / final counted from the real modules."""
    layers = decoder_layers(model, num_layers)
    in_layers = {id(p) for p in layers.parameters()}
    out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
    tied = out_emb.weight is in_emb.weight
    head = {id(p) for p in out_emb.parameters()}
    embedding = final = 0
    for name, p in model.named_parameters():   # named_parameters() lists a tied weight once
        if id(p) in in_layers or (id(p) in head and not tied):
            continue
        owner = name.rsplit(".", 2)[-2]
        if owner in ("norm", "ln_f", "final_layer_norm", "final_layernorm", "project_out"):   # Phi: final_layernorm
            final += p.numel()
        else:
            embedding += p.numel()
    return {"embedding": embedding, "lm_head": 0 if tied else numel(out_emb.parameters()),
            "per_layer": max(numel(layer.parameters()) for layer in layers), "final": final}   # the largest layer


def largest_leaf(model, experts: int) -> int:
    """Largest set of a module's own (direct) parameters: what ZeRO-3 gathers for one module's compute.

    In transformers 5 a MoE layer's experts are one module with fused [num_experts, ...] tensors."""
    del experts
    return max(numel(module.parameters(recurse=False)) for _, module in model.named_modules())


def names(test):
    """Parametrize over every catalog entry; these build real (meta) models, hence ``slow``."""
    return pytest.mark.slow(pytest.mark.parametrize("name", sorted(CATALOG))(test))


@names
def test_total_matches_transformers_exactly(name):
    arch = architecture_from_hf_config(CATALOG[name], source=name)
    model = catalog_model(name)
    assert count_parameters(arch).total == numel(model.parameters())


@names
def test_parts_match_real_modules(name):
    arch = architecture_from_hf_config(CATALOG[name], source=name)
    counts = count_parameters(arch)
    model = catalog_model(name)
    assert real_parts(model, arch.num_layers) == {
        "embedding": counts.embedding, "lm_head": counts.lm_head,
        "per_layer": counts.per_layer, "final": counts.final}
    assert counts.layer_gathered == counts.per_layer
    assert counts.largest_module == largest_leaf(model, arch.num_experts)


@names
def test_linear_shapes_match_layer_zero(name):
    """Layer 0 (and, for an MoE model with leading dense layers, the first MoE layer too)."""
    arch = architecture_from_hf_config(CATALOG[name], source=name)
    layers = decoder_layers(catalog_model(name), arch.num_layers)
    if arch.is_moe and arch.dense_layers and arch.layer_pattern:   # Llama-4: dense and MoE layers interleave
        kinds = arch.layer_kinds
        dense = next(i for i, k in enumerate(kinds) if k.endswith("/dense"))
        moe = next(i for i, k in enumerate(kinds) if not k.endswith("/dense"))
        assert linear_shapes(arch, dense=True) == real_linear_shapes(layers[dense])
        assert linear_shapes(arch) == real_linear_shapes(layers[moe])
    elif arch.is_moe and arch.dense_layers:
        assert linear_shapes(arch, dense=True) == real_linear_shapes(layers[0])
        assert linear_shapes(arch) == real_linear_shapes(layers[arch.dense_layers])
    else:
        assert linear_shapes(arch) == real_linear_shapes(layers[0])


# MoE models whose experts PEFT 0.21 adapts through ParamWrapper on the 3-D weights (and the router's weight),
# leaving the MLP's nn.Linear modules alone (measured on the meta-device PEFT build: tests/families/test_moe_lora.py)
_PEFT_PARAM_MOE = ("MixtralForCausalLM", "Qwen3MoeForCausalLM", "DeepseekV3ForCausalLM")


def _peft_param_moe_layer(layer, rank: int) -> int:
    """PEFT's all-linear adapters of one decoder layer of a ``_PEFT_PARAM_MOE`` model, from its real modules:
    nn.Linear outside the MLP r·(in + out); a 3-D expert weight (E, out, in) lora_A (E·r, in) + lora_B (out, E·r),
    the fused gate_up_proj at rank 2r; the router's 2-D weight r·(in + out)."""
    total = 0
    for path, module in layer.named_modules():
        if isinstance(module, torch.nn.Linear) and not path.startswith("mlp"):
            total += rank * (module.in_features + module.out_features)
        elif path.endswith("experts") and hasattr(module, "gate_up_proj"):
            experts, two_inner, hidden = module.gate_up_proj.shape
            total += experts * 2 * rank * (two_inner + hidden)
            total += experts * rank * (module.down_proj.shape[1] + module.down_proj.shape[2])
        elif path.endswith("mlp.gate") and hasattr(module, "weight") and module.weight.dim() == 2:
            total += rank * sum(module.weight.shape)
    return total


def hand_lora_all_linear(model, num_layers: int, rank: int, exclude: tuple[str, ...] = ()) -> int:
    """PEFT's all-linear by hand: every linear of every layer plus linears outside them, minus the lm_head (and
    minus ``exclude``: LoraConfig(exclude_modules=...), Llama-4's router, whose adapter fails in PEFT)."""
    layers = decoder_layers(model, num_layers)
    if type(model).__name__ in _PEFT_PARAM_MOE:
        return sum(_peft_param_moe_layer(layer, rank) for layer in layers)
    total = sum(rank * (i + o) * copies
                for layer in layers for name, (i, o, copies) in real_linear_shapes(layer).items() if name not in exclude)
    inside = {id(m) for m in layers.modules()}
    head = model.get_output_embeddings()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and id(module) not in inside and module is not head:
            total += rank * (module.in_features + module.out_features)
    return total


@names
def test_lora_all_linear_matches_hand_count_from_real_shapes(name):
    arch = architecture_from_hf_config(CATALOG[name], source=name)
    from advisor.param_count import all_linear_excludes

    expected = hand_lora_all_linear(catalog_model(name), arch.num_layers, 16, all_linear_excludes(arch))
    assert lora_trainable_parameters(arch, 16, ("all-linear",)) == expected


@pytest.mark.slow
def test_active_parameters_of_mixtral_from_real_experts():
    arch = architecture_from_hf_config(CATALOG["mixtral-8x7b"])
    model = catalog_model("mixtral-8x7b")
    experts = decoder_layers(model, arch.num_layers)[0].mlp.experts
    one_expert = numel(experts.parameters()) // arch.num_experts
    idle = arch.num_experts - arch.experts_per_token
    counts = count_parameters(arch)
    assert counts.active_per_token == numel(model.parameters()) - arch.num_layers * idle * one_expert
    assert counts.active_per_token == 12_879_925_248   # Mixtral's published "12.9B active"


@pytest.mark.parametrize("name, total", [
    ("gpt2", 124_439_808), ("llama-2-7b", 6_738_415_616), ("mistral-7b-v0.1", 7_241_732_096),
    ("llama-3-8b", 8_030_261_248), ("mixtral-8x7b", 46_702_792_704), ("qwen2.5-7b", 7_615_616_512),
    # Mistral-7B-v0.2 (mistralai/Mistral-7B-Instruct-v0.2 config.json) changes rope_theta, the window and the
    # context of v0.1, not a shape (vocab 32000): v0.1's count; v0.3's 32768 vocab would add 768 x 4096 x 2
    ("mistral-7b-v0.2", 7_241_732_096),
])
def test_published_totals(name, total):
    assert count_parameters(architecture_from_hf_config(CATALOG[name])).total == total


def test_dense_active_equals_total():
    counts = count_parameters(architecture_from_hf_config(CATALOG["llama-2-7b"]))
    assert counts.active_per_token == counts.total


# Configs that are not in the catalog but take other branches: defaults, biases, norms, MoE, projections.
VARIANTS = {
    "llama-bias-no-kv-key": dict(model_type="llama", hidden_size=96, intermediate_size=160, num_hidden_layers=2,
                                 num_attention_heads=6, vocab_size=300, attention_bias=True, mlp_bias=True),
    "llama-head-dim": dict(model_type="llama", hidden_size=96, intermediate_size=160, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=40, vocab_size=300,
                           tie_word_embeddings=True),
    "mistral-kv-default": dict(model_type="mistral", hidden_size=128, intermediate_size=160, num_hidden_layers=2,
                               num_attention_heads=16, vocab_size=300),
    "mixtral-4x": dict(model_type="mixtral", hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=300, num_local_experts=4,
                       num_experts_per_tok=1),
    "qwen2-tied": dict(model_type="qwen2", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=300, tie_word_embeddings=True),
    "qwen3-defaults": dict(model_type="qwen3", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=4, vocab_size=300, attention_bias=True),
    "gemma-default-head-dim": dict(model_type="gemma", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=1, vocab_size=300),
    "gemma2-untied": dict(model_type="gemma2", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=300,
                          tie_word_embeddings=False),
    "phi3-gqa": dict(model_type="phi3", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                     num_attention_heads=8, num_key_value_heads=2, vocab_size=300, pad_token_id=None),
    "gpt2-n-inner": dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, n_inner=100, n_positions=77,
                         vocab_size=300),
    "opt-no-bias-no-affine": dict(model_type="opt", hidden_size=64, ffn_dim=96, num_hidden_layers=2,
                                  num_attention_heads=4, vocab_size=300, enable_bias=False,
                                  layer_norm_elementwise_affine=False, max_position_embeddings=50),
    "opt-proj-untied": dict(model_type="opt", hidden_size=64, ffn_dim=96, num_hidden_layers=2,
                            num_attention_heads=4, vocab_size=300, word_embed_proj_dim=32,
                            tie_word_embeddings=False),
    "falcon-sequential-bias": dict(model_type="falcon", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   vocab_size=300, parallel_attn=False, bias=True, multi_query=False),
    "falcon-new-one-ln": dict(model_type="falcon", hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                              num_kv_heads=2, vocab_size=300, new_decoder_architecture=True,
                              num_ln_in_parallel_attn=1, ffn_hidden_size=100, tie_word_embeddings=False),
    "bloom-untied": dict(model_type="bloom", hidden_size=64, n_layer=2, n_head=4, vocab_size=300,
                         tie_word_embeddings=False),
    "neox-no-attn-bias-tied": dict(model_type="gpt_neox", hidden_size=64, intermediate_size=96,
                                   num_hidden_layers=2, num_attention_heads=4, vocab_size=300,
                                   attention_bias=False, tie_word_embeddings=True),
}


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_configs_match_transformers(variant):
    cfg = VARIANTS[variant]
    arch = architecture_from_hf_config(cfg, source=variant)
    model = build(cfg)
    counts = count_parameters(arch)
    assert counts.total == numel(model.parameters())
    assert real_parts(model, arch.num_layers) == {
        "embedding": counts.embedding, "lm_head": counts.lm_head,
        "per_layer": counts.per_layer, "final": counts.final}
    assert linear_shapes(arch) == real_linear_shapes(decoder_layers(model, arch.num_layers)[0])
    assert lora_trainable_parameters(arch, 4, ("all-linear",)) == hand_lora_all_linear(model, arch.num_layers, 4)


# ---------------------------------------------------------------- LoRA

def _arch(name: str) -> Architecture:
    return architecture_from_hf_config(CATALOG[name], source=name)


def test_lora_q_v_on_llama_by_hand():
    arch = _arch("llama-2-7b")   # q and v: 4096 → 4096, rank 8, 32 layers
    assert lora_trainable_parameters(arch, 8, ("q_proj", "v_proj")) == 2 * 8 * (4096 + 4096) * 32


def test_lora_mixtral_experts_count_every_expert():
    arch = _arch("mixtral-8x7b")
    per_expert = 16 * (4096 + 14336)
    assert lora_trainable_parameters(arch, 16, ("gate_proj",)) == per_expert * 8 * 32
    # Mixtral's own names are what PEFT 0.21 converts to transformers 5's fused experts (param_count
    # _PEFT_MOE_CONVERTED): w1 + w3 one gate_up_proj adapter at rank 2r per expert, w1 alone refused as PEFT does
    assert lora_trainable_parameters(arch, 16, ("w1", "w3")) == 8 * 2 * 16 * (4096 + 2 * 14336) * 32
    with pytest.raises(InputError, match="without also targeting w3"):
        lora_trainable_parameters(arch, 16, ("w1",))


def test_lora_native_names_map_to_normalized():
    gpt2 = _arch("gpt2")
    assert lora_trainable_parameters(gpt2, 4, ("c_attn",)) == lora_trainable_parameters(gpt2, 4, ("qkv_proj",))
    assert lora_trainable_parameters(gpt2, 4, ("c_proj",)) == lora_trainable_parameters(gpt2, 4, ("o_proj", "fc2"))
    falcon = _arch("falcon-7b")
    assert (lora_trainable_parameters(falcon, 4, ("query_key_value", "dense"))
            == lora_trainable_parameters(falcon, 4, ("qkv_proj", "o_proj")))


def test_lora_duplicates_count_once():
    arch = _arch("qwen2.5-0.5b")
    assert (lora_trainable_parameters(arch, 8, ("q_proj", "q_proj", "all-linear"))
            == lora_trainable_parameters(arch, 8, ("all-linear",)))


def test_lora_unknown_target_suggests():
    with pytest.raises(InputError, match=r"q_prj.*did you mean q_proj") as info:
        lora_trainable_parameters(_arch("llama-2-7b"), 8, ("q_prj",))
    assert info.value.field == "lora.target_modules"


def test_lora_target_of_another_family_is_rejected():
    with pytest.raises(InputError, match="not a linear layer of gpt2"):
        lora_trainable_parameters(_arch("gpt2"), 8, ("q_proj",))


@pytest.mark.parametrize("rank", [0, -1, 2.5, True])
def test_lora_bad_rank(rank):
    with pytest.raises(InputError, match="rank"):
        lora_trainable_parameters(_arch("gpt2"), rank, ("all-linear",))


def test_lora_opt_projections():
    arch = _arch("opt-350m")   # project_in 512→1024 and project_out 1024→512 sit outside the layers
    assert lora_trainable_parameters(arch, 8, ("project_in",)) == 8 * (512 + 1024)
    assert (lora_trainable_parameters(arch, 8, ("all-linear",))
            == lora_trainable_parameters(arch, 8, ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"))
            + 2 * 8 * (512 + 1024))
    with pytest.raises(InputError, match="project_in"):
        lora_trainable_parameters(_arch("opt-1.3b"), 8, ("project_in",))


def test_lora_target_names_lists_all_linear():
    assert "all-linear" in lora_target_names(_arch("phi-3-mini-4k"))
    assert {"qkv_proj", "gate_up_proj"} <= set(lora_target_names(_arch("phi-3-mini-4k")))


# ---------------------------------------------------------------- pure arithmetic on hand-built shapes

def test_qk_norm_adds_two_head_dim_vectors_per_layer():
    base = _arch("llama-3-8b")
    with_norm = base.model_copy(update={"qk_norm": True})
    assert count_parameters(with_norm).total - count_parameters(base).total == 2 * 128 * 32


def test_largest_module_is_embedding_for_big_vocab():
    counts = count_parameters(_arch("gemma-2-2b"))
    assert counts.largest_module == 256000 * 2304


def test_param_count_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; from advisor.param_count import count_parameters; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
