"""--batch-lengths variable (issue 17, helper L; advisor/memory/batch_lengths.py): a run whose batches are padded to
their own longest sample is estimated at the grid length with the largest per-GPU total, whole.

The shape is the corpus row peft-mc-llama-3.2-3b-full-l40s (Llama-3.2-3B full fine-tuning, pure bf16, 4 x up to
768 tokens, one L40S; PEFT's method comparison pads each batch to its longest sample). Its known values, printed
by `python benchmarks/gpu_memory_corpus.py` before this feature and by a plain loop of ``estimate(seq_len=n)`` over
n = 192, 216, ..., 768 (session 10): reserved 34.64 GiB at 768 tokens, 37.73 GiB at 720 (the grid's largest),
allocated 33.69 GiB at 768.
"""

from __future__ import annotations

import json
import textwrap

import pytest

from advisor.api import estimate

GIB = 2 ** 30
ROW = dict(gpus=1, gpu="l40s", strategy="single", method="full", precision="pure-bf16", micro_batch=4,
           seq_len=768, checkpointing="none", loss="plain", torch_version="2.13", transformers_version="5.13")


@pytest.fixture(scope="module")
def fixed():
    return estimate("llama-3.2-3b", **ROW)


@pytest.fixture(scope="module")
def variable():
    return estimate("llama-3.2-3b", batch_lengths="variable", **ROW)


def test_the_grid_is_every_32nd_of_the_maximum_from_a_quarter_in_multiples_of_8():
    from advisor.memory.batch_lengths import padded_lengths

    assert padded_lengths(768) == tuple(range(192, 769, 24))            # 768 / 32 = 24 tokens, all multiples of 8
    grid = padded_lengths(1000)                                          # 1000 / 32 = 31.25: rounded up to 8
    assert grid[0] == 256 and grid[1] == 288 and grid[-1] == 1000 and len(grid) == 25
    assert padded_lengths(20) == (8, 16, 20)                             # short: the maximum itself stays in


def test_fixed_is_unchanged(fixed):
    assert fixed.batch_lengths is None and "batch_lengths" not in fixed.to_json_dict()
    assert round(fixed.per_gpu.reserved / GIB, 2) == 34.64          # the corpus table before the feature
    assert round(fixed.per_gpu.allocated / GIB, 2) == 33.69


def test_variable_takes_the_whole_estimate_at_the_worst_padded_length(fixed, variable):
    info = variable.batch_lengths
    assert info is not None and info.peak_seq_len == 720 < 768 and info.allocated_seq_len == 768
    assert round(variable.per_gpu.reserved / GIB, 2) == 37.73       # above 34.64 at the stated maximum
    assert variable.per_gpu.total > fixed.per_gpu.total
    assert sum(variable.per_gpu.breakdown.values()) == variable.per_gpu.total
    at_720 = estimate("llama-3.2-3b", **{**ROW, "seq_len": 720}).per_gpu
    assert variable.per_gpu.total == at_720.total and variable.per_gpu.breakdown == at_720.breakdown
    assert variable.per_gpu.allocated == fixed.per_gpu.allocated      # the largest allocated: at 768
    assert variable.per_gpu.allocated <= variable.per_gpu.reserved
    assert variable.strategy.seq_len == 768                            # the stated maximum, echoed
    assert variable.headroom_bytes == variable.hardware.vram_bytes - variable.per_gpu.total
    assert variable.step_time is not None and variable.step_time.seconds == fixed.step_time.seconds
    said = " ".join(variable.notes)
    assert "peak is at 720 tokens" in said and "a grid" in said and "expandable_segments:True" in said
    from advisor.estimate_report import render_estimate

    assert "x seq 768 at most, each batch padded to its longest (peak at 720)" in render_estimate(variable)
    assert json.loads(json.dumps(variable.to_json_dict()))["batch_lengths"]["grid"][:2] == [192, 216]


def test_expandable_segments_reserve_follows_allocated_across_lengths():
    est = estimate("llama-3.2-3b", batch_lengths="variable", expandable_segments=True, **ROW)
    assert est.batch_lengths.peak_seq_len == 768                      # monotonic in the length in the model
    assert any("expandable_segments: in dsadvise's allocator model" in n for n in est.notes)


