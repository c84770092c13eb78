"""Fields by method, strategy and task (advisor/tui/form.py APPLIES): a field that does not apply is hidden and its
value, kept in the form, reaches neither the estimate nor the command line; it comes back when it applies again."""

from __future__ import annotations

import pytest
from textual.widgets import Select

import advisor.api
from advisor.errors import InputError
from advisor.tui import backend
from advisor.tui.app import WizardApp
from advisor.tui.form import ADVANCED, FIELD_FLAGS, WizardInputs, applies, in_effect
from advisor.tui.widgets.advanced import AdvancedSection
from advisor.tui.widgets.fields import Field

from .helpers import SIZE, run_async, settle
from .test_advanced import open_sections

BASE = WizardInputs(model="7B", vram="24", gpus="2")


@pytest.mark.parametrize("inputs, hidden, api_refuses", [
    # full fine-tuning: every LoRA/QLoRA detail; --base-dtype fp32 alone the API refuses for full
    (BASE.with_(strategy="zero3", method="full", lora_rank="64", lora_targets="q_proj", double_quant="no"),
     dict(base_dtype="fp32", lora_dropout="0.1", qlora_quantizer="lightning", freeze_layers="4"),
     dict(base_dtype="fp32")),
    # DDP: DeepSpeed's and FSDP's knobs; offload the spec refuses for DDP
    (BASE.with_(strategy="ddp"),
     dict(offload_optimizer="cpu", sub_group_size="1000", bucket_sizes="default", cp="2", sync_each_batch="yes",
          checkpoint_save="consolidated", loss_chunks="4"),
     dict(offload_optimizer="cpu")),
])
def test_a_field_that_does_not_apply_reaches_neither_the_estimate_nor_the_command(inputs, hidden, api_refuses):
    plain = backend.evaluate(inputs, recommender=None)
    assert not plain.errors and plain.estimate is not None
    with pytest.raises(InputError):    # what the hidden value would do if it were passed
        advisor.api.estimate("7B", vram=24, gpus=2, strategy=inputs.strategy, method=inputs.method, **{
            k: v for k, v in api_refuses.items()})
    out = backend.evaluate(inputs.with_(**hidden), recommender=None)
    assert not out.errors and out.estimate == plain.estimate and out.command == plain.command
    for name in (*hidden, "lora_rank", "double_quant"):
        assert not applies(name, out.inputs) and FIELD_FLAGS[name] not in out.command, name
    assert "--no-double-quant" not in out.command
    assert in_effect(inputs.with_(**hidden)) == in_effect(inputs)


def test_the_rules_follow_the_method_and_strategy():
    lora_z3 = BASE.with_(method="lora", strategy="zero3")
    assert all(applies(n, lora_z3) for n in ("lora_rank", "lora_dropout", "base_dtype", "offload_param",
                                             "sub_group_size", "bucket_sizes", "sp", "tp", "checkpoint_save"))
    assert not any(applies(n, lora_z3) for n in ("double_quant", "qlora_quantizer", "freeze_layers", "cp",
                                                 "fsdp_version", "dp_replicate", "sync_each_batch"))
    fsdp_grad_op = BASE.with_(strategy="fsdp-grad-op")
    assert applies("sync_each_batch", fsdp_grad_op) and applies("fsdp_version", fsdp_grad_op)
    assert not applies("offload_param", fsdp_grad_op)           # SHARD_GRAD_OP keeps whole parameters
    # the recommender may pick ZeRO-3 or FSDP: the save and sync fields apply; a picked strategy's knobs do not
    rec = BASE.with_(method="auto")
    assert applies("checkpoint_save", rec) and applies("double_quant", rec) and applies("freeze_layers", rec)
    assert not any(applies(n, rec) for n in ("offload_optimizer", "tp", "sub_group_size"))
    infer = BASE.with_(task="infer", method="qlora")
    assert applies("double_quant", infer) and applies("prompt_len", infer)
    assert not any(applies(n, infer) for n in ("lora_rank", "checkpoint_save", "margin", "strategy"))
    # every generated field has a rule but those that apply to any task, method and strategy
    assert set(ADVANCED) - {"nvme_path", "nvme_size", "expandable_segments", "batch_lengths"} <= {
        n for n in ADVANCED if not all(applies(n, v) for v in (lora_z3, fsdp_grad_op, rec, infer))}


def _shown(app) -> set[str]:
    return {row.field_name for row in app.query_one("#training-step").query(Field) if row.display}


def _sections(app) -> set[str]:
    return {s.id for s in app.query(AdvancedSection) if s.display}


@run_async
async def test_the_wizard_hides_what_does_not_apply_and_keeps_its_value():
    app = WizardApp(BASE, debounce=0.01, recommender=None)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("f3")
        await open_sections(pilot)
        shown = _shown(app)         # full fine-tuning, recommended: no LoRA details, no picked strategy's knobs
        assert {"optimizer", "checkpoint_save", "sync_each_batch"} <= shown
        assert not shown & {"lora_rank", "lora_dropout", "double_quant", "base_dtype", "offload_optimizer", "tp"}
        assert "advanced-strategy" not in _sections(app) and "advanced-search" in _sections(app)

        app.query_one("#field-method", Select).value = "lora"
        app.query_one("#field-strategy", Select).value = "zero3"
        await settle(pilot)
        shown = _shown(app)
        assert {"lora_rank", "lora_dropout", "base_dtype", "offload_optimizer", "sub_group_size", "sp"} <= shown
        assert not shown & {"double_quant", "qlora_quantizer", "cp", "fsdp_version", "sync_each_batch"}
        assert "advanced-strategy" in _sections(app)
        app.query_one("#field-offload_optimizer", Select).value = "cpu"
        await settle(pilot)
        assert "--offload-optimizer cpu" in app.outcome.command
        assert str(app.query_one("#advanced-strategy", AdvancedSection).title).endswith("(1 set)")

        app.query_one("#field-strategy", Select).value = "ddp"     # DDP: no offload (the spec refuses it)
        await settle(pilot)
        assert "offload_optimizer" not in _shown(app) and "advanced-strategy" not in _sections(app)
        assert not app.outcome.errors and app.outcome.estimate is not None
        assert "--offload-optimizer" not in app.outcome.command and "checkpoint_save" not in _shown(app)
        assert app.query_one("#field-offload_optimizer", Select).value == "cpu"      # kept in the form

        app.query_one("#field-strategy", Select).value = "zero3"   # back: the value applies again
        await settle(pilot)
        assert "offload_optimizer" in _shown(app) and "--offload-optimizer cpu" in app.outcome.command

        app.query_one("#field-task", Select).value = "infer"
        await settle(pilot)
        assert not _shown(app) & {"lora_rank", "optimizer", "strategy", "checkpoint_save"}
        assert "prompt_len" in _shown(app) and _sections(app) == {"advanced-training", "advanced-hardware"}
        await pilot.press("ctrl+q")
