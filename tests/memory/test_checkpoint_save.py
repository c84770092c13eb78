"""Checkpoint saves (issue 17, --checkpoint-save): what a consolidated save gathers into rank 0's CPU RAM and
onto each GPU, per engine, with expected bytes derived by hand from published parameter counts and the engines'
save paths (accelerate utils/dataclasses.py set_state_dict_type, utils/fsdp_utils.py; torch
distributed/fsdp/_state_dict_utils.py; DeepSpeed engine _zero3_consolidated_16bit_state_dict)."""

from __future__ import annotations

import pytest

from advisor.api import estimate
from advisor.catalog.models import resolve_model
from advisor.memory.bytes_per_param import state_bytes
from advisor.memory.checkpoint_save import (CHECKPOINT_SAVE_ITEM, FSDP_SAVE_GPU_ITEM, FSDP_SAVE_ITEM, consolidated_save,
                                            fsdp_save_gpu)
from advisor.param_count import count_parameters
from advisor.specs import StrategySpec, TrainingSpec

LLAMA31_8B = 8_030_261_248          # Meta's published parameter count of Llama 3.1 8B
FSDP8 = dict(gpus=8, gpu="a100-80g", strategy="fsdp-full", cpu_ram=1024)


def test_auto_is_what_dsadvise_renders():
    zero3, fsdp, zero2 = (StrategySpec.from_name(n, "none", "none") for n in ("zero3", "fsdp-full", "zero2"))
    auto, sharded, whole = (TrainingSpec(checkpoint_save=c) for c in ("auto", "sharded", "consolidated"))
    assert consolidated_save(auto, zero3) and not consolidated_save(auto, fsdp)
    assert not consolidated_save(sharded, zero3) and consolidated_save(whole, fsdp)
    assert not consolidated_save(whole, zero2)          # ZeRO-1/2 hold whole 16-bit parameters: nothing gathered


def test_fsdp_full_state_dict_holds_the_optimizer_state_on_rank_0():
    """Llama 3.1 8B, full fine-tuning under bf16 autocast, FSDP FULL_STATE_DICT: the checkpoint's optimizer state
    (AdamW, two fp32 moments: 8 bytes per parameter) is the larger of model (fp32: 4) and optimizer; rank 0 loaded
    the fp32 model before (4 bytes per parameter, cpu_ram_efficient_loading), so the save adds 4 bytes each."""
    sharded = estimate("llama-3.1-8b", checkpoint_save="sharded", **FSDP8)
    whole = estimate("llama-3.1-8b", checkpoint_save="consolidated", **FSDP8)
    assert whole.per_node_cpu.breakdown[FSDP_SAVE_ITEM] == LLAMA31_8B * (8 - 4)
    assert whole.per_node_cpu.total - sharded.per_node_cpu.total == LLAMA31_8B * 4
    assert FSDP_SAVE_ITEM not in sharded.per_node_cpu.breakdown
    # the default (as rendered: SHARDED_STATE_DICT) is said, with the flag that counts the other
    auto = estimate("llama-3.1-8b", **FSDP8)
    assert auto.per_node_cpu.total == sharded.per_node_cpu.total
    assert any("--checkpoint-save consolidated" in n for n in auto.notes)


def test_a_consolidated_save_that_does_not_fit_names_the_sharded_one():
    est = estimate("llama-3.1-8b", checkpoint_save="consolidated", **{**FSDP8, "cpu_ram": 64})
    assert not est.per_node_cpu.fits
    assert any("SHARDED_STATE_DICT" in n and "--checkpoint-save sharded" in n for n in est.notes)


def test_zero3_sharded_save_gathers_nothing():
    kw = dict(gpus=8, gpu="a100-80g", strategy="zero3", cpu_ram=1024)
    assert CHECKPOINT_SAVE_ITEM not in estimate("llama-2-70b", checkpoint_save="sharded", **kw).per_node_cpu.breakdown
    assert CHECKPOINT_SAVE_ITEM in estimate("llama-2-70b", **kw).per_node_cpu.breakdown


def test_fsdp_save_gathers_one_unit_in_full_precision_on_the_gpu():
    """Gemma 2B (vocabulary 256000, hidden 2048, tied embeddings): the root unit (embedding + final norm,
    524,290,048 parameters) is larger than a layer and is gathered in the sharded parameters' fp32."""
    arch = resolve_model("gemma-2b").architecture
    counts = count_parameters(arch)
    root = 256_000 * 2048 + 2048
    assert counts.embedding + counts.lm_head + counts.final == root
    t = TrainingSpec(checkpoint_save="consolidated", precision="bf16")
    fsdp = StrategySpec.from_name("fsdp-full", "none", "none")
    sb = state_bytes(t, fsdp)
    assert fsdp_save_gpu(arch, counts, counts.total, sb, t, fsdp, at_rest=10) == 10 + root * 4
    assert fsdp_save_gpu(arch, counts, counts.total, sb, t.model_copy(update={"checkpoint_save": "auto"}), fsdp,
                         10) == 0
    est = estimate("gemma-2b", checkpoint_save="consolidated", seq_len=128, checkpointing="full", **FSDP8)
    p = est.per_gpu
    assert p.total >= p.parameters + p.optimizer_states + p.buffers + root * 4 + p.breakdown["CUDA context"]
    assert sum(p.breakdown.values()) == p.total and p.breakdown.get(FSDP_SAVE_GPU_ITEM, 0) >= 0