@pytest.mark.parametrize("argv, needle", [
    (["--batch-lengths", "sometimes"], "--batch-lengths"),
    (["--batch-lengths", "variable", "--task", "infer"], "--batch-lengths"),
])
def test_bad_input_is_one_line(capsys, argv, needle):
    from advisor.cli import main

    try:
        code = main(["estimate", "--model", "gpt2", "--vram", "24", *argv])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err and needle in err


def _check(capsys, tmp_path, name: str, text: str, *flags: str) -> tuple[dict, dict]:
    from advisor.cli import main

    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    main(["check", str(path), "--model", "llama-3.2-3b", "--gpu", "l40s", "--no-engine-check", "--json", *flags])
    report = json.loads(capsys.readouterr().out)
    verdict = next(f for f in report["findings"] if "estimate" in f)
    read = {f["setting"]: f["message"] for f in report["findings"] if f["message"].startswith("read:")}
    return verdict["estimate"], read


LF = """\
    model_name_or_path: meta-llama/Llama-3.2-3B
    stage: sft
    do_train: true
    finetuning_type: full
    dataset: alpaca_en_demo
    cutoff_len: 768
    per_device_train_batch_size: 4
    disable_gradient_checkpointing: true
    pure_bf16: true
    """


def test_check_reads_llamafactory_without_packing_as_variable(capsys, tmp_path):
    """LLaMA-Factory 0.9.5 data_args.py: packing None is on only in pre-training; the SFT collator pads each batch."""
    est, read = _check(capsys, tmp_path, "lf.yaml", LF)
    assert "--batch-lengths variable" in est["command"]
    assert "not set at stage sft" in read["packing"] and "--batch-lengths variable" in read["packing"]
    same = dict(gpus=1, gpu="l40s", method="full", precision="pure-bf16", micro_batch=4, seq_len=768,
                checkpointing="none", strategy="single")
    assert est["per_gpu_bytes"] == estimate("llama-3.2-3b", batch_lengths="variable", **same).per_gpu.total
    packed, read = _check(capsys, tmp_path, "lf_packed.yaml", LF.rstrip(" ") + "    packing: true\n")
    assert "--batch-lengths" not in packed["command"] and "--batch-lengths" not in read["packing"]
    assert packed["per_gpu_bytes"] == estimate("llama-3.2-3b", **same).per_gpu.total


@pytest.mark.parametrize("extra, variable", [("", True), ("pad_to_sequence_len: true\n", False),
                                             ("sample_packing: true\n", False)])
def test_check_reads_axolotl_packing_and_padding(capsys, tmp_path, extra, variable):
    """axolotl: without sample_packing / pad_to_sequence_len the collator pads each batch to its longest sample."""
    est, read = _check(capsys, tmp_path, "axolotl.yaml", "base_model: meta-llama/Llama-3.2-3B\nsequence_len: 768\n"
                       "micro_batch_size: 4\nbfloat16: true\n" + extra)
    assert ("--batch-lengths variable" in est["command"]) == variable
    assert len(read) == 1 and ("--batch-lengths variable" in next(iter(read.values()))) == variable


def test_recommend_advises_expandable_segments_for_variable_lengths(capsys):
    """rules/allocator.yaml variable-lengths-expandable-segments fires with --batch-lengths variable only, and the
    recommendation repeats the estimate's variable-length notes among its assumptions."""
    from advisor.cli import main

    def run(*extra: str) -> dict:
        main(["recommend", "--model", "gpt2", "--vram", "24", "--seq-len", "32", "--json", *extra])
        return json.loads(capsys.readouterr().out)

    fired = lambda rec: {f["rule"] for f in rec["rules_fired"]}   # noqa: E731
    plain, variable = run(), run("--batch-lengths", "variable")
    expandable = run("--batch-lengths", "variable", "--expandable-segments")
    assert "variable-lengths-expandable-segments" not in fired(plain) | fired(expandable)
    assert "variable-lengths-expandable-segments" in fired(variable)
    assert variable["estimate"]["batch_lengths"]["grid"] == [8, 16, 24, 32]
    assert any(a.startswith("--batch-lengths variable:") for a in variable["assumptions"])
    assert not any("--batch-lengths" in a for a in plain["assumptions"])


