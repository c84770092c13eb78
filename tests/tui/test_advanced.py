"""The wizard's Advanced areas: every flag of `dsadvise estimate` / `recommend` has a wizard field (generated from
the flag table), a value set there reaches the same API call the CLI makes, a bad value gets the CLI parser's own
words at that field, the estimate's notes are shown, and the command line shown reproduces what is shown."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from textual.widgets import Checkbox, Collapsible, Input, Select, Static

import advisor.api
from advisor.cli import build_parser, main
from advisor.cli.flags import FLAGS
from advisor.memory.model_states import LORA_16BIT_BASE_NOTE
from advisor.tui import backend
from advisor.tui.app import WizardApp
from advisor.tui.form import (ADVANCED, CLI_ONLY, FIELD_FLAGS, WizardInputs, field_for_flag, in_effect,
                               vram_text)
from advisor.tui.widgets.fields import Field
from advisor.tui.wording import wizard_words

from .helpers import SIZE, run_async, settle

# Flags of `dsadvise estimate` / `recommend` with no wizard field, on purpose (CLI-only switches). A new flag of
# those commands fails test_every_estimate_and_recommend_flag_has_a_wizard_field until it has a field (the flag
# table generates one) or is added here with its reason.
EXCLUDED = {
    "--json",      # output format: the wizard shows the result on screen
    "--profile",   # a measured-rates file, given to the wizard once at start (`dsadvise wizard --profile`)
    "--rules",     # extra rule files for the search: a command-line option
    "--preset",    # a shortcut filling method / strategy / offload / checkpointing, which the wizard shows as fields
}


def command_flags(command: str) -> set[str]:
    """Every option string of the real ``dsadvise <command>`` parser (the CLI's own argparse)."""
    parser = build_parser([command])
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return {s for a in sub._actions for s in a.option_strings if s.startswith("--") and s != "--help"}


def test_every_estimate_and_recommend_flag_has_a_wizard_field():
    assert set(CLI_ONLY) == EXCLUDED        # the wizard's own list cannot grow without this test saying why
    for command in ("estimate", "recommend"):
        for flag in sorted(command_flags(command) - EXCLUDED):
            name = field_for_flag(flag)
            assert name is not None and FIELD_FLAGS.get(name) == flag, (command, flag, name)
    # every flag that fills a spec field (generate's --framework included) is a wizard field
    for flag in FLAGS.values():
        if flag.spec_fields and flag.flag not in EXCLUDED:
            assert FIELD_FLAGS.get(field_for_flag(flag.flag)) == flag.flag, flag.flag
    # the generated fields take the table's choices, default and type
    assert ADVANCED["base_dtype"].kind == "choice" and ADVANCED["base_dtype"].choices == FLAGS["--base-dtype"].choices
    assert ADVANCED["sync_each_batch"].kind == "switch" and ADVANCED["tp"].kind == "text"
    assert ADVANCED["fsdp_version"].parse("2") == 2 and ADVANCED["tp"].parse("") == FLAGS["--tp"].default


def cli_error(argv: list[str]) -> str:
    """What ``dsadvise`` prints for a bad flag value after ``argument --flag:`` (exit 2)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    said = re.search(r"argument --[a-z-]+: (.*?)(?: \(see dsadvise \w+ --help\))?$", err.getvalue().strip())
    assert said, err.getvalue()
    return said.group(1)


async def open_sections(pilot) -> None:
    """Open every Advanced section, as a click on its title does (its fields mount then)."""
    from advisor.tui.widgets.advanced import AdvancedSection

    for section in pilot.app.query(AdvancedSection):
        section.collapsed = False
    for _ in range(100):
        await pilot.pause(0.02)
        if all(s.filled for s in pilot.app.query(AdvancedSection)):
            await pilot.pause()
            return
    raise AssertionError("the Advanced sections did not mount their fields")


def _error(app, name: str) -> str:
    row = app.query_one(f"#row-{name}", Field)
    return str(app.query_one(f"#error-{name}", Static).render()) if row.has_class("-invalid") else ""


@run_async
async def test_every_field_is_on_screen_and_a_bad_value_gets_the_cli_parsers_words():
    # LoRA under a picked ZeRO-3: the LoRA details and the strategy's layout fields apply (form.APPLIES)
    app = WizardApp(WizardInputs(model="7B", vram="24", method="lora", strategy="zero3"), debounce=0.01,
                    recommender=None)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert len(app.query(Collapsible)) >= 3 and all(c.collapsed for c in app.query(Collapsible))
        # a suggestion applied to closed sections ("what would fit" sets flags): the values and the error wait there
        app.apply_flags({"--nvme-path": "/local_nvme", "--tp": 0})
        await settle(pilot)
        tp_zero = cli_error(["estimate", "--model", "7B", "--vram", "24", "--tp", "0"])
        assert app.outcome.errors == {"tp": tp_zero}
        await open_sections(pilot)
        for name in FIELD_FLAGS:                   # every field the flag table names is on a step
            assert app.query_one(f"#field-{name}"), name
        assert app.query_one("#field-nvme_path", Input).value == "/local_nvme" and _error(app, "tp") == tp_zero
        for section in ("strategy", "hardware"):   # the titles count what is set (--tp, --nvme-path)
            assert str(app.query_one(f"#advanced-{section}", Collapsible).title).endswith("(1 set)")
        app.query_one("#field-tp", Input).value = ""
        await settle(pilot)
        assert _error(app, "tp") == "" and app.outcome.estimate is not None
        for name, flag, text in (("tp", "--tp", "0"), ("lora_dropout", "--lora-dropout", "abc"),
                                 ("nvme_size", "--nvme-size", "lots")):
            expected = cli_error(["estimate", "--model", "7B", "--vram", "24", flag, text])
            app.query_one(f"#field-{name}", Input).value = text
            await settle(pilot)
            assert _error(app, name) == expected and app.outcome.errors[name] == expected
            assert app.outcome.estimate is None
            app.query_one(f"#field-{name}", Input).value = ""
            await settle(pilot)
            assert _error(app, name) == "" and app.outcome.estimate is not None
        # an error the API raises about a generated flag lands at its field too: --tp on one GPU
        app.query_one("#field-strategy", Select).value = "zero3"
        app.query_one("#field-tp", Input).value = "2"
        await settle(pilot)
        with pytest.raises(advisor.api.InputError) as api_error:
            advisor.api.estimate("7B", vram=24, strategy="zero3", tp=2)
        assert api_error.value.field == "--tp"
        assert _error(app, "tp") == wizard_words(str(api_error.value).removeprefix("--tp: "))   # its flags worded
        await pilot.press("ctrl+q")


A100 = WizardInputs(model="llama-3.1-8b", gpu="a100-80g", vram=vram_text("a100-80g"), gpus="1")


@run_async
async def test_lora_base_dtype_fp32_set_in_the_wizard_is_the_apis_estimate_and_notes_are_shown():
    inputs = A100.with_(gpu="h100-sxm", vram=vram_text("h100-sxm"), gpus="8", method="lora", strategy="ddp")
    app = WizardApp(inputs, debounce=0.01, recommender=None)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        given = dict(model="llama-3.1-8b", gpu="h100-sxm", gpus=8, method="lora", strategy="ddp", seq_len=2048)
        sixteen = app.outcome.estimate
        assert sixteen == advisor.api.estimate(**given)
        # what the estimate assumes (the 16-bit LoRA base; NCCL's NVLS buffers of an unstated torch) is said in the
        # wizard too, on F4 (Why), in its words, with the step time's assumptions
        assert any(n.startswith(LORA_16BIT_BASE_NOTE) for n in sixteen.notes)
        assert any(n.startswith("NCCL NVLink-SHARP buffers") for n in sixteen.notes)
        await pilot.press("f4")
        details = " ".join(str(app.query_one("#rec-details", Static).render()).split())
        assert app.outcome.assumed[0].startswith("sequence length 2048")    # the CLI's own note on it, said too
        for said in (*app.outcome.assumed, *sixteen.notes, *sixteen.step_time.assumptions):
            assert " ".join(wizard_words(said).split()) in details, said
        assert "notes and assumptions" in str(app.query_one("#memory-status", Static).render())

        await pilot.press("f3")
        await open_sections(pilot)
        app.query_one("#field-base_dtype", Select).value = "fp32"
        await settle(pilot)
        fp32 = app.outcome.estimate
        assert fp32 == advisor.api.estimate(**given, base_dtype="fp32")
        assert fp32.per_gpu.total > sixteen.per_gpu.total          # the fp32 base holds twice the bytes
        assert not any(n.startswith(LORA_16BIT_BASE_NOTE) for n in fp32.notes)   # given, not assumed
        assert str(app.query_one("#advanced-training", Collapsible).title).endswith("(1 set)")
        # a stated torch: its wheels' NCCL sizes the NVLS buffers (a text field, checked as the CLI checks it)
        app.query_one("#field-torch_version", Input).value = "2.2"
        await settle(pilot)
        stated = app.outcome.estimate
        assert stated == advisor.api.estimate(**given, base_dtype="fp32", torch_version="2.2") and stated != fp32
        assert "--base-dtype fp32" in app.outcome.command and "--torch-version 2.2" in app.outcome.command
        assert "--torch-version 2.2" in " ".join(str(app.query_one("#cli-command", Static).render()).split())
        await pilot.press("ctrl+q")


@run_async
async def test_sync_each_batch_with_fsdp_reaches_estimate_preview_and_command_line():
    inputs = A100.with_(gpus="4", strategy="fsdp-full", global_batch="32", framework="hf-trainer")
    app = WizardApp(inputs, debounce=0.01, recommender=None)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        given = dict(model="llama-3.1-8b", gpu="a100-80g", gpus=4, strategy="fsdp-full", global_batch=32,
                     seq_len=2048)
        kept = app.outcome.estimate
        assert kept == advisor.api.estimate(**given)
        await pilot.press("f3")
        await open_sections(pilot)
        app.query_one("#field-sync_each_batch", Checkbox).value = True
        await settle(pilot)
        synced = app.outcome.estimate
        assert synced == advisor.api.estimate(**given, sync_each_batch=True)
        assert synced.per_gpu.total < kept.per_gpu.total            # no unsharded gradients under no_sync
        sync_note = next(n for n in synced.notes if n.startswith("--sync-each-batch"))
        await pilot.press("f4")
        details = " ".join(str(app.query_one("#rec-details", Static).render()).split())
        assert " ".join(wizard_words(sync_note).split()) in details and "micro-batches reduce-scatters" in details
        # the generated files carry it: the HF Trainer's accelerator_config
        assert "sync_each_batch" in app.preview.texts["framework"]
        # the command line shown is `dsadvise estimate` with the same flags, and it gives the same estimate
        command = app.outcome.command
        assert "--sync-each-batch" in command and "--strategy fsdp-full" in command
        await pilot.press("f5")
        await pilot.click("#copy-command")                 # Copy: the command on the clipboard
        assert app.clipboard == command and command in " ".join(
            str(app.query_one("#cli-command", Static).render()).split())
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(shlex.split(command)[1:] + ["--json"]) == 0
        said = json.loads(out.getvalue())
        seq_note = said["notes"].pop(0)        # the wizard says the assumed sequence length beside the model (F1)
        assert seq_note.startswith("sequence length 2048") and seq_note in app.outcome.model_note
        assert said == synced.to_json_dict()
        await pilot.press("ctrl+q")


def test_search_fields_reach_the_recommender_as_recommend_passes_them():
    """--margin and --max-micro-batch go to advisor.recommend.recommend as `dsadvise recommend` passes them; the
    command line shown parses back to the same values."""
    seen = {}

    def recorder(model, hw, template, **kwargs):
        seen.update(kwargs, template=template)
        return None

    out = backend.evaluate(A100.with_(margin="0.2", max_micro_batch="4", offload_activations="yes"),
                           recommender=recorder)
    assert seen["margin"] == 0.2 and seen["max_micro_batch"] == 4 and seen["template"].offload_activations
    args = build_parser(["recommend"]).parse_args(shlex.split(out.command)[1:])
    assert (args.margin, args.max_micro_batch, args.offload_activations, args.model) == (0.2, 4, True, "llama-3.1-8b")


def test_recommendation_with_advanced_fields_is_the_apis():
    """LoRA with --base-dtype fp32 and --margin 0.1 set in the wizard: the recommendation shown is
    advisor.recommend.recommend's for the same problem (built here from the API, as `dsadvise recommend` does)."""
    from advisor.api import build_hardware, build_training
    from advisor.catalog.models import resolve_model
    from advisor.recommend import recommend

    hw = build_hardware(1, 1, None, "a100-80g")
    model = resolve_model("llama-3.1-8b")
    for base, margin in (("16-bit", None), ("fp32", 0.1)):
        fields = {"base_dtype": base} if margin is None else {"base_dtype": base, "margin": f"{margin}"}
        out = backend.evaluate(A100.with_(method="lora", **fields))
        same = recommend(model, hw, build_training(hw, seq_len=2048, method="lora", base_dtype=base), method="lora",
                         precision="auto", checkpointing="auto", margin=margin)
        timing = {"search_ms"}          # the search's own wall time, the one field that differs run to run
        assert out.recommendation.model_dump(exclude=timing) == same.model_dump(exclude=timing) and same.found
        assert out.estimate == same.estimate
        # the 16-bit base is said as an assumption only when it is one
        assert (LORA_16BIT_BASE_NOTE in same.assumptions) == (base == "16-bit")


TEXT = st.one_of(st.sampled_from(["", "0", "-1", "1", "2", "0.5", "1e9", "nan", "inf", "abc", "4.39", "2.2", " 3 "]),
                 st.text(max_size=8))


def _advanced_value(field):
    return st.sampled_from(field.choices) if field.choices else TEXT


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.sampled_from(["recommended", "zero3", "fsdp-full", "ddp"]),
       st.sampled_from(["full", "lora", "qlora"]))
