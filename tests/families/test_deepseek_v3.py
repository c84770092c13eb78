"""DeepSeek-V3's replay (advisor/families/deepseek_v3.py) held against the tracer byte for byte at reduced width:
multi-head latent attention, a dense first layer then MoE layers (sigmoid group-limited router, grouped_mm
experts, shared experts), under the settings the other replayed families are checked on."""

from __future__ import annotations

import pytest

from advisor.hf_config import architecture_from_hf_config
from advisor.memory.activations import activation_memory
from advisor.param_count import lora_trainable_parameters
from advisor.specs import LoraSpec, TrainingSpec

# 4 layers: 1 dense (first_k_dense_replace) + 3 MoE; 8 experts in 4 groups, 2 groups kept, top-3
DS = {"model_type": "deepseek_v3", "hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 32,
      "num_hidden_layers": 4, "first_k_dense_replace": 1, "num_attention_heads": 4, "num_key_value_heads": 4,
      "n_routed_experts": 8, "num_experts_per_tok": 3, "n_group": 4, "topk_group": 2, "n_shared_experts": 1,
      "kv_lora_rank": 16, "q_lora_rank": 32, "qk_rope_head_dim": 8, "qk_nope_head_dim": 16, "v_head_dim": 16,
      "vocab_size": 256}
SEQ = 40            # not a multiple of 32: the memory-efficient kernel's logsumexp rows are padded
ATTENTION_LORA = ("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj")


def test_layers_are_dense_then_moe():
    arch = architecture_from_hf_config(DS)
    assert arch.layer_kinds == ("dense", "moe", "moe", "moe") and arch.hybrid
    assert (arch.moe_groups, arch.moe_topk_groups, arch.rope_interleave) == (4, 2, True)
    assert not architecture_from_hf_config(dict(DS, first_k_dense_replace=0)).hybrid


@pytest.mark.slow
@pytest.mark.parametrize("cfg, mode, attention, method, batch, targets", [
    (DS, "fp32", "sdpa", "full", 1, ATTENTION_LORA),
    (DS, "autocast-bf16", "eager", "lora", 2, ATTENTION_LORA),
    # all-linear: PEFT's ParamWrapper adapters on the 3-D expert weights and the router
    (dict(DS, q_lora_rank=None, rope_interleave=False), "half-bf16", "sdpa", "lora", 1, ("all-linear",)),
])
def test_deepseek_v3_replay_equals_the_trace(cfg, mode, attention, method, batch, targets):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from advisor.trace import TraceSettings, trace_model

    arch = architecture_from_hf_config(cfg)
    training = TrainingSpec(seq_len=SEQ, micro_batch_size=batch, attention=attention, method=method,
                            precision="fp32" if mode == "fp32" else "bf16",
                            lora=LoraSpec(target_modules=targets))
    replay = activation_memory(arch, training, mode)
    assert "outside_layers" not in replay.breakdown                   # replayed, not traced
    traced = trace_model(cfg, TraceSettings(seq_len=SEQ, batch=batch, mode=mode, attention=attention, method=method,
                                            lora_targets=targets), use_cache=False)
    assert len(set(traced.saved_per_layer[1:])) == 1          # every MoE layer alike; the dense one is layer 0
    # fp32 weights take transformers' fallback grouped_mm op, which keeps its int32 expert offsets as a ctx
    # attribute that saved_tensors_hooks cannot see; the replay counts them (as bf16's torch._grouped_mm saves)
    offsets = 0 if mode == "half-bf16" else 4 * arch.num_experts * arch.moe_layers
    assert replay.activations - traced.activations == offsets


@pytest.mark.parametrize("model_type, extra", [
    ("qwen3_moe", {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "head_dim": 16}),
    ("mixtral", {"num_local_experts": 4, "num_experts_per_tok": 2}),
    ("deepseek_v3", {k: v for k, v in DS.items() if k != "model_type"}),
])
def test_moe_replays_cover_attention_and_all_linear_lora(model_type, extra):
    """MLP names alone as LoRA targets (PEFT adapts only the experts) are traced for every MoE family: the
    DeepSeek-V3 replay of down_proj alone was 65 % short of the trace (layers before the first adapter get no
    gradient, which the replay's layer plan does not follow)."""
    from advisor.families import family

    cfg = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
           "num_hidden_layers": 3, "vocab_size": 256, **extra, "model_type": model_type}
    arch = architecture_from_hf_config(cfg)
    covers = family(model_type).replay_covers

    def lora(*targets):
        return TrainingSpec(seq_len=SEQ, method="lora", lora=LoraSpec(target_modules=targets))

    attention = ("q_a_proj", "kv_b_proj", "o_proj") if model_type == "deepseek_v3" else ("q_proj", "v_proj", "o_proj")
    assert covers(arch, TrainingSpec(seq_len=SEQ)) and covers(arch, lora(*attention)) and covers(arch, lora("all-linear"))
    assert not covers(arch, lora("q_proj", "down_proj")) and not covers(arch, lora("gate_proj", "up_proj"))


