"""The wizard's backend: fields -> the same API calls as the CLI, errors by field, never an exception."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from advisor.api import estimate
from advisor.tui import backend
from advisor.tui.form import (METHOD_CHOICES, PRECISION_CHOICES, STRATEGY_CHOICES, TASK_CHOICES, WizardInputs, check_field,
                              field_for_flag, vram_text)

GIB = 1024**3
BASE = WizardInputs(model="llama-3.1-8b", gpu="a100-80g", vram=vram_text("a100-80g"), gpus="4")


def test_nothing_given_lists_what_is_missing():
    out = backend.evaluate(WizardInputs(), recommender=None)
    assert out.missing == ["a model", "a GPU or its memory (VRAM)"]
    assert out.estimate is None and not out.ready and not out.errors


def test_estimate_only_equals_the_cli_default_strategy():
    out = backend.evaluate(BASE.with_(strategy="zero3"), recommender=None)
    assert out.ready and out.strategy_source == "chosen"
    assert out.recommender_note == "the recommender is off"
    same = estimate("llama-3.1-8b", gpus=4, gpu="a100-80g", strategy="zero3", seq_len=2048)  # blank: 2048 here
    assert out.estimate == same       # the filled-in VRAM is the GPU's own: --gpu without --vram


def test_blank_sequence_length_is_the_cli_default_and_said():
    """As `--seq-len` not given: the smaller of 2048 and the model's context (gpt2: 1024), said at the model."""
    out = backend.evaluate(BASE.with_(model="gpt2", strategy="single", gpus="1"), recommender=None)
    assert out.ready and out.problem["seq_len"] == 1024 and out.estimate.strategy.seq_len == 1024
    assert "sequence length 1024" in out.model_note
    given = backend.evaluate(BASE.with_(model="gpt2", strategy="single", gpus="1", seq_len="512"), recommender=None)
    assert given.problem["seq_len"] == 512 and "sequence length" not in given.model_note


def test_default_strategy_without_recommender():
    out = backend.evaluate(BASE, recommender=None)
    assert out.estimate.strategy.name == "ddp" and out.strategy_source == "default"


@pytest.mark.parametrize("field,text,words", [
    ("gpus", "0", "at least 1"), ("gpus", "two", "whole number"), ("vram", "-3", "positive"),
    ("seq_len", "0", "at least 1"), ("global_batch", "x", "whole number"), ("cpu_ram", "lots", "GiB"),
])
def test_bad_numbers_are_errors_at_their_field(field, text, words):
    assert words in check_field(field, text)
    out = backend.evaluate(BASE.with_(**{field: text}), recommender=None)
    assert words in out.errors[field] and out.estimate is None


def test_optional_fields_may_be_blank():
    for name in ("vram", "cpu_ram", "global_batch"):
        assert check_field(name, "") is None


def test_unknown_model_is_an_error_at_the_model_field():
    out = backend.evaluate(BASE.with_(model="lama-3.1-8b"), recommender=None)
    assert "unknown model" in out.errors["model"] and "did you mean" in out.errors["model"]


def test_api_range_errors_land_at_the_field():
    out = backend.evaluate(BASE.with_(gpus="100"), recommender=None)   # HardwareSpec: at most 64 per node
    assert "gpus" in out.errors and out.estimate is None
    assert field_for_flag("--gpus") == "gpus" and field_for_flag("--nope") is None


def test_custom_vram_without_a_gpu():
    out = backend.evaluate(WizardInputs(model="7B", vram="24", gpus="2", strategy="zero3"), recommender=None)
    assert out.estimate.hardware.vram_bytes == 24 * GIB and out.estimate.hardware.gpu is None


def test_a_recommender_bug_is_not_hidden():
    # Bad input and broken rule files are AdvisorErrors (below); anything else is a bug: it reaches the
    # wizard's error boundary (app.py) instead of being dressed up as "the recommender failed".
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        backend.evaluate(BASE, recommender=broken)


def test_recommender_is_called_like_the_cli():
    seen = {}

    def fake(model, hw, template, **kwargs):
        seen.update(model=model, hw=hw, template=template, **kwargs)
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        backend.evaluate(BASE.with_(method="auto", precision="fp16", checkpointing="full"), recommender=fake)
    assert seen["model"].name == "llama-3.1-8b" and seen["hw"].world_size == 4
    assert seen["method"] == "auto" and seen["precision"] == "fp16" and seen["checkpointing"] == "full"
    assert seen["template"].seq_len == 2048 and seen["template"].optimizer == "adamw"


def test_real_recommender():
    out = backend.evaluate(BASE)      # the real advisor.recommend: a broken import fails here, never a skip
    assert out.recommendation is not None, out.recommender_note
    if out.recommendation.found:
        assert out.strategy_source == "recommended" and out.estimate == out.recommendation.estimate


