"""The dsadvise CLI: JSON contract, readable output, and bad input as one line with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from advisor.cli import main
from advisor.errors import InputError
from advisor.api import estimate

GIB = 1024**3


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_estimate_json_contract(capsys):
    code, out, err = run(capsys, "estimate", "--model", "7B", "--gpus", "4", "--vram", "24", "--strategy", "zero3",
                         "--json")
    assert code == 0, err
    d = json.loads(out)
    assert set(d["model"]) >= {"name", "parameters", "trainable_parameters", "source"}
    assert set(d["strategy"]) >= {"backend", "zero_stage", "fsdp_sharding", "offload_optimizer", "offload_param",
                                  "precision", "activation_checkpointing", "micro_batch_size", "seq_len"}
    keys = ("parameters", "gradients", "optimizer_states", "activations", "temporaries", "buffers", "overhead")
    assert all(isinstance(d["per_gpu"][k], int) for k in keys + ("total",))
    assert d["per_gpu"]["total"] == sum(d["per_gpu"][k] for k in keys) - d["per_gpu"]["phase_overlap"]
    assert isinstance(d["per_node_cpu"]["total"], int)
    assert d["strategy"]["backend"] == "deepspeed" and d["strategy"]["zero_stage"] == 3
    assert d["hardware"]["vram_bytes"] == 24 * GIB
    assert d["headroom_bytes"] == 24 * GIB - d["per_gpu"]["total"]
    assert d["fits"] == (d["headroom_bytes"] >= 0 and d["per_node_cpu"]["fits"])
    assert d["model"]["source"] == "size"


def test_estimate_table_is_readable(capsys):
    code, out, _ = run(capsys, "estimate", "--model", "gpt2", "--vram", "24")
    assert code == 0
    assert "Per GPU" in out and "optimizer states" in out and "Verdict" in out and "FITS" in out


def test_models_and_gpus_list(capsys):
    code, out, _ = run(capsys, "models", "--json")
    names = [m["name"] for m in json.loads(out)]
    assert code == 0 and len(names) >= 25 and "llama-2-7b" in names
    code, out, _ = run(capsys, "gpus")
    assert code == 0 and "a100-80g" in out


@pytest.mark.parametrize("argv,needle", [
    (["--model", "7B", "--gpus", "0", "--vram", "24"], "--gpus"),
    (["--model", "7B", "--gpus", "-2", "--vram", "24"], "--gpus"),
    (["--model", "7B", "--vram", "0"], "--vram"),
    (["--model", "7B", "--vram", "-24"], "--vram"),
    (["--model", "7B", "--vram", "lots"], "--vram"),
    (["--model", "7B"], "--vram"),
    (["--model", "llama-9-7b", "--vram", "24"], "llama"),
    (["--model", "0.001B", "--vram", "24"], "size"),
    (["--model", "900T", "--vram", "24"], "size"),
    (["--model", "7B", "--vram", "24", "--gpu", "a100-90g"], "GPU"),
    (["--model", "7B", "--vram", "24", "--strategy", "zero9"], "--strategy"),
    (["--model", "7B", "--vram", "24", "--strategy", "zero2", "--offload-param", "cpu"], "ZeRO-3"),
    (["--model", "7B", "--vram", "24", "--gpu", "v100-32g", "--precision", "bf16"], "bf16"),
    (["--model", "7B", "--vram", "24", "--strategy", "zero3", "--offload-optimizer", "nvme"], "nvme"),
    (["--model", "7B", "--vram", "24", "--gpus", "2", "--strategy", "single"], "single"),
    (["--model", "7B", "--vram", "24", "--seq-len", "0"], "--seq-len"),
    (["--model", "7B", "--vram", "24", "--method", "lora", "--lora-targets", "q_prj"], "q_proj"),
])
def test_bad_input_is_one_line_exit_2(capsys, argv, needle):
    code = None
    try:
        code = main(["estimate", *argv])
    except SystemExit as exc:   # argparse-level errors
        code = exc.code
    _, err = capsys.readouterr()
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert needle.lower() in err.lower()


def test_config_json_path_and_malformed(tmp_path, capsys):
    good = tmp_path / "m"
    good.mkdir()
    (good / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8,
        "num_attention_heads": 16, "vocab_size": 32000}))
    code, out, err = run(capsys, "estimate", "--model", str(good), "--vram", "24", "--json")
    assert code == 0, err
    assert json.loads(out)["model"]["source"] == "config"
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, _, err = run(capsys, "estimate", "--model", str(bad), "--vram", "24")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "bad.json" in err


def test_real_console_script_bad_input_has_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "advisor", "estimate", "--model", "nonsense-model",
                           "--vram", "24"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_estimate_path_imports_no_heavy_module():
    code = ("import sys\nfrom advisor.cli import main\nmain(['estimate','--model','7B','--gpus','4','--vram','24',"
            "'--strategy','zero3','--json'])\n"
            "print('HEAVY=' + ','.join(m for m in ('torch','deepspeed','transformers','accelerate','textual') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY="


MODELS = st.one_of(st.sampled_from(["7B", "gpt2", "llama-2-70b", "mixtral-8x7b", "qwen2.5-0.5b", "1.5b",
                                    "gemma-2-9b", "opt-1.3b", "gpt2-xl", "350M", "6.7e9"]),
                   st.text(max_size=12))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=MODELS, gpus=st.integers(-2, 16), nodes=st.integers(0, 4),
       vram=st.one_of(st.none(), st.floats(-10, 200), st.just(float("nan")), st.just(float("inf"))),
       gpu=st.one_of(st.none(), st.sampled_from(["v100-16g", "a100-80g", "t4", "h100-sxm", "zz"])),
       precision=st.sampled_from([None, "fp32", "fp16", "bf16", "pure-bf16", "int3"]),
       strategy=st.sampled_from([None, "single", "ddp", "zero0", "zero1", "zero2", "zero3", "fsdp-full",
                                 "fsdp-grad-op", "fsdp-hybrid", "fsdp-no-shard", "zero4"]),
       offload_optimizer=st.sampled_from(["none", "cpu", "nvme"]),
       offload_param=st.sampled_from(["none", "cpu", "nvme"]),
       method=st.sampled_from(["full", "lora", "qlora", "freeze", "prompt"]),
       optimizer=st.sampled_from(["adamw", "adamw-8bit", "adafactor", "sgd", "lion", "lamb"]),
       checkpointing=st.sampled_from(["none", "full", "selective"]),
       task=st.sampled_from(["train", "infer"]),
       seq_len=st.integers(-1, 40000), micro_batch=st.integers(0, 64))
def test_any_input_gives_an_estimate_or_a_clean_error(model, gpus, nodes, vram, gpu, precision, strategy,
                                                      offload_optimizer, offload_param, method, optimizer,
                                                      checkpointing, task, seq_len, micro_batch):
    try:
        e = estimate(model, gpus=gpus, nodes=nodes, vram=vram, gpu=gpu, precision=precision, strategy=strategy,
                     offload_optimizer=offload_optimizer, offload_param=offload_param, method=method,
                     optimizer=optimizer, checkpointing=checkpointing, task=task, seq_len=seq_len,
                     micro_batch=micro_batch, cpu_ram=256)
    except InputError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    g = e.per_gpu
    assert g.total > 0 and all(v >= 0 for v in (g.parameters, g.gradients, g.optimizer_states, g.activations,
                                                g.temporaries, g.buffers, g.overhead))
    assert e.fits == (g.total <= e.hardware.vram_bytes and e.per_node_cpu.fits) or e.task == "infer"


def _subparsers(parser):
    import argparse
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_a_command_line_builds_only_its_group_and_parses_the_same():
    """main() builds only the named command's group (startup speed): GROUP_OF must name every command of the
    full parser, and each command's parser built alone must be the one the full parser holds."""
    from advisor.cli import GROUP_OF, build_parser
    full = _subparsers(build_parser())
    assert set(full) == set(GROUP_OF)
    for command, sub in full.items():
        alone = _subparsers(build_parser([command, "--help"]))
        assert command in alone and set(alone) < set(full)
        assert alone[command].format_help() == sub.format_help()
    argv = ["estimate", "--model", "7B", "--gpus", "4", "--vram", "24", "--strategy", "zero3", "--json"]
    assert vars(build_parser(argv).parse_args(argv)) == vars(build_parser().parse_args(argv))