def test_full_checkpointing_keeps_one_causal_mask():
    arch = architecture_from_hf_config(DS)
    est = activation_memory(arch, TrainingSpec(seq_len=SEQ, attention="eager", precision="fp32",
                                               activation_checkpointing="full"), "fp32")
    assert est.breakdown["attention_mask"] == SEQ * SEQ * 4            # dense and MoE layers share it


def _peft_adapted(cfg: dict, targets) -> tuple[set[str], int]:
    """What PEFT itself adapts on the real transformers model of ``cfg`` (built with from_config): the
    adapted modules' names and the trainable elements."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=list(targets), task_type="CAUSAL_LM"))
    adapted = {n.split(".lora_")[0].removeprefix("base_model.model.") for n, _ in model.named_parameters()
               if ".lora_" in n}
    return adapted, sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("cfg", [DS, dict(DS, num_hidden_layers=5, first_k_dense_replace=3)])
def test_lora_on_gate_and_up_traces_what_peft_adapts(cfg):
    """--lora-targets gate_proj,up_proj on DeepSeek-V3: PEFT 0.21 maps gate_proj/up_proj to the routed experts'
    fused gate_up_proj (target_parameters; peft/utils/transformers_weight_conversion.py _convert_peft_config_moe)
    and adapts no nn.Linear, neither the dense layers' MLP nor the shared experts. The tracer's prefix models
    (the first k layers) may hold only dense layers, where PEFT then finds no target at all: that prefix has no
    adapter, it is not an error (the estimate was refused with PEFT's "No `target_modules` passed ...")."""
    pytest.importorskip("peft")
    from advisor.trace import TraceSettings, trace_model
    from advisor.trace.tracer import trace_parameters

    targets = ("gate_proj", "up_proj")
    adapted, trainable = _peft_adapted(cfg, targets)
    moe_layers = cfg["num_hidden_layers"] - cfg["first_k_dense_replace"]
    assert adapted == {f"model.layers.{i}.mlp.experts" for i in range(cfg["first_k_dense_replace"],
                                                                        cfg["num_hidden_layers"])}
    settings = TraceSettings(seq_len=SEQ, mode="half-bf16", method="lora", lora_rank=8, lora_targets=targets)
    assert trace_parameters(cfg, settings, use_cache=False).trainable == trainable
    # the catalog's arithmetic (advisor.param_count) counts what PEFT builds: the fused gate_up_proj at rank 2r on
    # the routed experts, no dense or shared-expert adapter (it counted per-expert linears and the dense MLPs)
    assert lora_trainable_parameters(architecture_from_hf_config(cfg), 8, targets) == trainable
    traced = trace_model(cfg, settings, use_cache=False)
    dense = cfg["first_k_dense_replace"]
    assert len(traced.saved_per_layer) == cfg["num_hidden_layers"] and moe_layers >= 1
    assert traced.activations > 0 and traced.saved_fixed > 0
    # the first adapted layer's input needs no gradient: it saves less than the MoE layers above it, all alike
    assert traced.saved_per_layer[dense] < traced.saved_per_layer[dense + 1]
    assert len(set(traced.saved_per_layer[dense + 1:])) == 1


@pytest.mark.parametrize("targets", [("down_proj", "o_proj"), ("gate_proj", "up_proj", "down_proj", "kv_b_proj")])
def test_lora_on_expert_projections_counts_what_peft_builds(targets):
    pytest.importorskip("peft")
    _, trainable = _peft_adapted(DS, targets)
    assert lora_trainable_parameters(architecture_from_hf_config(DS), 8, targets) == trainable


def test_gate_proj_without_up_proj_is_refused_as_peft_refuses_it():
    pytest.importorskip("peft")
    from advisor.errors import InputError

    with pytest.raises(ValueError, match="without also targeting up_proj"):
        _peft_adapted(DS, ("gate_proj",))
    with pytest.raises(InputError, match="without also targeting up_proj"):
        lora_trainable_parameters(architecture_from_hf_config(DS), 8, ("gate_proj",))