def test_any_advanced_value_gives_an_outcome_never_an_exception(data, strategy, method):
    """Whatever a few generated fields hold, evaluate answers (an estimate, or errors by field) and preview renders."""
    names = data.draw(st.sets(st.sampled_from(sorted(ADVANCED)), min_size=1, max_size=3))
    values = {name: data.draw(_advanced_value(ADVANCED[name]), label=name) for name in sorted(names)}
    out = backend.evaluate(WizardInputs(model="7B", vram="24", gpus="2", strategy=strategy, method=method,
                                        global_batch="8").with_(**values), recommender=None)
    assert set(out.errors) <= set(WizardInputs.field_names())
    assert out.estimate is not None or out.errors or out.general_error
    assert set(backend.preview(out).texts) == set(backend.PREVIEW_KEYS)


def test_a_cross_field_api_error_lands_at_the_flag_it_starts_with():
    """A spec's cross-field check has no field of its own; its message starts with the flag it is about (--cp)."""
    with pytest.raises(advisor.api.InputError) as api_error:
        advisor.api.estimate("7B", vram=24, gpus=2, strategy="fsdp-full", cp=2)
    assert api_error.value.field is None and str(api_error.value).startswith("--cp ")
    out = backend.evaluate(WizardInputs(model="7B", vram="24", gpus="2", strategy="fsdp-full").with_(cp="2"),
                           recommender=None)
    assert out.errors == {"cp": str(api_error.value)} and not out.general_error