def test_cli_skips_pydantic_plugin_discovery_only_when_plugins_are_disabled():
    """With PYDANTIC_DISABLE_PLUGINS=__all__ (the CLI's default) the estimate imports no importlib.metadata
    (pydantic's plugin loader module pulls it); with another value pydantic's own loader runs."""
    import os
    code = ("import sys\nfrom advisor.cli import main\nmain(['estimate','--model','7B','--gpus','4','--vram','24'])\n"
            "print('LOADED=' + ','.join(m for m in ('importlib.metadata', 'email') if m in sys.modules))")
    env = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "LOADED="
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**env, "PYDANTIC_DISABLE_PLUGINS": "some-plugin"})
    assert proc.returncode == 0, proc.stderr
    assert "importlib.metadata" in proc.stdout.strip().splitlines()[-1]


def test_the_plugin_loader_stand_in_hands_over_to_pydantics_own_when_plugins_are_enabled_later():
    code = ("import os, sys\nos.environ['PYDANTIC_DISABLE_PLUGINS'] = '__all__'\n"
            "from advisor.cli import pydantic_plugins as pp\nassert pp.skip_discovery()\n"
            "from pydantic import BaseModel\nclass A(BaseModel):\n    x: int\nassert A(x=1).x == 1\n"
            "stand_in = sys.modules[pp.LOADER]\nassert stand_in.get_plugins() == ()\n"
            "assert 'importlib.metadata' not in sys.modules\n"
            "os.environ['PYDANTIC_DISABLE_PLUGINS'] = 'some-plugin'\nplugins = list(stand_in.get_plugins())\n"
            "real = sys.modules[pp.LOADER]\nassert real is not stand_in and real.get_plugins is not None\n"
            "assert stand_in.PYDANTIC_ENTRY_POINT_GROUP == 'pydantic'\nprint('OK')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "OK", proc.stderr
