"""Framework files: parsed by each framework's own parser (LLaMA-Factory and axolotl where they install; CI has
their documented keys only, see advisor/data/framework_keys.json), carrying the estimate's settings in the
framework's own keys, and refusing what a framework cannot express."""

from __future__ import annotations

import yaml
import pytest

from advisor.errors import InputError
from advisor.render.frameworks.validate import importable, validate_framework_files
from advisor.render.validate import StepStatus

from .conftest import FRAMEWORK_SCENARIOS, FRAMEWORKS, plan_scenario

CONFIG = {"llamafactory": "llamafactory_train.yaml", "hf-trainer": "hf_trainer_args.yaml", "trl": "trl_sft.yaml",
          "axolotl": "axolotl.yaml"}
# framework -> (micro-batch key, accumulation key, sequence-length key or (file, key))
BATCH_KEYS = {"llamafactory": ("per_device_train_batch_size", "gradient_accumulation_steps", "cutoff_len"),
              "hf-trainer": ("per_device_train_batch_size", "gradient_accumulation_steps", "max_seq_length"),
              "trl": ("per_device_train_batch_size", "gradient_accumulation_steps", "max_length"),
              "axolotl": ("micro_batch_size", "gradient_accumulation_steps", "sequence_len")}


def _load(files, framework):
    data = yaml.safe_load(files[CONFIG[framework]])
    if framework == "hf-trainer":
        data = {**data, **yaml.safe_load(files["hf_model_args.yaml"])}
    return data


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("scenario", list(FRAMEWORK_SCENARIOS))
def test_framework_parser_accepts(framework_rendered, scenario, framework):
    files = framework_rendered[(scenario, framework)][5]
    (step,) = validate_framework_files(files, framework)
    assert step.status == StepStatus.PASS, [f.line() for f in step.findings]
    assert step.detail.startswith("documented keys only") == (importable(framework) is not None), step.detail


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("scenario", list(FRAMEWORK_SCENARIOS))
def test_framework_file_carries_the_estimate(framework_rendered, scenario, framework):
    model, hw, training, strategy, gas, files = framework_rendered[(scenario, framework)]
    d = _load(files, framework)
    micro, acc, seq = BATCH_KEYS[framework]
    assert (d[micro], d[acc], d[seq]) == (training.micro_batch_size, gas, training.seq_len)
    assert training.micro_batch_size * gas * hw.world_size == (training.global_batch_size or
                                                               training.micro_batch_size * hw.world_size)
    ckpt = training.activation_checkpointing == "full"
    if strategy.backend == "fsdp":       # FSDP checkpoints the wrapped layers: the accelerate YAML / fsdp_config say
        if framework in ("hf-trainer", "trl"):
            assert d["fsdp_config"]["activation_checkpointing"] is ckpt
        elif framework == "axolotl":
            assert d["fsdp_config"]["activation_checkpointing"] is ckpt
        else:
            assert yaml.safe_load(files["accelerate_config.yaml"])["fsdp_config"]["fsdp_activation_checkpointing"] is ckpt
    elif framework == "llamafactory":
        assert d["disable_gradient_checkpointing"] is (not ckpt)
    else:
        assert d["gradient_checkpointing"] is ckpt
    liger = training.loss == "fused-linear"
    assert {"llamafactory": d.get("enable_liger_kernel"), "hf-trainer": d.get("use_liger_kernel"),
            "trl": d.get("use_liger_kernel"),
            "axolotl": d.get("liger_fused_linear_cross_entropy", False)}[framework] is liger
    rank_key = {"llamafactory": "lora_rank", "trl": "lora_r", "axolotl": "lora_r"}.get(framework)
    if training.method in ("lora", "qlora"):
        rank = d["lora_config"]["r"] if framework == "hf-trainer" else d[rank_key]
        assert rank == training.lora.rank
        targets = {"llamafactory": lambda: d["lora_target"].split(","),
                   "hf-trainer": lambda: d["lora_config"]["target_modules"],
                   "trl": lambda: d["lora_target_modules"],
                   "axolotl": lambda: d.get("lora_target_modules") or ["all-linear"]}[framework]()
        want = list(training.lora.target_modules)
        assert (["all-linear"] if targets in (["all"], "all-linear") else list(targets)) == want
    if training.method == "qlora":
        four_bit = {"llamafactory": lambda: d["quantization_bit"] == 4,
                    "hf-trainer": lambda: d["quantization_config"]["load_in_4bit"] is True,
                    "trl": lambda: d["load_in_4bit"] is True, "axolotl": lambda: d["load_in_4bit"] is True}[framework]
        assert four_bit()
    if strategy.backend == "deepspeed":
        assert d["deepspeed"] == "ds_config.json" and "ds_config.json" in files
        assert yaml.safe_load(files["ds_config.json"])["zero_optimization"]["stage"] == strategy.zero_stage
    for value in d.values():                 # YAML 1.1 reads 1e-05 as text: every number must stay a number
        assert not (isinstance(value, str) and value.replace(".", "").replace("e-", "").isdigit())


