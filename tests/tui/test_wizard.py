"""The wizard driven by keyboard through Textual's pilot: the whole flow, inline errors, saving, quitting."""

from __future__ import annotations

import subprocess
import sys

import pytest
from textual.widgets import Input, OptionList, Select, Static

from advisor.tui.app import WizardApp
from advisor.tui.form import WizardInputs
from advisor.tui.widgets.fields import Field

from .helpers import SIZE, run_async, settle


def error_text(app, name: str) -> str:
    """The inline error shown under a field ("" when none), checking it is visible and marked."""
    row = app.query_one(f"#row-{name}", Field)
    if not row.error:
        return ""
    note = app.query_one(f"#error-{name}", Static)
    assert note.display and row.has_class("-invalid")
    return str(note.render())


async def replace_text(pilot, selector: str, text: str) -> None:
    """Focus a field and type over its content, as a user would (select-on-focus, then type)."""
    field = pilot.app.query_one(selector, Input)
    field.focus()
    await pilot.pause()
    field.value = ""
    if text:
        await pilot.press(*text)


@run_async
async def test_keyboard_flow_model_gpu_and_live_estimate():
    app = WizardApp(debounce=0.05, recommender=None)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.focused is app.query_one("#field-model")        # starts in the model field
        assert app.outcome.missing and app.outcome.estimate is None
        assert "a model" in str(app.query_one("#memory-verdict", Static).render())

        # Type part of a name: the catalog list narrows, the field points at it; Down + Enter picks.
        await pilot.press(*"3.1-8b")
        matches = app.query_one("#model-matches", OptionList)
        assert matches.option_count == 1
        await settle(pilot)
        assert "1 catalog match below" in error_text(app, "model")
        await pilot.press("down", "enter")
        assert app.query_one("#field-model", Input).value == "llama-3.1-8b"

        # Next step (Ctrl+N): the GPU picker has focus; Enter opens it, typing searches, Enter picks;
        # VRAM, bf16 and bandwidth fill in.
        await pilot.press("ctrl+n")
        assert app.query_one("#steps").active == "step-hardware"
        assert app.focused is app.query_one("#field-gpu", Select)
        await pilot.press("enter", *"a100-8", "enter")
        await settle(pilot)
        assert app.query_one("#field-gpu", Select).value == "a100-80g"
        assert app.query_one("#field-vram", Input).value == "79.35"
        assert "bf16 yes" in str(app.query_one("#gpu-info", Static).render())
        assert "2039 GB/s" in str(app.query_one("#gpu-info", Static).render())
        one_gpu = app.outcome.estimate
        assert one_gpu is not None and one_gpu.hardware.gpu == "a100-80g" and one_gpu.hardware.world_size == 1
        assert app.outcome.recommender_note == "the recommender is off"
        assert one_gpu.model.name in str(app.query_one("#model-note", Static).render())

        # Tab to GPUs per node and type 8 over it: the estimate follows (8-way DDP).
        await pilot.press("tab", "tab", "8")
        assert app.focused is app.query_one("#field-gpus")
        await settle(pilot)
        eight = app.outcome.estimate
        assert eight.hardware.world_size == 8 and eight.strategy.name == "ddp" and eight != one_gpu
        assert "ddp" in str(app.query_one("#memory-strategy", Static).render())

        # Pick a sharded strategy on the training step: the bar shows its (smaller) estimate.
        app.query_one("#field-strategy", Select).value = "zero3"
        await settle(pilot)
        assert app.outcome.estimate.strategy.name == "zero3"
        assert app.outcome.estimate.per_gpu.total < eight.per_gpu.total
        verdict = str(app.query_one("#memory-verdict", Static).render())
        assert ("FITS" in verdict) != ("DOES NOT FIT" in verdict)

        # Every step by F-key, Ctrl+N stops at the last, Ctrl+B goes back; the bindings are in the footer.
        for key, pane in (("f3", "training"), ("f4", "recommendation"), ("f5", "files"), ("ctrl+n", "files"),
                          ("ctrl+b", "recommendation"), ("f1", "model")):
            await pilot.press(key)
            assert app.query_one("#steps").active == f"step-{pane}"
        footer_keys = {b.binding.key for b in app.active_bindings.values() if b.binding.show}
        assert {"ctrl+n", "ctrl+b", "ctrl+s", "ctrl+r", "ctrl+q"} <= footer_keys

        await pilot.press("ctrl+q")
    assert app.return_code == 0


