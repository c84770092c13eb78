"""What a newcomer meets first (issue 12): the sequence length follows the model and is said, the model is
named, an offloading headline says host RAM was not checked, --vram over --gpu is said, impossible settings
are refused in one line."""

from __future__ import annotations

import json

import pytest

from advisor.cli import main


def test_gpt2_on_one_24gb_gpu_fits_at_its_own_context_and_says_so(capsys):
    assert main(["recommend", "--model", "gpt2", "--gpus", "1", "--vram", "24"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Model  gpt2 (")
    assert "(seq 1024)" in out and "sequence length 1024 tokens (gpt2's context" in out


def test_the_json_says_the_assumed_length(capsys):
    assert main(["recommend", "--model", "gpt2", "--gpus", "1", "--vram", "24", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["recommendation"]["seq_len"] == 1024
    assert any("sequence length 1024" in a for a in rec["assumptions"])


def test_a_given_length_is_not_an_assumption(capsys):
    assert main(["recommend", "--model", "gpt2", "--gpus", "1", "--vram", "24", "--seq-len", "512", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["recommendation"]["seq_len"] == 512 and not any("sequence length" in a for a in rec["assumptions"])


def test_offloading_headline_says_host_ram_was_not_checked(capsys):
    assert main(["recommend", "--model", "7b", "--gpus", "1", "--vram", "24"]) == 0
    head = capsys.readouterr().out.splitlines()[1]
    assert head.startswith("Recommendation") and "offload" in head and "host RAM NOT checked" in head
    assert main(["recommend", "--model", "7b", "--gpus", "1", "--vram", "24", "--cpu-ram", "512"]) == 0
    assert "NOT checked" not in capsys.readouterr().out.splitlines()[1]


def test_vram_over_the_gpus_memory_is_said(capsys):
    assert main(["estimate", "--model", "gpt2", "--gpu", "a100-80g", "--vram", "24", "--strategy", "single"]) == 0
    assert "--vram 24 GiB per GPU replaces the a100-80g's" in capsys.readouterr().out


@pytest.mark.parametrize("argv,flag", [
    (["estimate", "--model", "7b", "--gpu", "v100-16g", "--attention", "flash", "--strategy", "single"],
     "--attention"),
    (["recommend", "--model", "7b", "--gpu", "t4", "--attention", "flash"], "--attention"),
    (["estimate", "--model", "gpt2", "--vram", "24", "--method", "freeze", "--freeze-layers", "20",
      "--strategy", "single"], "--freeze-layers"),
    (["recommend", "--model", "gpt2", "--vram", "24", "--method", "freeze", "--freeze-layers", "13"],
     "--freeze-layers"),
])
def test_impossible_settings_are_one_line_and_exit_2(capsys, argv, flag):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err, err


def test_nothing_fits_is_said_once(tmp_path, capsys):
    assert main(["generate", "--model", "70b", "--gpus", "1", "--vram", "8", "--cpu-ram", "16",
                 "--out", str(tmp_path / "o")]) == 3
    assert capsys.readouterr().err.count("nothing fits") == 1


def test_a_huge_global_batch_is_recommended_not_an_internal_error(capsys):
    rc = main(["recommend", "--model", "7b", "--gpus", "8", "--gpu", "a100-80g", "--global-batch", "1000000"])
    assert rc in (0, 3) and "internal error" not in capsys.readouterr().err
