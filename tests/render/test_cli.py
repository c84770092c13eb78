"""`dsadvise generate` end to end: with --strategy, through the recommender without it, and its bad inputs.
The CLI start-up stays light: registering generate/check/dry-run imports no heavy engine."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from advisor.cli import main

HEAVY = ("torch", "deepspeed", "transformers", "accelerate", "jinja2", "jsonschema")


def test_cli_start_imports_no_engine():
    code = ("import sys; from advisor.cli import build_parser; build_parser(); "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


@pytest.mark.parametrize("cmd", ["generate", "check", "dry-run"])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        main([cmd, "--help"])
    assert exc.value.code == 0
    assert cmd in capsys.readouterr().out


def test_generate_with_strategy_json(tmp_path, capsys):
    out = tmp_path / "o"
    rc = main(["generate", "--model", "llama-2-7b", "--gpus", "8", "--gpu", "a100-80g", "--strategy", "zero2",
               "--global-batch", "64", "--out", str(out), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and report["strategy"] == "zero2" and report["gradient_accumulation_steps"] == 8
    assert {c["step"]: c["status"] for c in report["checks"]}["DeepSpeed loads ds_config.json (world size 8)"] == "pass"
    assert json.loads((out / "ds_config.json").read_text())["train_batch_size"] == 64


def test_generate_uses_the_recommender_without_strategy(tmp_path, capsys):
    out = tmp_path / "o"
    rc = main(["generate", "--model", "7B", "--gpus", "4", "--vram", "24", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "(recommended)" in text
    readme = (out / "README.md").read_text()
    assert "## Why this configuration (dsadvise recommend)" in readme
    manifest = json.loads((out / "dsadvise.json").read_text())
    from advisor.api import build_hardware, build_training
    from advisor.recommend import recommend

    hw = build_hardware(gpus=4, vram=24)
    rec = recommend("7B", hw, build_training(hw), method="full", precision="auto", checkpointing="auto")
    assert manifest["strategy"]["name"] == rec.recommendation.name
    assert manifest["training"]["micro_batch_size"] == rec.recommendation.micro_batch_size


def test_generate_nothing_fits(tmp_path, capsys):
    rc = main(["generate", "--model", "llama-2-70b", "--gpus", "1", "--vram", "8", "--cpu-ram", "16",
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 3 and "nothing fits" in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv,needle", [
    (["--global-batch", "10"], "--global-batch: 10 is not a multiple of micro-batch 1 x 4 GPU(s)"),
    (["--task", "infer"], "--task"),
    (["--precision", "bf16", "--gpu", "v100-32g"], "bf16 needs a GPU with bf16"),
    (["--main-process-ip", "$(id)", "--nodes", "2"], "--main-process-ip"),
    (["--strategy", "zero0", "--precision", "pure-bf16"], "pure-bf16 with DeepSpeed needs ZeRO stage 1-3"),
])
def test_generate_bad_input_one_line_exit_2(tmp_path, capsys, argv, needle):
    base = ["generate", "--model", "gpt2", "--gpus", "4", "--vram", "24", "--out", str(tmp_path / "o")]
    if "--strategy" not in argv:
        base += ["--strategy", "zero2"]
    rc = main(base + argv)
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_generate_warns_when_it_does_not_fit(tmp_path, capsys):
    rc = main(["generate", "--model", "7B", "--gpus", "4", "--vram", "24", "--strategy", "zero3",
               "--out", str(tmp_path / "o"), "--no-engine-check"])
    err = capsys.readouterr().err
    assert rc == 0 and "does not fit" in err
    assert "**DOES NOT FIT**" in (tmp_path / "o" / "README.md").read_text()


@pytest.mark.parametrize("script,rank_var", [("launch_accelerate.sh", "MACHINE_RANK"), ("launch_torchrun.sh", "NODE_RANK"),
                                             ("launch_deepspeed.sh", None)])
def test_multinode_scripts_require_main_process_ip_when_the_config_has_none(tmp_path, capsys, script, rank_var):
    """Generated without --main-process-ip, node 1 must not silently target 127.0.0.1."""
    import os
    import shutil

    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    out = tmp_path / "o"
    assert main(["generate", "--model", "llama-2-7b", "--nodes", "2", "--gpus", "8", "--gpu", "a100-80g",
                 "--strategy", "zero3", "--out", str(out), "--no-engine-check"]) == 0
    env = {k: v for k, v in os.environ.items() if k != "MAIN_PROCESS_IP"}
    if rank_var:
        env[rank_var] = "1"
    proc = subprocess.run(["bash", str(out / script), "train.py"], capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == 2 and "MAIN_PROCESS_IP" in proc.stderr, (proc.returncode, proc.stderr)
