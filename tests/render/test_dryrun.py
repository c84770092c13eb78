"""`dsadvise dry-run`: the generated configs load in the real engines, then `accelerate launch` runs a tiny proxy
on this machine's CPU (2 processes, gloo) for two optimizer steps and asserts inside the run that the world
size, ZeRO stage, offload devices and precision in effect are the generated ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from advisor.cli import main
from advisor.render.dryrun import dry_run

GOLDEN = Path(__file__).with_name("golden")
pytest.importorskip("deepspeed")
pytest.importorskip("transformers")


def copy_golden(name: str, tmp_path: Path) -> Path:
    dest = tmp_path / name
    shutil.copytree(GOLDEN / name, dest)
    for script in dest.glob("*.sh"):
        script.chmod(0o755)
    return dest


def run_cli(capsys, *argv) -> tuple[int, dict]:
    rc = main(["dry-run", *map(str, argv), "--json"])
    return rc, json.loads(capsys.readouterr().out)


def launch_step(report: dict) -> dict:
    return next(s for s in report["steps"] if s["step"].startswith("launch"))


def test_zero2_runs_on_cpu_with_two_processes(tmp_path, capsys):
    folder = copy_golden("llama-2-7b-8xa100-80g-zero2", tmp_path)
    rc, report = run_cli(capsys, folder)
    launch = launch_step(report)
    assert rc == 0 and report["passed"], report
    assert launch["status"] == "pass", launch
    for needle in ("2 process(es)", "torch.distributed world size = 2", "ZeRO stage (engine.zero_optimization_stage()) = 2",
                   "precision in effect = bf16", "optimizer offload device = none", "optimizer steps taken = 2"):
        assert needle in launch["detail"], launch["detail"]
    assert "num_processes 8 -> 2" in report["overrides"]
    assert any("train_batch_size 64 -> 16" in o for o in report["overrides"])
    steps = {s["step"]: s["status"] for s in report["steps"]}
    assert steps["accelerate loads accelerate_config.yaml"] == "pass"
    assert steps["DeepSpeed loads ds_config.json (world size 8)"] == "pass"


@pytest.mark.slow
def test_zero3_multinode_config_runs_on_one_machine(tmp_path, capsys):
    folder = copy_golden("13b-2x8xa100-40g-zero3", tmp_path)
    rc, report = run_cli(capsys, folder)
    launch = launch_step(report)
    assert rc == 0 and launch["status"] == "pass", report
    assert "ZeRO stage (engine.zero_optimization_stage()) = 3" in launch["detail"]
    assert "parameter offload device = none" in launch["detail"]
    assert any("num_machines 2 -> 1" in o for o in report["overrides"])


@pytest.mark.slow
def test_fsdp_sharding_in_effect_is_checked(tmp_path, capsys):
    """FSDP runs on the CPU, and the run catches accelerate replacing SHARD_GRAD_OP by FULL_SHARD when the YAML
    only says fsdp_reshard_after_forward (the failure names the file and the setting)."""
    out = tmp_path / "grad-op"
    assert main(["generate", "--model", "qwen2.5-0.5b", "--gpus", "2", "--vram", "24", "--strategy", "fsdp-grad-op",
                 "--out", str(out), "--no-engine-check"]) == 0
    capsys.readouterr()
    text = (out / "accelerate_config.yaml").read_text()
    (out / "accelerate_config.yaml").write_text("\n".join(ln for ln in text.splitlines()
                                                          if "fsdp_sharding_strategy" not in ln) + "\n")
    rc, report = run_cli(capsys, out)
    launch = launch_step(report)
    assert rc == 1 and launch["status"] == "fail", report
    bad = [f for f in launch["findings"] if "FSDP sharding strategy in effect" in f["message"]]
    assert bad and bad[0]["file"] == "accelerate_config.yaml"
    assert bad[0]["setting"] == "fsdp_config.fsdp_sharding_strategy"
    assert "got 'FULL_SHARD', expected 'SHARD_GRAD_OP'" in bad[0]["message"]
    assert "optimizer steps taken = 2" in launch["detail"]      # FSDP itself ran


def test_fp16_deepspeed_is_skipped_on_cpu_with_the_reason(tmp_path, capsys):
    folder = copy_golden("1.3b-4xv100-fp16-zero2", tmp_path)
    rc, report = run_cli(capsys, folder)
    launch = launch_step(report)
    assert rc == 0 and launch["status"] == "skip"
    assert "fp16" in launch["detail"] and "not supported on your device" in launch["detail"]


def test_gpu_flag_without_cuda_skips(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    folder = copy_golden("gpt2-single-gpu", tmp_path)
    rc, report = run_cli(capsys, folder, "--gpu")
    assert rc == 0 and launch_step(report)["status"] == "skip"
    assert "no CUDA device" in launch_step(report)["detail"]


def test_load_failure_names_file_and_setting(tmp_path, capsys):
    folder = copy_golden("llama-2-7b-8xa100-80g-zero2", tmp_path)
    acc = yaml.safe_load((folder / "accelerate_config.yaml").read_text())
    acc["mixed_precision"] = "fp16"
    (folder / "accelerate_config.yaml").write_text(yaml.safe_dump(acc))
    rc, report = run_cli(capsys, folder)
    assert rc == 1 and not report["passed"]
    failed = next(s for s in report["steps"] if s["status"] == "fail")
    assert failed["step"] == "accelerate loads accelerate_config.yaml"
    assert failed["findings"][0]["file"] == "accelerate_config.yaml"
    assert "mixed_precision" in failed["findings"][0]["setting"]
    assert launch_step(report)["status"] == "skip"


@pytest.mark.slow
def test_bounded_in_time(tmp_path):
    folder = copy_golden("llama-2-7b-8xa100-80g-zero2", tmp_path)
    import time

    t0 = time.perf_counter()
    report = dry_run(folder, timeout=2)   # less than importing torch + deepspeed takes: the launch cannot finish
    assert time.perf_counter() - t0 < 45
    launch = next(s for s in report.steps if s.name.startswith("launch"))
    assert launch.status == "fail" and "timed out" in launch.findings[0].message


def test_not_a_folder(tmp_path, capsys):
    assert main(["dry-run", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "not a directory" in err and err.count("\n") == 1


# The strategies CI launches for real (issue 12): one process, DDP, ZeRO-1, an optimizer offload, FSDP. The
# proxy is the smallest the dry-run builds (2 layers, hidden 64); timings on 2 CPU cores are in the report.
LAUNCHED = {
    "single": (["--strategy", "single", "--gpus", "1"], ["1 process(es)", "optimizer steps taken = 2"]),
    "ddp": (["--strategy", "ddp", "--gpus", "2"], ["torch.distributed world size = 2", "optimizer steps taken = 2"]),
    "zero1": (["--strategy", "zero1", "--gpus", "2"],
              ["ZeRO stage (engine.zero_optimization_stage()) = 1", "optimizer steps taken = 2"]),
    "zero2-offload": (["--strategy", "zero2", "--offload-optimizer", "cpu", "--gpus", "2"],
                      ["ZeRO stage (engine.zero_optimization_stage()) = 2", "optimizer offload device = cpu",
                       "optimizer steps taken = 2"]),
    "fsdp": (["--strategy", "fsdp-full", "--gpus", "2"], ["FSDP", "optimizer steps taken = 2"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LAUNCHED))
def test_each_kind_of_config_launches_on_cpu(tmp_path, capsys, name):
    flags, needles = LAUNCHED[name]
    out = tmp_path / name
    assert main(["generate", "--model", "qwen2.5-0.5b", "--vram", "24", *flags, "--out", str(out),
                 "--no-engine-check"]) == 0
    capsys.readouterr()
    rc, report = run_cli(capsys, out, "--timeout", "600")
    launch = launch_step(report)
    assert rc == 0 and launch["status"] == "pass", report
    for needle in needles:
        assert needle in launch["detail"], launch["detail"]
