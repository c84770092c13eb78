"""``dsadvise recommend``: exit codes, one-line errors, the report and the JSON object."""

from __future__ import annotations

import json
import subprocess
import sys

from advisor import exit_codes
from advisor.cli import main


def cli(capsys, *argv):
    code = main(["recommend", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_fits_exit_0_with_a_readable_report(capsys):
    code, out, err = cli(capsys, "--model", "7B", "--gpus", "4", "--vram", "24")
    assert code == exit_codes.OK and not err
    for part in ("Recommendation  zero", "Per GPU", "p=parameters", "step time ~", "Why", "Runners-up", "Advice",
                 "ddp"):
        assert part in out


def test_json_object(capsys):
    code, out, _ = cli(capsys, "--model", "1.3B", "--gpus", "8", "--gpu", "v100-32g", "--global-batch", "256",
                       "--json")
    assert code == 0
    js = json.loads(out)
    assert set(js) >= {"recommendation", "estimate", "step_time_seconds", "reasons", "alternatives", "rules_fired"}
    rec = js["recommendation"]
    for field in ("name", "backend", "zero_stage", "fsdp_sharding", "offload_optimizer", "offload_param",
                  "precision", "activation_checkpointing", "micro_batch_size", "seq_len", "method",
                  "gradient_accumulation_steps"):
        assert field in rec
    assert rec["fp16"]["initial_scale_power"] == 16 and rec["fp16"]["min_loss_scale"] == 1
    assert js["estimate"]["per_gpu"]["total"] <= js["search"]["usable_vram_bytes"]
    assert js["step_time_seconds"] > 0
    alt = js["alternatives"][0]
    assert set(alt) == {"strategy", "fits", "step_time_seconds", "rejected_because", "tokens_per_second"}
    assert all(set(f) >= {"rule", "file", "effect"} for f in js["rules_fired"])
    assert "suggestions" not in js


def test_nothing_fits_exit_3_with_suggestions(capsys):
    code, out, _ = cli(capsys, "--model", "7B", "--vram", "24", "--cpu-ram", "64", "--json")
    assert code == exit_codes.NOTHING_FITS == 3
    js = json.loads(out)
    assert js["recommendation"] is None and js["suggestions"]
    assert {"--method": "qlora"} in [s["flags"] for s in js["suggestions"]]
    code, out, _ = cli(capsys, "--model", "7B", "--vram", "24", "--cpu-ram", "64")
    assert code == 3 and "Nothing fits." in out and "What would fit" in out and "--method qlora" in out


def test_bad_input_exit_2_one_line(capsys):
    for argv, words in [
        (["--model", "llama-9000", "--vram", "24"], "unknown model"),
        (["--model", "1.3B", "--gpu", "v100-32g", "--precision", "bf16"], "bf16-needs-hardware"),
        (["--model", "gpt2", "--vram", "24", "--margin", "2"], "--margin"),
        (["--model", "gpt2", "--vram", "24", "--global-batch", "3", "--gpus", "4"], "--global-batch"),
    ]:
        code, out, err = cli(capsys, *argv)
        assert code == exit_codes.BAD_INPUT, argv
        assert err.startswith("dsadvise: error: ") and err.count("\n") == 1 and words in err
        assert "Traceback" not in err and not out


def test_bad_rule_file_exit_2_naming_file_rule_and_field(capsys, tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("rules:\n  - id: typo\n    description: d\n    when: candidate.zero_stag == 3\n    advise: x\n")
    code, _, err = cli(capsys, "--model", "gpt2", "--vram", "24", "--rules", str(bad))
    assert code == 2 and err.count("\n") == 1
    assert f"{bad}: rule 'typo': when: unknown fact 'candidate.zero_stag'" in err
    assert "did you mean candidate.zero_stage" in err
    bad.write_text("rules:\n  - id: oops\n    description: d\n    when: hardware.nodes >> 1\n    advise: x\n")
    code, _, err = cli(capsys, "--model", "gpt2", "--vram", "24", "--rules", str(bad))
    assert code == 2 and "rule 'oops': when: unexpected '>' at column 17" in err


def test_inference(capsys):
    code, out, _ = cli(capsys, "--model", "llama-2-70b", "--gpus", "8", "--gpu", "a100-80g", "--task", "infer",
                       "--json")
    js = json.loads(out)
    assert code == 0 and js["recommendation"]["layout"] == "device-map-auto"
    assert {x["layout"] for x in js["estimate"]["inference"]} == {"replica-per-gpu", "device-map-auto"}


def test_recommend_imports_no_heavy_module():
    probe = ("import sys\nfrom advisor.cli import main\n"
             "main(['recommend', '--model', '7B', '--gpus', '4', '--vram', '24', '--json'])\n"
             "heavy = [m for m in ('torch', 'deepspeed', 'transformers', 'accelerate') if m in sys.modules]\n"
             "print('HEAVY', heavy, file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in proc.stderr, proc.stderr[-500:]
