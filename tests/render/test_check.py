"""`dsadvise check` catches each mistake (one test each): what DeepSpeed/accelerate reject, and what they
silently accept but is wrong. Exit 1 on errors, 0 with warnings only, 2 (one line) on unreadable files."""

from __future__ import annotations

import json

import pytest
import yaml

from advisor.cli import main


def ds(**over) -> dict:
    cfg = {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 2,
           "bf16": {"enabled": True}, "zero_optimization": {"stage": 2}}
    for k, v in over.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    return cfg


def run(capsys, tmp_path, content, *flags, name="ds_config.json"):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else
                    (json.dumps(content) if name.endswith(".json") else yaml.safe_dump(content)))
    rc = main(["check", str(path), *flags])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_clean_config_exit_0(capsys, tmp_path):
    rc, out, _ = run(capsys, tmp_path, ds(), "--gpus", "4")
    assert rc == 0 and "0 error(s), 0 warning(s)" in out


def test_batch_arithmetic(capsys, tmp_path):
    rc, out, _ = run(capsys, tmp_path, ds(train_batch_size=16), "--gpus", "4")
    assert rc == 1
    assert "train_batch_size: 16 != train_micro_batch_size_per_gpu 1 x gradient_accumulation_steps 2 x world " \
           "size 4" in out and "set train_batch_size to 8" in out


def test_batch_arithmetic_without_world_size(capsys, tmp_path):
    rc, out, _ = run(capsys, tmp_path, ds(train_batch_size=7))
    assert rc == 1 and "no world size satisfies" in out


def test_fp16_and_bf16_both_enabled(capsys, tmp_path):
    rc, out, _ = run(capsys, tmp_path, ds(fp16={"enabled": True}), "--gpus", "4")
    assert rc == 1 and "fp16 and bf16 are both enabled" in out


def test_bad_stage(capsys, tmp_path):
    rc, out, _ = run(capsys, tmp_path, ds(zero_optimization={"stage": 4}), "--gpus", "4")
    assert rc == 1 and "zero_optimization.stage: 4 is not a ZeRO stage" in out


def test_unknown_zero_key_is_what_deepspeed_rejects(capsys, tmp_path):
    rc, out, _ = run(capsys, tmp_path, ds(zero_optimization={"stage": 2, "reduce_bucket_sise": 5}), "--gpus", "4")
    assert rc == 1 and "reduce_bucket_sise" in out and "DeepSpeed refuses it" in out


def test_offload_param_below_zero3_is_a_warning(capsys, tmp_path):
    rc, out, _ = run(capsys, tmp_path, ds(zero_optimization={"stage": 2, "offload_param": {"device": "cpu"}}),
                     "--gpus", "4")
    assert rc == 0
    assert "warning: ds_config.json: zero_optimization.offload_param.device" in out and "silently ignores" in out


def test_bf16_on_a_gpu_without_it(capsys, tmp_path):
    rc, out, _ = run(capsys, tmp_path, ds(), "--gpus", "4", "--gpu", "v100-32g")
    assert rc == 1 and "bf16.enabled: v100-32g has no bf16" in out


def test_nvme_offload_without_path(capsys, tmp_path):
    rc, out, _ = run(capsys, tmp_path, ds(zero_optimization={"stage": 3, "offload_param": {"device": "nvme"}}),
                     "--gpus", "4")
    assert rc == 1 and "offload_param.nvme_path: NVMe offload without nvme_path" in out


def test_bucket_larger_than_vram(capsys, tmp_path):
    cfg = ds(zero_optimization={"stage": 2, "overlap_comm": True, "reduce_bucket_size": 3_000_000_000})
    rc, out, _ = run(capsys, tmp_path, cfg, "--gpus", "4", "--vram", "24")
    assert rc == 1 and "reduce_bucket_size: 3,000,000,000 elements x 2 bytes x 4.5 (overlap_comm)" in out \
        and "more than the GPU's 24.00 GiB" in out