@run_async
async def test_invalid_input_is_shown_at_the_field_not_raised():
    app = WizardApp(WizardInputs(model="7B", vram="24"), debounce=0.05, recommender=None)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.outcome.estimate is not None
        await pilot.press("f2")
        await replace_text(pilot, "#field-gpus", "0")
        await pilot.pause()
        assert "at least 1" in error_text(app, "gpus")             # at once, before the debounce
        await settle(pilot)
        assert "at least 1" in app.outcome.errors["gpus"] and app.outcome.estimate is None
        assert "Fix the fields" in str(app.query_one("#memory-status", Static).render())

        await replace_text(pilot, "#field-gpus", "2")
        await settle(pilot)
        assert error_text(app, "gpus") == "" and app.outcome.estimate.hardware.world_size == 2

        # A model that is not in the catalog, not a size and not a path: said under the model field.
        await pilot.press("f1")
        await replace_text(pilot, "#field-model", "gpt-9")
        await settle(pilot)
        assert "unknown model" in error_text(app, "model")
        app.query_one("#field-vram", Input).value = "abc"
        await settle(pilot)
        assert "GiB" in error_text(app, "vram") and set(app.outcome.errors) == {"model", "vram"}
        assert app.is_running
        await pilot.press("ctrl+q")
    assert app.return_code == 0


@run_async
async def test_recommendation_step_lists_alternatives_and_rules():
    app = WizardApp(WizardInputs(model="llama-3.1-8b", gpu="a100-80g", vram="79.35", gpus="4"), debounce=0.05)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        rec = app.outcome.recommendation
        assert rec is not None, app.outcome.recommender_note
        await pilot.press("f4")
        verdict = str(app.query_one("#rec-verdict", Static).render())
        assert ("RECOMMENDED" in verdict) == rec.found
        assert app.query_one("#alternatives").row_count == len(rec.alternatives)
        assert app.query_one("#rules-fired").row_count == len(rec.rules_fired)
        if rec.found:
            assert app.outcome.estimate == rec.estimate
            assert rec.estimate.strategy.name in str(app.query_one("#memory-strategy", Static).render())


@run_async
async def test_quit_right_away_is_clean():
    app = WizardApp()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+q")
    assert app.return_code == 0


def test_cli_without_a_terminal_exits_2(capsys):
    from advisor.cli import main

    assert main(["wizard", "--model", "7B"]) == 2
    assert "interactive terminal" in capsys.readouterr().err


def test_cli_bad_start_values_exit_2(capsys):
    from advisor.cli import main

    assert main(["wizard", "--gpu", "h100"]) == 2        # ambiguous: h100-pcie or h100-sxm
    assert "h100-sxm" in capsys.readouterr().err


