"""--torch-version / --transformers-version (issue 17): one line and exit 2 for a version dsadvise does not know,
and the estimate says what a stated version changes (text and JSON)."""

from __future__ import annotations

import json

import pytest

from advisor.cli import main

BASE = ("estimate", "--model", "llama-2-7b", "--gpus", "2", "--gpu", "rtx-3090", "--strategy", "fsdp-full",
        "--method", "qlora", "--seq-len", "512")


@pytest.mark.parametrize("flag,value,needle", [
    ("--torch-version", "1.13", "2.1 ... 2.14"),
    ("--torch-version", "two", "expected a torch version"),
    ("--transformers-version", "4.20", "4.30 ... 5.24"),
    ("--transformers-version", "latest", "expected a transformers version"),
])
def test_unknown_version_is_one_line_exit_2(capsys, flag, value, needle):
    code = main([*BASE, flag, value])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and flag in err and needle in err and "Traceback" not in err


def test_stated_versions_reach_the_estimate_and_its_notes(capsys):
    assert main([*BASE, "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main([*BASE, "--json", "--transformers-version", "4.39", "--torch-version", "2.2"]) == 0
    old = json.loads(capsys.readouterr().out)
    # 32 layers x cos and sin of 4096 x 128 (transformers 4.39 LlamaRotaryEmbedding._cos_cached/_sin_cached), bf16:
    # the default precision on an RTX 3090 is mixed bf16, whose FSDP MixedPrecision casts buffers at the first forward
    rotary = {k: v for k, v in old["per_gpu"]["breakdown"].items() if k.startswith("per-layer rotary caches")}
    assert list(rotary.values()) == [32 * 2 * 4096 * 128 * 2]
    assert not any(k.startswith("per-layer rotary caches") for k in plain["per_gpu"]["breakdown"])
    assert any("rotary cos/sin caches" in n for n in old["notes"])
    assert any(n.startswith("--loss legacy-inline") for n in old["notes"])   # implied by transformers 4.39
    assert main([*BASE, "--transformers-version", "4.39"]) == 0
    assert "per-layer rotary caches" in capsys.readouterr().out