def test_does_not_fit_with_the_estimate(capsys, tmp_path):
    rc, out, _ = run(capsys, tmp_path, ds(train_batch_size=4, train_micro_batch_size_per_gpu=1,
                                          gradient_accumulation_steps=1), "--gpus", "4", "--vram", "24",
                     "--model", "7B")
    assert rc == 1 and "does not fit: llama-2-7b" in out and "needs about" in out and "of 24.00 GiB" in out


def test_fits_is_reported(capsys, tmp_path):
    cfg = ds(train_batch_size=8, gradient_accumulation_steps=1, zero_optimization={"stage": 3})
    rc, out, _ = run(capsys, tmp_path, cfg, "--gpus", "8", "--gpu", "a100-80g", "--model", "gpt2")
    assert rc == 0 and "info: ds_config.json: fits: gpt2" in out


def _yaml_with_json(tmp_path, acc_extra: dict, ds_cfg: dict) -> dict:
    (tmp_path / "ds_config.json").write_text(json.dumps(ds_cfg))
    acc = {"compute_environment": "LOCAL_MACHINE", "distributed_type": "DEEPSPEED", "num_processes": 4,
           "num_machines": 1, "machine_rank": 0, "use_cpu": False,
           "deepspeed_config": {"deepspeed_config_file": "ds_config.json"}}
    acc.update(acc_extra)
    return acc


def test_yaml_mixed_precision_disagrees_with_json(capsys, tmp_path):
    acc = _yaml_with_json(tmp_path, {"mixed_precision": "fp16"}, ds())
    rc, out, _ = run(capsys, tmp_path, acc, name="accelerate_config.yaml")
    assert rc == 1 and "mixed_precision: fp16 here, but ds_config.json says bf16" in out


def test_yaml_mixed_precision_next_to_deepspeed_file_is_refused(capsys, tmp_path):
    acc = _yaml_with_json(tmp_path, {"mixed_precision": "bf16"}, ds())
    rc, out, _ = run(capsys, tmp_path, acc, name="accelerate_config.yaml")
    assert rc == 1 and "accelerate launch refuses mixed_precision next to deepspeed_config_file" in out