@pytest.mark.parametrize("data, variable", [
    ({"train_sampling_strategy": "group_by_length"}, True),
    ({"train_sampling_strategy": "batch_rebalance"}, True),
    ({"group_by_length": True}, True),                     # transformers 4's key
    ({"train_sampling_strategy": "random"}, False),         # the collator is the user's script's: not known
    ({}, False),
])
def test_check_reads_hf_trainer_grouping_by_length(data, variable):
    """TrainingArguments' samplers that group by length pay only with dynamic padding (transformers training_args.py);
    read by the HF Trainer's reader (advisor/render/read_keys.py, as `check` runs it)."""
    from advisor.render.read_keys import read_framework

    r = read_framework({"output_dir": "out", "bf16": True, **data}, "hf-trainer")
    assert (r.kwargs.get("batch_lengths") == "variable") == variable and bool(r.said) == variable


@pytest.mark.parametrize("data, variable", [({}, True), ({"packing": False}, True), ({"packing": True}, False),
                                            ({"padding_free": True}, False)])
def test_check_reads_trl_packing(data, variable):
    """TRL 1.16 SFTConfig: packing and padding_free default false; DataCollatorForLanguageModeling pads each batch to
    its longest sample (pad_to_multiple_of None off Neuron)."""
    from advisor.render.read_keys import read_framework

    r = read_framework({"output_dir": "out", "max_length": 512, **data}, "trl")
    assert (r.kwargs.get("batch_lengths") == "variable") == variable


def test_the_wizard_field_gives_the_cli_estimate():
    """The wizard generates the --batch-lengths field from the flag table (Advanced: training); its backend runs
    the same estimate as the CLI, notes included."""
    from advisor.tui import backend
    from advisor.tui.form import ADVANCED, WizardInputs

    assert ADVANCED["batch_lengths"].section == "training"
    inputs = WizardInputs(model="llama-3.2-3b", gpu="l40s", seq_len="768", micro_batch="4", precision="pure-bf16",
                          checkpointing="none", strategy="single").with_(batch_lengths="variable",
                                                                          torch_version="2.13",
                                                                          transformers_version="5.13")
    out = backend.evaluate(inputs, recommender=None)
    assert out.estimate is not None and out.estimate.batch_lengths.peak_seq_len == 720
    assert out.estimate == estimate("llama-3.2-3b", batch_lengths="variable", **ROW)


def test_check_of_generated_configs_keeps_the_variable_lengths(capsys, tmp_path):
    """generate writes batch_lengths into dsadvise.json; check of its accelerate YAML (which cannot hold padding) reads
    it there, so both give the same bytes; --batch-lengths on check overrides it."""
    from advisor.cli import main

    out = tmp_path / "run"
    main(["generate", "--model", "llama-3.2-3b", "--gpu", "l40s", "--seq-len", "768", "--micro-batch", "4",
          "--strategy", "single", "--precision", "pure-bf16", "--torch-version", "2.13", "--transformers-version",
          "5.13", "--batch-lengths", "variable", "--out", str(out), "--no-engine-check"])
    assert json.loads((out / "dsadvise.json").read_text())["training"]["batch_lengths"] == "variable"
    capsys.readouterr()

    def checked(*flags: str) -> dict:
        main(["check", str(out / "accelerate_config.yaml"), "--model", "llama-3.2-3b", "--gpu", "l40s",
              "--no-engine-check", "--json", *flags])
        return json.loads(capsys.readouterr().out)["estimate"]

    est, fixed = checked(), checked("--batch-lengths", "fixed")
    assert "--batch-lengths variable" in est["command"] and "--batch-lengths" not in fixed["command"]
    assert est["per_gpu_bytes"] >= fixed["per_gpu_bytes"]    # the YAML says mixed_precision no: read as fp32 here