@pytest.mark.parametrize("strategy,advanced", [
    ("fsdp-full", dict(tp="2", fsdp_version="2")),     # estimate --strategy ... (--bucket-sizes: DeepSpeed's only)
    ("recommended", dict(base_dtype="fp32", lora_dropout="0.1")),                  # recommend (the real one)
])
def test_preview_is_what_generate_writes_for_the_command_shown(tmp_path, strategy, advanced):
    """Advanced fields set (a picked strategy's layout; a LoRA base in fp32 with dropout, recommended): the files
    previewed are those `dsadvise generate` writes from the command line the wizard shows."""
    inputs = WizardInputs(model="llama-3.1-8b", gpu="h100-sxm", vram=vram_text("h100-sxm"), gpus="8",
                          global_batch="32", strategy=strategy, method="full" if strategy != "recommended" else "lora")
    out = backend.evaluate(inputs.with_(**advanced), recommender=None if strategy != "recommended" else backend.LOAD)
    shown = backend.preview(out)
    words = shlex.split(out.command)
    assert words[:2] == ["dsadvise", "estimate" if strategy != "recommended" else "recommend"]
    for name, value in advanced.items():
        assert f"{FIELD_FLAGS[name]} {value}" in out.command
    if strategy != "recommended":
        assert out.estimate.strategy.tp_size == 2 and "parallelism_config_tp_size: 2" in shown.texts["accelerate"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["generate", *words[2:], "--out", str(tmp_path), "--no-engine-check"]) == 0
    assert sorted(shown.files) == sorted(p.name for p in tmp_path.iterdir())
    for name in shown.files:
        assert shown.files[name] == (tmp_path / name).read_text(), name


