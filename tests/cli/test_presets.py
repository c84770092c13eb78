"""`dsadvise presets` and `--preset`: each preset is the settings docs/frameworks.md lists, estimated through the
public API."""

from __future__ import annotations

import json

import pytest

from advisor.api import estimate
from advisor.cli import main

# docs/frameworks.md's table, restated: preset -> (method, strategy on 4 GPUs, optimizer offload, checkpointing, loss)
EXPECTED = {"lora": ("lora", "ddp", "none", "full", "plain"), "qlora": ("qlora", "ddp", "none", "full", "plain"),
            "full": ("full", "ddp", "none", "full", "plain"), "z2-offload": ("full", "zero2", "cpu", "full", "plain"),
            "z3": ("full", "zero3", "none", "full", "plain"), "minimal": ("qlora", "zero3", "none", "full", "fused-linear")}


def test_presets_json_is_the_api_estimate_of_each_preset(capsys):
    assert main(["presets", "--model", "gpt2", "--gpus", "4", "--vram", "8", "--json"]) == 0
    rows = {r["preset"]: r for r in json.loads(capsys.readouterr().out)["presets"]}
    assert list(rows) == list(EXPECTED)
    for name, (method, strategy, offload, ckpt, loss) in EXPECTED.items():
        s = rows[name]["settings"]
        assert (s["method"], s["strategy"], s["offload_optimizer"], s["checkpointing"], s["loss"]) == \
            (method, strategy, offload, ckpt, loss)
        est = estimate("gpt2", gpus=4, vram=8, method=method, strategy=strategy, offload_optimizer=offload,
                       checkpointing=ckpt, loss=loss)
        assert (rows[name]["per_gpu_bytes"], rows[name]["fits"], rows[name]["backend"]) == \
            (est.per_gpu.total, est.fits, strategy)


def test_presets_table_says_what_did_not_fit(capsys):
    assert main(["presets", "--model", "llama-2-7b", "--gpus", "1", "--vram", "24"]) == 0
    out = capsys.readouterr().out
    full = next(line for line in out.splitlines() if line.startswith("full "))
    assert full.split()[1] == "single" and " no " in full        # 7B full fine-tuning on one 24 GiB GPU
    assert "assumed: sequence length 2048" in out


def test_preset_contradicting_a_flag_is_one_line(capsys):
    assert main(["estimate", "--model", "gpt2", "--vram", "8", "--preset", "qlora", "--method", "lora"]) == 2
    err = capsys.readouterr().err
    assert "--preset qlora sets --method qlora" in err and err.count("\n") == 1


@pytest.mark.parametrize("preset, strategy", [("z3", "zero3"), ("lora", "single")])
def test_estimate_with_a_preset(capsys, preset, strategy):
    assert main(["estimate", "--model", "gpt2", "--vram", "8", "--preset", preset, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["strategy"]["name"] == strategy