def test_qlora_under_zero3_stores_4bit_weights_in_the_compute_dtype(framework_rendered):
    files = framework_rendered[("llama-2-7b-4x24g-qlora-zero3", "hf-trainer")][5]
    assert yaml.safe_load(files["hf_model_args.yaml"])["quantization_config"]["bnb_4bit_quant_storage"] == "bfloat16"
    trl = yaml.safe_load(framework_rendered[("llama-2-7b-4x24g-qlora-zero3", "trl")][5]["trl_sft.yaml"])
    assert trl["bnb_4bit_quant_storage"] == "bfloat16"


@pytest.mark.parametrize("argv, framework, flag", [
    ("--model llama-2-7b --gpus 1 --vram 80 --strategy single --loss chunked", "llamafactory", "--loss"),
    ("--model gpt2 --gpus 1 --vram 24 --strategy single --loss fused-linear", "trl", "--loss"),
    # TRL 1.16's SFTTrainer raises on liger_kernel_config fused_linear_cross_entropy and on a LoRA'd lm_head
    ("--model llama-2-7b --gpus 1 --vram 80 --strategy single --loss fused-linear", "trl", "--loss"),
    ("--model llama-2-7b --gpus 1 --vram 80 --strategy single --method lora --lora-targets q_proj,lm_head", "trl",
     "--lora-targets"),
    ("--model llama-2-7b --gpus 1 --vram 80 --strategy single --checkpointing selective", "axolotl", "--checkpointing"),
    ("--model llama-2-7b --gpus 2 --vram 80 --strategy zero2 --method freeze", "hf-trainer", "--method"),
    ("--model llama-2-7b --gpus 2 --vram 80 --strategy zero2 --optimizer lamb", "trl", "--optimizer"),
    ("--model gpt2 --gpus 1 --vram 24 --strategy single --method lora --lora-targets o_proj", "axolotl",
     "--lora-targets"),
    # issue 17: both load the model in the compute dtype
    ("--model gpt2 --gpus 1 --vram 24 --strategy single --method lora --base-dtype fp32", "llamafactory", "--base-dtype"),
    ("--model gpt2 --gpus 1 --vram 24 --strategy single --method lora --base-dtype fp32", "axolotl", "--base-dtype"),
    # issue 17: QLoRA's fp32 non-quantized weights: trl sft's dtype is also bnb_4bit_compute_dtype
    ("--model llama-2-7b --gpus 1 --vram 24 --strategy single --method qlora --base-dtype fp32", "trl", "--base-dtype"),
    ("--model llama-2-7b --gpus 1 --vram 24 --strategy single --method qlora --base-dtype fp32", "axolotl",
     "--base-dtype"),
])
def test_what_a_framework_cannot_express_is_refused(argv, framework, flag):
    with pytest.raises(InputError) as err:
        plan_scenario(argv, framework)
    assert err.value.field == flag


@pytest.mark.parametrize("framework, file, key", [("hf-trainer", "hf_model_args.yaml", "dtype"),
                                                   ("trl", "trl_sft.yaml", "dtype")])
def test_an_fp32_lora_base_is_loaded_in_float32(framework, file, key):
    """--base-dtype fp32 (issue 17): the file loads what the estimate counts; the 16-bit default loads bfloat16."""
    argv = "--model gpt2 --gpus 1 --vram 24 --strategy single --method lora --precision bf16"
    *_, files = plan_scenario(argv + " --base-dtype fp32", framework)
    assert yaml.safe_load(files[file])[key] == "float32"
    *_, files = plan_scenario(argv, framework)
    assert yaml.safe_load(files[file])[key] == "bfloat16"