def test_the_command_shown_starts_the_wizard_with_the_same_fields():
    """`dsadvise wizard` takes the flags of the command line the wizard shows (F5): its fields start as they were."""
    from advisor.cli.wizard import initial_inputs

    inputs = WizardInputs(model="llama-3.1-8b", gpu="a100-80g", vram=vram_text("a100-80g"), gpus="4",
                          global_batch="32", method="lora", precision="bf16", checkpointing="full", loss="chunked",
                          lora_targets="q_proj,v_proj", double_quant="no", strategy="fsdp-full").with_(
        base_dtype="fp32", sync_each_batch="yes", lora_dropout="0.05", fsdp_version="2", tp="2", torch_version="2.4")
    out = backend.evaluate(inputs, recommender=None)
    assert not out.errors and out.command.startswith("dsadvise estimate ")
    args = build_parser(["wizard"]).parse_args(["wizard", *shlex.split(out.command)[2:]])
    # every field that applies comes back; QLoRA's double quantization, set but hidden under LoRA, is not passed
    assert "--no-double-quant" not in out.command
    assert initial_inputs(args) == in_effect(inputs) == inputs.with_(double_quant="yes")
    assert initial_inputs(build_parser(["wizard"]).parse_args(["wizard"])) == WizardInputs()   # nothing given