@pytest.mark.parametrize("strategy, key, value", [
    ("fsdp-full", "fsdp_state_dict_type", "FULL_STATE_DICT"),
    ("zero3", "stage3_gather_16bit_weights_on_model_save", False),
])
def test_generate_renders_the_save_that_was_estimated(tmp_path, strategy, key, value):
    import json

    import yaml

    from advisor.cli import main

    save = "consolidated" if strategy.startswith("fsdp") else "sharded"
    out = tmp_path / "out"
    assert main(["generate", "--model", "llama-3.1-8b", "--gpus", "8", "--gpu", "a100-80g", "--strategy", strategy,
                 "--checkpoint-save", save, "--out", str(out)]) == 0
    if strategy.startswith("fsdp"):
        assert yaml.safe_load((out / "accelerate_config.yaml").read_text())["fsdp_config"][key] == value
    else:
        assert json.loads((out / "ds_config.json").read_text())["zero_optimization"][key] is value


# --- PEFT models under ZeRO-3 (session 10, helper R): what each save path gathers (advisor/memory/checkpoint_save.py)
LLAMA2_7B = 6_738_415_616                  # Meta's Llama-2-7B parameter count (untied, vocabulary 32000)
LLAMA2_7B_LINEARS = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)   # the decoder linears bitsandbytes quantizes
LLAMA2_7B_LORA16 = 39_976_960              # PEFT's print_trainable_parameters, r=16, all-linear, Llama-2-7B
Z3 = dict(gpus=8, gpu="a100-80g", strategy="zero3", cpu_ram=1024)


def _save_term(method, **kw):
    from advisor.memory.checkpoint_save import ADAPTERS_SAVE_ITEM, checkpoint_save_cpu

    model = resolve_model("llama-2-7b")
    counts = count_parameters(model.architecture)
    t = TrainingSpec(method=method, lora={"rank": 16, "target_modules": ["all-linear"]}, precision="bf16", **kw)
    z3 = StrategySpec.from_name("zero3", "none", "none")
    return checkpoint_save_cpu(model.architecture, counts, LLAMA2_7B_LORA16, state_bytes(t, z3), t, z3), \
        ADAPTERS_SAVE_ITEM


def test_zero3_qlora_whole_model_is_the_packed_4bit_base():
    """accelerate's get_state_dict of a QLoRA model under ZeRO-3: each Linear4bit weight is its packed 4-bit data
    (half a byte per element; the quant_state is no parameter), the embeddings, norms and lm_head bf16, the
    adapters bf16 (DeepSpeed casts a model not built under zero.Init) - not 2 bytes for every base element."""
    (item, held), _ = _save_term("qlora")
    assert item == CHECKPOINT_SAVE_ITEM
    assert held == LLAMA2_7B_LINEARS // 2 + (LLAMA2_7B - LLAMA2_7B_LINEARS) * 2 + LLAMA2_7B_LORA16 * 2


def test_zero3_lora_whole_model_holds_fp32_adapters():
    """LoRA on a zero.Init'ed base: the bf16 base plus PEFT's fp32 adapters (DeepSpeed 0.19.8 casts no parameter
    of a zero.Init model; measured in test_checkpoint_save_engine.py)."""
    (item, held), _ = _save_term("lora")
    assert (item, held) == (CHECKPOINT_SAVE_ITEM, LLAMA2_7B * 2 + LLAMA2_7B_LORA16 * 4)
    # transformers <= 4.42's PEFT (< 0.12) built the adapters in the base's bf16
    (item, held), _ = _save_term("lora", transformers_version="4.40")
    assert held == (LLAMA2_7B + LLAMA2_7B_LORA16) * 2


def test_zero3_peft_sharded_save_still_gathers_the_adapters_under_the_trainer_5():
    """transformers >= 5.0's Trainer calls _zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=True)
    for a PEFT model whatever stage3_gather_16bit_weights_on_model_save says; 4.x raises on the key and saves ZeRO
    shards only."""
    (item, held), adapters_item = _save_term("lora", checkpoint_save="sharded")
    assert (item, held) == (adapters_item, LLAMA2_7B_LORA16 * 4)
    assert _save_term("lora", checkpoint_save="sharded", transformers_version="4.57")[0] == ("", 0)
    assert _save_term("full", checkpoint_save="sharded")[0] == ("", 0)