def test_the_rest_of_the_cli_does_not_import_textual():
    code = ("import sys; from advisor.cli import build_parser, main; build_parser(); "
            "main(['models', '--json']); assert 'textual' not in sys.modules, 'textual imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


async def wait_saved(pilot, previous):
    for _ in range(500):
        await pilot.pause(0.02)
        if pilot.app.last_save is not previous:
            await pilot.app.workers.wait_for_complete()
            return pilot.app.last_save
    raise AssertionError("save did not finish")


@run_async
async def test_save_writes_parseable_configs_and_respects_overwrite(tmp_path):
    import json

    import yaml

    out = tmp_path / "configs"
    app = WizardApp(WizardInputs(model="llama-3.1-8b", gpu="a100-80g", vram="79.35", gpus="4", strategy="zero3"),
                    debounce=0.05, recommender=None)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("f5")
        await pilot.pause()
        assert app.query_one("#preview-accelerate").language == "yaml"
        assert app.query_one("#preview-deepspeed").language == "json"
        assert app.query_one("#preview-accelerate").read_only
        preview = json.loads(app.query_one("#preview-deepspeed").text)
        assert preview["zero_optimization"]["stage"] == 3

        app.query_one("#field-output_dir", Input).value = str(out)
        await pilot.press("ctrl+s")
        ok, message = await wait_saved(pilot, None)
        assert ok, message
        acc = yaml.safe_load((out / "accelerate_config.yaml").read_text())
        ds = json.loads((out / "ds_config.json").read_text())
        assert acc["distributed_type"] == "DEEPSPEED" and acc["num_processes"] == 4
        assert ds == preview                                   # what was shown is what was written

        # Saving again into the now non-empty folder needs "Overwrite" ticked, as with generate --force.
        first = app.last_save
        await pilot.press("ctrl+s")
        ok, message = await wait_saved(pilot, first)
        assert not ok and "not empty" in message
        assert "not empty" in str(app.query_one("#save-status").render())
        app.query_one("#field-force").focus()
        await pilot.press("space")
        second = app.last_save
        await pilot.press("ctrl+s")
        ok, message = await wait_saved(pilot, second)
        assert ok, message
        await pilot.press("ctrl+q")
    assert app.return_code == 0


@run_async
async def test_dry_run_saves_then_reports_with_progress(tmp_path, monkeypatch):
    """Ctrl+R saves the configs and dry-runs the folder in a thread, with a progress bar; the real dry run
    (engines, a proxy launch) has its own tests, here it is a stand-in that waits until released."""
    import threading

    from advisor.tui import backend

    release, seen = threading.Event(), []

    def fake_dry_run(folder, *, timeout=None):
        seen.append(sorted(p.name for p in (tmp_path / "run").iterdir()))
        release.wait(10)
        return True, ["PASS  schema (0.0 s)", "PASS  launch (1.0 s): 2 processes, 2 optimizer steps"]

    monkeypatch.setattr(backend, "dry_run", fake_dry_run)
    app = WizardApp(WizardInputs(model="gpt2", vram="16", gpus="2", strategy="zero2"), debounce=0.05,
                    recommender=None, output_dir=str(tmp_path / "run"))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("f5", "ctrl+r")
        for _ in range(200):
            await pilot.pause(0.02)
            if seen:
                break
        assert seen and "accelerate_config.yaml" in seen[0] and "ds_config.json" in seen[0]   # saved first
        assert app.query_one("#dry-run-progress").display                                  # progress shown
        assert "Dry run" in str(app.query_one("#save-status").render())
        await pilot.press("ctrl+r")                  # one at a time: a second Ctrl+R only says so
        release.set()
        for _ in range(200):
            await pilot.pause(0.02)
            if app.dry_run_result is not None:
                break
        assert app.dry_run_result == (True, ["PASS  schema (0.0 s)",
                                             "PASS  launch (1.0 s): 2 processes, 2 optimizer steps"])
        assert "Dry run passed" in str(app.query_one("#save-status").render()) and len(seen) == 1
        await pilot.press("ctrl+q")
    assert app.return_code == 0


@run_async
async def test_start_values_are_kept_and_a_new_gpu_fills_vram():
    app = WizardApp(WizardInputs(model="7B", gpu="a100-80g", vram="40", gpus="2"), debounce=0.05, recommender=None)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.query_one("#field-vram", Input).value == "40"              # --vram wins over the GPU's
        assert app.outcome.estimate.hardware.vram_bytes == 40 * 1024**3
        app.query_one("#field-gpu", Select).value = "h100-sxm"
        await settle(pilot)
        assert app.query_one("#field-vram", Input).value == app.inputs.vram != "40"
        assert app.outcome.estimate.hardware.gpu == "h100-sxm"
