"""`dsadvise check` on framework files: generated ones pass, each combination mistake is caught once."""

from __future__ import annotations

import json

import pytest

from advisor.render.lint import Problem, lint_file

from .conftest import FRAMEWORK_SCENARIOS, FRAMEWORKS

CONFIG = {"llamafactory": "llamafactory_train.yaml", "hf-trainer": "hf_trainer_args.yaml", "trl": "trl_sft.yaml",
          "axolotl": "axolotl.yaml"}


def _write(tmp_path, files):
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("scenario", ["llama-2-7b-4x24g-qlora-zero3", "llama-2-7b-8xa100-fsdp-full"])
def test_generated_framework_files_pass_check(framework_rendered, tmp_path, scenario, framework):
    model, hw, *_ , files = framework_rendered[(scenario, framework)]
    _write(tmp_path, files)
    findings = lint_file(tmp_path / CONFIG[framework], Problem(gpus=hw.gpus_per_node, engines=False))
    assert [f.line() for f in findings if f.severity != "info"] == []


LF = """model_name_or_path: meta-llama/Llama-2-7b-hf
stage: sft
do_train: true
finetuning_type: lora
lora_target: all
quantization_bit: {bits}
deepspeed: {ds}
dataset: alpaca_en_demo
template: llama2
cutoff_len: 1024
output_dir: out
per_device_train_batch_size: 2
gradient_accumulation_steps: 4
bf16: true
"""


def _ds(tmp_path, stage=3, **fixed):
    cfg = {"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
           "bf16": {"enabled": "auto"}, "zero_optimization": {"stage": stage}}
    cfg.update(fixed)
    (tmp_path / "ds_z3.json").write_text(json.dumps(cfg), encoding="utf-8")


def _findings(tmp_path, name, text, gpus=4):
    (tmp_path / name).write_text(text, encoding="utf-8")
    return [(f.severity, f.setting) for f in lint_file(tmp_path / name, Problem(gpus=gpus, engines=False))]


def test_llamafactory_8bit_with_zero3_is_refused(tmp_path):
    _ds(tmp_path)
    assert ("error", "quantization_bit") in _findings(tmp_path, "lf.yaml", LF.format(bits=8, ds="ds_z3.json"))
    assert ("error", "quantization_bit") not in _findings(tmp_path, "lf.yaml", LF.format(bits=4, ds="ds_z3.json"))


def test_missing_deepspeed_file(tmp_path):
    assert ("error", "deepspeed") in _findings(tmp_path, "lf.yaml", LF.format(bits=4, ds="nowhere/ds_z3.json"))


def test_fixed_train_batch_size_against_the_framework_batch(tmp_path):
    _ds(tmp_path, train_batch_size=64, train_micro_batch_size_per_gpu=2, gradient_accumulation_steps=4)
    # 2 x 4 x 4 GPUs = 32, the JSON says 64
    assert ("error", "per_device_train_batch_size") in _findings(tmp_path, "lf.yaml", LF.format(bits=4, ds="ds_z3.json"))
    assert ("error", "per_device_train_batch_size") not in _findings(tmp_path, "lf.yaml",
                                                                      LF.format(bits=4, ds="ds_z3.json"), gpus=8)


def test_unknown_llamafactory_key(tmp_path):
    _ds(tmp_path)
    found = _findings(tmp_path, "lf.yaml", LF.format(bits=4, ds="ds_z3.json") + "lora_rnak: 8\n")
    assert ("error", "lora_rnak") in found


def test_trl_4bit_under_zero3_without_quant_storage(tmp_path):
    _ds(tmp_path)
    text = ("model_name_or_path: m\ndataset_name: d\noutput_dir: o\nper_device_train_batch_size: 1\n"
            "gradient_accumulation_steps: 1\nuse_peft: true\nload_in_4bit: true\ndeepspeed: ds_z3.json\n")
    assert ("error", "bnb_4bit_quant_storage") in _findings(tmp_path, "trl.yaml", text)
    assert ("error", "bnb_4bit_quant_storage") not in _findings(tmp_path, "trl.yaml",
                                                                 text + "bnb_4bit_quant_storage: bfloat16\n")


def test_hf_args_json_checkpointing_twice_under_fsdp(tmp_path):
    args = {"output_dir": "o", "per_device_train_batch_size": 1, "gradient_accumulation_steps": 1,
            "gradient_checkpointing": True, "fsdp": "full_shard auto_wrap",
            "fsdp_config": {"activation_checkpointing": True}}
    assert ("error", "gradient_checkpointing") in _findings(tmp_path, "args.json", json.dumps(args))


@pytest.mark.parametrize("framework", ["llamafactory", "trl", "axolotl"])
def test_check_estimates_what_the_framework_file_launches(framework_rendered, tmp_path, framework):
    """The fit check reads micro-batch, sequence length, checkpointing, method and LoRA settings from the file:
    it estimates the same bytes as the generating command's estimate."""
    from advisor.api import estimate
    from advisor.formatting import fmt_bytes

    *_, files = framework_rendered[("llama-2-7b-1x24g-lora", framework)]
    _write(tmp_path, files)
    findings = lint_file(tmp_path / CONFIG[framework], Problem(gpus=1, model="llama-2-7b", vram=24, engines=False))
    est = estimate("llama-2-7b", gpus=1, vram=24, strategy="single", method="lora", lora_rank=8,
                   lora_targets=("q_proj", "v_proj"), checkpointing="full", micro_batch=2, seq_len=1024,
                   loss="trl-head" if framework == "trl" else None)   # TRL's own fused LM head (generate's default)
    fit = [f.message for f in findings if f.message.startswith("fits:")]
    assert fit and f"needs about {fmt_bytes(est.per_gpu.total)} per GPU" in fit[0]


@pytest.mark.parametrize("sync", [False, True])
def test_check_counts_the_accumulation_an_fsdp_file_launches(tmp_path, sync):
    """issue 17: an FSDP file with gradient_accumulation_steps 2 runs the first micro-batch under accelerate's no_sync
    (unsharded gradients kept) unless accelerator_config sets sync_each_batch: check estimates what generate did."""
    from advisor.api import estimate
    from advisor.formatting import fmt_bytes

    from .conftest import plan_scenario

    argv = "--model llama-2-7b --gpus 8 --gpu a100-80g --strategy fsdp-full --micro-batch 1 --global-batch 16"
    *_, files = plan_scenario(argv + (" --sync-each-batch" if sync else ""), "hf-trainer")
    _write(tmp_path, files)
    findings = lint_file(tmp_path / CONFIG["hf-trainer"], Problem(gpus=8, model="llama-2-7b", gpu="a100-80g",
                                                                 engines=False))
    est = estimate("llama-2-7b", gpus=8, gpu="a100-80g", strategy="fsdp-full", micro_batch=1, global_batch=16,
                   sync_each_batch=sync, seq_len=2048)
    plain = estimate("llama-2-7b", gpus=8, gpu="a100-80g", strategy="fsdp-full", micro_batch=1, seq_len=2048)
    assert (est.per_gpu.total > plain.per_gpu.total) is not sync      # the no_sync gradients, or none
    fit = [f.message for f in findings if f.message.startswith(("fits:", "does not fit:"))]
    assert fit and f"needs about {fmt_bytes(est.per_gpu.total)} per GPU" in fit[0], fit