def test_zero3_peft_notes_name_the_other_save_path():
    whole = estimate("llama-2-7b", method="lora", **Z3)
    assert whole.per_node_cpu.breakdown[CHECKPOINT_SAVE_ITEM] + \
        whole.per_node_cpu.breakdown["model loading (zero.Init, largest layer per process)"] == \
        LLAMA2_7B * 2 + LLAMA2_7B_LORA16 * 4
    assert any("HF Trainer of transformers >= 5.0" in n and "--checkpoint-save sharded" in n for n in whole.notes)
    old = estimate("llama-2-7b", method="lora", transformers_version="4.46", **Z3)
    assert any("transformers < 5.0 gathers a PEFT model whole" in n for n in old.notes)
    assert not any("checkpoint save:" in n for n in estimate("llama-2-7b", **Z3).notes)   # full fine-tuning


def test_fsdp2_full_state_dict_gathers_one_tensor_at_a_time():
    """FSDP2 get_model_state_dict(full_state_dict=True, cpu_offload=True) gathers DTensor by DTensor: Gemma 2B's
    largest module is its 256000 x 2048 embedding, gathered in the fp32 of the sharded parameters."""
    arch = resolve_model("gemma-2b").architecture
    counts = count_parameters(arch)
    assert counts.largest_module == 256_000 * 2048
    t = TrainingSpec(checkpoint_save="consolidated", precision="bf16")
    fsdp2 = StrategySpec.from_name("fsdp-full", "none", "none").model_copy(update={"fsdp_version": 2})
    assert fsdp_save_gpu(arch, counts, counts.total, state_bytes(t, fsdp2), t, fsdp2, 10) == 10 + 256_000 * 2048 * 4


@pytest.mark.parametrize("save", ["sharded", "consolidated"])
def test_check_reads_the_peft_save_as_estimated(tmp_path, capsys, save):
    """`check` of a generated ZeRO-3 LoRA config reads stage3_gather_16bit_weights_on_model_save back into
    --checkpoint-save and gives rank 0's node the CPU bytes the estimate gives (adapters only, or the whole model)."""
    import json

    from advisor.cli import main

    common = ["--model", "llama-2-7b", "--gpus", "8", "--gpu", "a100-80g", "--method", "lora", "--cpu-ram", "256"]
    assert main(["generate", *common, "--strategy", "zero3", "--checkpoint-save", save, "--out", str(tmp_path / "o"),
                 "--no-engine-check"]) == 0
    capsys.readouterr()
    main(["check", str(tmp_path / "o" / "ds_config.json"), *common, "--json"])
    said = json.loads(capsys.readouterr().out)["estimate"]
    assert f"--checkpoint-save {save}" in said["command"]
    est = estimate("llama-2-7b", method="lora", checkpoint_save=save, **{**Z3, "cpu_ram": 256})
    assert said["per_node_cpu_bytes"] == est.per_node_cpu.total


def test_fsdp_peft_full_state_dict_is_the_whole_base_plus_the_adapters():
    """FSDP FULL_STATE_DICT of a PEFT model (the Trainer's save_model: accelerate get_state_dict, filtered by PEFT
    only when it writes): Llama-2-7B LoRA r=16 under bf16 autocast holds the bf16 base and PEFT's fp32 adapters;
    QLoRA the NF4 decoder linears (NF4 with double quantization: 4 + 8/64 + 32/(64*256) bits) and the bf16 rest.
    (Before session 10 the adapters were taken out of the base count and QLoRA's rest counted as NF4.)"""
    from advisor.memory.checkpoint_save import checkpoint_save_cpu

    model = resolve_model("llama-2-7b")
    counts = count_parameters(model.architecture)
    fsdp = StrategySpec.from_name("fsdp-full", "none", "none")
    nf4 = (4 + 8 / 64 + 32 / (64 * 256)) / 8
    for method, whole in (("lora", LLAMA2_7B * 2 + LLAMA2_7B_LORA16 * 4),
                          ("qlora", LLAMA2_7B_LINEARS * nf4 + (LLAMA2_7B - LLAMA2_7B_LINEARS) * 2
                           + LLAMA2_7B_LORA16 * 4)):
        t = TrainingSpec(method=method, lora={"rank": 16, "target_modules": ["all-linear"]}, precision="bf16",
                         checkpoint_save="consolidated")
        item, held = checkpoint_save_cpu(model.architecture, counts, LLAMA2_7B_LORA16, state_bytes(t, fsdp), t, fsdp)
        assert (item, held) == (FSDP_SAVE_ITEM, int(whole)), method
