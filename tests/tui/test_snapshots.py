"""Screenshots of the wizard's main screens (pytest-textual-snapshot). Deterministic: fixed terminal size,
no clock, no blinking cursor, a fixed recommender (see fakes.py), syntax highlighting off in the config
previews (it depends on the optional tree-sitter grammars). Update with ``--snapshot-update`` and review
the SVGs under ``__snapshots__/``."""

from __future__ import annotations

import pytest
from textual.widgets import Input, Select, TextArea

from advisor.tui.app import WizardApp
from advisor.tui.form import WizardInputs

from .helpers import SIZE, settle, steady
from .fakes import fixed_recommender, simple_estimate



@pytest.fixture(autouse=True)
def _stable_sizes(monkeypatch):
    monkeypatch.setattr("advisor.api.estimate", simple_estimate)


A100X4 = WizardInputs(model="llama-3.1-8b", gpu="a100-80g", vram="79.35", gpus="4")


def wizard(inputs: WizardInputs = WizardInputs(), **kwargs) -> WizardApp:
    return WizardApp(inputs, debounce=0.01, recommender=fixed_recommender, **kwargs)


def before(*keys: str, step: str | None = None, setup=None):
    """A run_before hook: settle, go to ``step``, apply ``setup(app)``, press ``keys``, settle, stop blinking."""

    async def run_before(pilot) -> None:
        await settle(pilot)
        if step:
            await pilot.press(f"f{('model', 'hardware', 'training', 'recommendation', 'files').index(step) + 1}")
        if setup:
            setup(pilot.app)
        await pilot.press(*keys)
        await settle(pilot)
        steady(pilot.app)
        await pilot.pause()

    return run_before


def test_start_screen(snap_compare):
    """Nothing given yet: the model field has focus, the whole catalog is listed, the panel says what's missing."""
    assert snap_compare(wizard(), terminal_size=SIZE, run_before=before())


def test_model_picked_with_live_memory(snap_compare):
    """Typing filters the catalog, Down + Enter picks the match; the hardware was given, so the panel shows
    the memory of the recommended configuration."""
    inputs = A100X4.with_(model="")
    assert snap_compare(wizard(inputs), terminal_size=SIZE, run_before=before(*"qwen2.5-7", "down", "enter"))


def test_hardware_step_with_invalid_input(snap_compare):
    """The hardware step with a catalog GPU filled in; '0' GPUs per node: the message is under the field and
    the panel says to fix it."""

    def zero_gpus(app) -> None:
        app.query_one("#field-gpus", Input).value = "0"

    assert snap_compare(wizard(A100X4), terminal_size=SIZE, run_before=before(step="hardware", setup=zero_gpus))


def test_training_step_chosen_strategy_does_not_fit(snap_compare):
    """The training step; 70B on one 24 GiB GPU with 'single' chosen: the bar runs past VRAM."""

    def choose(app) -> None:
        app.query_one("#field-strategy", Select).value = "single"

    inputs = WizardInputs(model="llama-2-70b", gpu="rtx-4090", vram="24", gpus="1")
    assert snap_compare(WizardApp(inputs, debounce=0.01, recommender=None), terminal_size=SIZE,
                        run_before=before(step="training", setup=choose))


def test_recommendation_step(snap_compare):
    assert snap_compare(wizard(A100X4), terminal_size=SIZE, run_before=before(step="recommendation"))


def test_alternatives_tab(snap_compare):
    def alternatives(app) -> None:
        app.query_one("#rec-tabs").active = "rec-alternatives"

    assert snap_compare(wizard(A100X4), terminal_size=SIZE,
                        run_before=before(step="recommendation", setup=alternatives))


FIXED_YAML = ("compute_environment: LOCAL_MACHINE\ndistributed_type: DEEPSPEED\nmixed_precision: bf16\n"
              "num_processes: 4\n")
FIXED_JSON = '{\n  "train_micro_batch_size_per_gpu": 2,\n  "zero_optimization": {\n    "stage": 2\n  }\n}\n'


def test_configs_step(snap_compare):
    """The preview tabs, the folder, overwrite, Save and Dry run. The texts are fixed here (the renderer's
    output has its own tests; saving real files is tested in test_wizard.py)."""

    def fixed(app) -> None:
        app.query_one("#preview-step").show_files({"accelerate": FIXED_YAML, "deepspeed": FIXED_JSON}, "")
        for area in app.query(TextArea):
            area.language = None

    assert snap_compare(wizard(A100X4), terminal_size=SIZE, run_before=before(step="files", setup=fixed))


def test_training_step_advanced_section(snap_compare):
    """An Advanced section opened (it starts open when one of its fields is set): the generated fields, each with
    the flag as caption and its help under it; the title counts what is set."""

    def show_advanced(app) -> None:
        app.query_one("#advanced-training").scroll_visible(top=True, animate=False)

    inputs = A100X4.with_(method="lora", base_dtype="fp32")
    assert snap_compare(wizard(inputs), terminal_size=SIZE, run_before=before(step="training", setup=show_advanced))