def test_qlora_fp32_non_quantized_weights_load_float32_and_compute_bf16():
    """--method qlora --base-dtype fp32 (issue 17): from_pretrained(dtype=float32) with a bf16 compute dtype leaves the
    embeddings, norms and lm_head fp32 as estimated; the 16-bit default loads bfloat16 (TRL 1.16 keeps it so)."""
    argv = "--model llama-2-7b --gpus 1 --vram 24 --strategy single --method qlora --precision bf16"
    *_, files = plan_scenario(argv + " --base-dtype fp32", "hf-trainer")
    d = yaml.safe_load(files["hf_model_args.yaml"])
    assert d["dtype"] == "float32" and d["quantization_config"]["bnb_4bit_compute_dtype"] == "bfloat16"
    for fw, file in (("hf-trainer", "hf_model_args.yaml"), ("trl", "trl_sft.yaml")):
        *_, files = plan_scenario(argv, fw)
        d = yaml.safe_load(files[file])
        assert d["dtype"] == "bfloat16"


def test_llamafactory_freeze_and_gpt2_native_targets():
    *_, files = plan_scenario("--model gpt2 --gpus 2 --vram 24 --strategy zero2 --method freeze --freeze-layers 3",
                              "llamafactory")
    d = yaml.safe_load(files["llamafactory_train.yaml"])
    assert (d["finetuning_type"], d["freeze_trainable_layers"]) == ("freeze", 3)
    *_, files = plan_scenario("--model gpt2 --gpus 1 --vram 24 --strategy single --method lora "
                              "--lora-targets qkv_proj,fc1", "hf-trainer")
    assert yaml.safe_load(files["hf_model_args.yaml"])["lora_config"]["target_modules"] == ["c_attn", "c_fc"]


def test_unknown_key_is_refused_with_the_documented_keys(monkeypatch, framework_rendered):
    import advisor.render.frameworks.validate as v

    monkeypatch.setattr(v, "importable", lambda framework: "not installed (test)")
    for fw, bad in (("llamafactory", "lora_rnak"), ("axolotl", "micro_batch")):
        files = dict(framework_rendered[("llama-2-7b-1x24g-lora", fw)][5])
        files[CONFIG[fw]] += f"{bad}: 8\n"
        (step,) = validate_framework_files(files, fw)
        assert step.status == StepStatus.FAIL and step.findings[0].setting == bad


@pytest.mark.parametrize("framework", ("hf-trainer", "trl"))
def test_hf_parsers_refuse_a_wrong_value(framework_rendered, framework):
    files = dict(framework_rendered[("llama-2-7b-1x24g-lora", framework)][5])
    files[CONFIG[framework]] += "optim: adamw_tourch\n"
    (step,) = validate_framework_files(files, framework)
    assert step.status == StepStatus.FAIL and "adamw_tourch" in step.findings[0].message


def test_selective_checkpointing_from_the_recommender_becomes_full_for_a_framework():
    """plan_for_framework re-plans with --checkpointing full (and says so) when the recommendation used selective
    checkpointing, which no framework key expresses. The plan function is the real one with the flag honoured."""
    import argparse

    from advisor.render.frameworks.cli import plan_for_framework
    from advisor.specs import TrainingSpec

    calls = []

    def plan(args):
        calls.append(args.checkpointing)
        return (None, None, TrainingSpec(activation_checkpointing=args.checkpointing or "selective"), None, 1, None)

    args = argparse.Namespace(framework="axolotl", checkpointing=None, assumed=[])
    _, _, training, *_ = plan_for_framework(plan, args)
    assert calls == [None, "full"] and training.activation_checkpointing == "full"
    assert "selective checkpointing has no axolotl key" in args.assumed[-1]


def test_parallel_layouts_are_refused_for_framework_files():
    with pytest.raises(InputError) as err:
        plan_scenario("--model llama-2-7b --gpus 4 --vram 80 --strategy fsdp-full --fsdp-version 2", "trl")
    assert err.value.field == "--framework" and "--framework accelerate" in str(err.value)


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_generate_without_strategy_keeps_the_base_dtype(tmp_path, method):
    """issue 17: the recommended run's training spec carries --base-dtype fp32 into the file (it was dropped)."""
    from advisor.cli import main

    out = tmp_path / "out"
    code = main(["generate", "--model", "llama-2-7b", "--gpu", "a100-80g", "--method", method, "--base-dtype", "fp32",
                 "--framework", "hf-trainer", "--seq-len", "512", "--out", str(out)])
    assert code == 0
    assert yaml.safe_load((out / "hf_model_args.yaml").read_text())["dtype"] == "float32"