def test_preview_before_inputs_are_complete():
    shown = backend.preview(backend.evaluate(WizardInputs(), recommender=None))
    assert shown.texts == dict.fromkeys(backend.PREVIEW_KEYS) and "model" in shown.note


def test_recommender_input_errors_land_at_their_field_others_fall_back():
    from advisor.errors import AdvisorError, InputError

    def bad_rank(*args, **kwargs):
        raise InputError("LoRA rank too large for this model", field="--lora-rank")

    out = backend.evaluate(BASE, recommender=bad_rank)
    assert out.errors == {"lora_rank": "LoRA rank too large for this model"} and out.estimate is None

    def broken_rules(*args, **kwargs):
        raise AdvisorError("rules/strategy.yaml: line 3: unknown fact")

    out = backend.evaluate(BASE, recommender=broken_rules)
    assert not out.errors and out.estimate is not None and "unknown fact" in out.recommender_note



def test_preview_renders_what_is_shown():
    import json

    import yaml

    shown = backend.preview(backend.evaluate(BASE.with_(strategy="zero3", global_batch="32"), recommender=None))
    acc, ds = yaml.safe_load(shown.texts["accelerate"]), json.loads(shown.texts["deepspeed"])
    assert acc["distributed_type"] == "DEEPSPEED" and acc["num_processes"] == 4
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["train_batch_size"] == 32 and ds["gradient_accumulation_steps"] == 8     # 32 = 1 x 8 x 4 GPUs
    assert "accelerate_config.yaml" in shown.files and "README.md" in shown.files


def test_preview_without_deepspeed_and_refused_batches():
    fsdp = backend.preview(backend.evaluate(BASE.with_(strategy="fsdp-full"), recommender=None))
    assert fsdp.texts["deepspeed"] is None and "No DeepSpeed JSON" in fsdp.note and fsdp.texts["accelerate"]
    odd = backend.evaluate(BASE.with_(strategy="zero2", global_batch="30"), recommender=None)
    assert "not a multiple of micro-batch 1 x 4 GPU(s)" in odd.errors["global_batch"]     # advisor.batching
    assert backend.preview(odd).texts["accelerate"] is None


def test_save_refuses_a_non_empty_folder_without_force(tmp_path):
    from advisor.errors import AdvisorError

    out = backend.evaluate(BASE.with_(strategy="zero2"), recommender=None)
    shown = backend.preview(out)
    assert {p.name for p in backend.save(out, shown, str(tmp_path / "a"), force=False)} == set(shown.files)
    with pytest.raises(AdvisorError, match="not empty"):
        backend.save(out, shown, str(tmp_path / "a"), force=False)
    assert backend.save(out, shown, str(tmp_path / "a"), force=True)


TEXT = st.one_of(st.sampled_from(["", "0", "-1", "1", "8", "24", "1e9", "nan", "inf", "7B", "2T", "abc", " 4 ",
                                  "80GiB", "llama-3.1-8b", "gpt2", "/nonexistent/config.json", "\x00"]),
                 st.text(max_size=12))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=TEXT, vram=TEXT, gpus=TEXT, nodes=TEXT, cpu_ram=TEXT, seq_len=TEXT, micro_batch=TEXT,
       global_batch=TEXT, lora_rank=TEXT, prompt_len=TEXT, lora_targets=TEXT, task=st.sampled_from(TASK_CHOICES),
       method=st.sampled_from(METHOD_CHOICES), strategy=st.sampled_from(STRATEGY_CHOICES),
       precision=st.sampled_from(PRECISION_CHOICES))
def test_any_field_text_gives_errors_never_exceptions(**fields):
    """Whatever is typed, evaluate returns an Outcome: an estimate, or errors/missing by field."""
    out = backend.evaluate(WizardInputs(gpu="", **fields), recommender=None)
    assert set(out.errors) <= set(WizardInputs.field_names())
    assert out.estimate is not None or out.errors or out.missing or out.general_error
    shown = backend.preview(out)
    assert set(shown.texts) == set(backend.PREVIEW_KEYS)


def test_model_from_a_config_json_path(tmp_path):
    import json

    from advisor.datafiles import load_data

    entry = next(m for m in load_data("models.yaml")["models"] if m["name"] == "qwen2.5-0.5b")
    path = tmp_path / "my-model" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(entry["config"]))
    out = backend.evaluate(WizardInputs(model=str(path), vram="24", strategy="single"), recommender=None)
    assert out.estimate.model.source == "config" and out.estimate.model.name == "my-model"
    assert str(path) in out.model_note