@pytest.mark.parametrize("reference,needle", [
    ("nowhere/ds_config.json", "'nowhere/ds_config.json' not found next to {config} or in the current directory"),
    ("broken.json", "broken.json: "),
])
def test_a_referenced_deepspeed_file_is_read_alike_by_accelerate_and_framework_files(capsys, tmp_path, monkeypatch,
                                                                                    reference, needle):
    """accelerate's deepspeed_config_file and a framework file's ``deepspeed:`` go through one reader: the same
    error for a file that is missing or does not parse, under each file's own setting name."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.json").write_text("{not json")
    acc = _yaml_with_json(tmp_path, {}, ds())
    acc["deepspeed_config"]["deepspeed_config_file"] = reference
    rc, out, _ = run(capsys, tmp_path, acc, name="accelerate_config.yaml")
    assert rc == 1 and f"error: accelerate_config.yaml: deepspeed_config.deepspeed_config_file: " \
        f"{needle.format(config='accelerate_config.yaml')}" in out
    trl = ("model_name_or_path: gpt2\nper_device_train_batch_size: 1\ngradient_accumulation_steps: 1\n"
           f"deepspeed: {reference}\n")
    rc, out, _ = run(capsys, tmp_path, trl, name="trl_sft.yaml")
    assert rc == 1 and f"error: trl_sft.yaml: deepspeed: {needle.format(config='trl_sft.yaml')}" in out


def test_yaml_lints_its_json_for_its_world_size(capsys, tmp_path):
    acc = _yaml_with_json(tmp_path, {"num_processes": 2}, ds())
    rc, out, _ = run(capsys, tmp_path, acc, name="accelerate_config.yaml")
    assert rc == 1 and "world size 2 (num_processes in accelerate_config.yaml)" in out


def test_yaml_fsdp_reshard_after_forward_is_overridden(capsys, tmp_path):
    acc = {"distributed_type": "FSDP", "num_processes": 4, "mixed_precision": "bf16",
           "fsdp_config": {"fsdp_version": 1, "fsdp_reshard_after_forward": "SHARD_GRAD_OP"}}
    rc, out, _ = run(capsys, tmp_path, acc, name="accelerate_config.yaml")
    assert rc == 1 and "SHARD_GRAD_OP is silently replaced by FULL_SHARD" in out


def test_yaml_unknown_top_level_key(capsys, tmp_path):
    rc, out, _ = run(capsys, tmp_path, {"distributed_type": "MULTI_GPU", "num_processes": 2, "num_gpus": 2},
                     name="accelerate_config.yaml")
    assert rc == 1 and "unknown key(s) 'num_gpus'" in out


def test_yaml_world_size_mismatch(capsys, tmp_path):
    rc, out, _ = run(capsys, tmp_path, {"distributed_type": "MULTI_GPU", "num_processes": 4, "mixed_precision": "bf16"},
                     "--gpus", "8", name="accelerate_config.yaml")
    assert rc == 1 and "num_processes: 4, but --gpus x --nodes is 8" in out


@pytest.mark.parametrize("content,name", [('{"train_batch_size": 8,', "ds_config.json"),
                                          ("a: [1, 2\n", "accelerate_config.yaml"),
                                          ("[1, 2]", "ds_config.json"),
                                          (b"\xff\xfe\x00", "ds_config.json")])
def test_malformed_file_one_line_exit_2(capsys, tmp_path, content, name):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    rc = main(["check", str(path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err and name in err


def test_missing_file_exit_2(capsys, tmp_path):
    assert main(["check", str(tmp_path / "nope.json")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_generated_configs_pass_check(capsys, tmp_path, rendered):
    for name, text in rendered["13b-2x8xa100-40g-zero3"].items():
        (tmp_path / name).write_text(text)
    rc = main(["check", str(tmp_path / "accelerate_config.yaml"), "--gpus", "8", "--nodes", "2", "--gpu", "a100-40g",
               "--model", "llama-2-13b", "--checkpointing", "full", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and report["errors"] == 0 and report["warnings"] == 0, report
    assert any("fits: llama-2-13b" in f["message"] for f in report["findings"])


from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**10), st.floats(allow_nan=True),
                     st.sampled_from(["auto", "cpu", "nvme", "none", "", "x"]), st.text(max_size=5))
_VALUES = st.recursive(_SCALARS, lambda kids: st.one_of(st.lists(kids, max_size=3),
                                                        st.dictionaries(st.sampled_from(
                                                            ["stage", "device", "enabled", "nvme_path",
                                                             "offload_param", "offload_optimizer", "loss_scale",
                                                             "reduce_bucket_size", "overlap_comm", "x"]), kids,
                                                            max_size=4)), max_leaves=8)
_DS = st.dictionaries(st.sampled_from(["train_batch_size", "train_micro_batch_size_per_gpu",
                                       "gradient_accumulation_steps", "fp16", "bf16", "zero_optimization",
                                       "gradient_clipping", "optimizer"]), _VALUES, max_size=6)
_ACC = st.dictionaries(st.sampled_from(["distributed_type", "num_processes", "num_machines", "mixed_precision",
                                        "deepspeed_config", "fsdp_config", "main_process_ip", "use_cpu"]),
                       st.one_of(_VALUES, st.sampled_from(["DEEPSPEED", "FSDP", "MULTI_GPU", "NO", "bf16"])),
                       max_size=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_DS, st.sampled_from([[], ["--gpus", "4"], ["--gpus", "2", "--vram", "16", "--model", "gpt2"]]))
def test_check_never_crashes_on_json(tmp_path, capsys, cfg, flags):
    path = tmp_path / "fuzz.json"
    path.write_text(json.dumps(cfg))
    rc = main(["check", str(path), *flags])
    err = capsys.readouterr().err
    assert rc in (0, 1, 2) and "internal error" not in err, err


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_ACC)
def test_check_never_crashes_on_yaml(tmp_path, capsys, cfg):
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rc = main(["check", str(path), "--gpus", "2"])
    err = capsys.readouterr().err
    assert rc in (0, 1, 2) and "internal error" not in err, err


def test_generated_configs_pass_their_own_check(tmp_path, capsys):
    """What `generate` writes must pass `check`: settings the JSON cannot hold (checkpointing, sequence
    length) come from the dsadvise.json written beside it."""
    from advisor.cli import main

    out = tmp_path / "run"
    assert main(["generate", "--model", "7B", "--gpus", "4", "--vram", "24", "--out", str(out),
                 "--no-engine-check"]) == 0
    capsys.readouterr()
    code = main(["check", str(out / "ds_config.json"), "--gpus", "4", "--model", "7B", "--vram", "24",
                 "--no-engine-check"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "fits" in printed and "0 error(s)" in printed


def test_strict_turns_warnings_into_exit_1(tmp_path, capsys):
    from advisor.cli import main

    cfg = tmp_path / "ds.json"
    cfg.write_text('{"train_micro_batch_size_per_gpu": 1, "zero_optimizaton": {"stage": 2}}')
    assert main(["check", str(cfg), "--no-engine-check"]) == 0
    out = capsys.readouterr().out
    assert "did you mean 'zero_optimization'" in out
    assert main(["check", str(cfg), "--no-engine-check", "--strict"]) == 1


@pytest.mark.parametrize("make", ["device", "fifo", "folder", "deep_json", "deep_yaml", "too_large"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, make):
    import os

    from advisor.cli import main

    if make == "device":
        target = "/dev/zero"                      # reads forever if read: must be refused before reading
    elif make == "fifo":
        target = str(tmp_path / "pipe.json")
        os.mkfifo(target)                         # a reader would block forever
    elif make == "folder":
        target = str(tmp_path)
    elif make == "deep_json":
        target = tmp_path / "deep.json"
        target.write_text("[" * 100_000 + "]" * 100_000)
    elif make == "deep_yaml":
        target = tmp_path / "deep.yaml"
        target.write_text("a: " + "[" * 100_000 + "]" * 100_000)
    else:
        target = tmp_path / "big.json"
        target.write_text('{"a": "' + "x" * (5 * 1024 * 1024) + '"}')
    assert main(["check", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "internal error" not in err and "Traceback" not in err, err


def test_messages_name_the_file_as_it_is_called(tmp_path, capsys):
    from advisor.cli import main

    f = tmp_path / "passwd"
    f.write_text("root:x:0:0:root:/root:/bin/bash\n")
    assert main(["check", str(f)]) == 2
    err = capsys.readouterr().err
    assert "passwd.yaml" not in err and "passwd" in err


def test_check_of_a_generated_folder_reads_the_micro_batch_from_dsadvise_json(tmp_path, capsys):
    """An HF-template JSON says "auto" for the micro-batch: the fit check uses the one generate chose."""
    from advisor.cli import main

    out = tmp_path / "run"
    assert main(["generate", "--model", "1.3b", "--gpus", "2", "--vram", "80", "--strategy", "zero2",
                 "--micro-batch", "3", "--hf-trainer", "--out", str(out), "--no-engine-check"]) == 0
    assert json.loads((out / "ds_config.json").read_text())["train_micro_batch_size_per_gpu"] == "auto"
    capsys.readouterr()
    assert main(["check", str(out / "ds_config.json"), "--gpus", "2", "--model", "1.3b", "--vram", "80",
                 "--no-engine-check"]) == 0
    assert "micro-batch 3 x" in capsys.readouterr().out


def test_an_auto_template_with_a_custom_deepspeed_loop_is_an_error(tmp_path, capsys):
    """Only the HF Trainer / accelerate fill "auto": a script of its own around deepspeed.initialize gets the
    file as it is, and DeepSpeed's own refusal is reported too."""
    from advisor.cli import main

    cfg = tmp_path / "ds.json"
    cfg.write_text('{"train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto", '
                   '"zero_optimization": {"stage": 2}}')
    loop = tmp_path / "train.py"
    loop.write_text("import deepspeed\nengine, *_ = deepspeed.initialize(model=m, config='ds.json')\n")
    hf = tmp_path / "train_hf.py"
    hf.write_text("from transformers import Trainer\nTrainer(model=m, args=a).train()\n")
    assert main(["check", str(cfg), "--script", str(loop)]) == 1
    out = capsys.readouterr().out
    assert "calls deepspeed.initialize itself" in out and "DeepSpeed refuses it" in out
    assert main(["check", str(cfg), "--script", str(hf)]) == 0
