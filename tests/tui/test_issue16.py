"""The wizard items of issue 16, driven through Textual's pilot: the step tabs on an 80x24 terminal, inference
mode (task switch, weights + KV cache, both layouts, their scripts saved), method details (LoRA rank and
targets, QLoRA double quantization, loss kernel, attention) reaching the estimate, the framework's file in the
preview, "what would fit" applied with one key, and the wizard's own words instead of CLI flags."""

from __future__ import annotations

import json

from textual.widgets import Input, OptionList, Select, Static, TabbedContent, Tabs, TextArea

from advisor.tui.app import COMPACT_TITLES, STEPS, WizardApp
from advisor.tui.form import FRAMEWORK_CHOICES, WizardInputs
from advisor.tui.wording import wizard_words

from .helpers import SIZE, run_async, settle


def _text(app, selector: str) -> str:
    return str(app.query_one(selector, Static).render())


@run_async
async def test_every_step_tab_is_on_screen_at_80x24():
    app = WizardApp(debounce=0.05, recommender=None)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        screen = app.screen.region
        tabs = app.query_one("#steps", TabbedContent).query_one(Tabs)
        for name, _ in STEPS:
            tab = tabs.query_one(f"#--content-tab-step-{name}")
            region = tab.region
            assert tab.display and region.width > 0, name
            assert screen.contains_region(region), (name, region, screen)
            # and inside the visible part of the tab strip (not scrolled away)
            assert tabs.region.contains_region(region), (name, region, tabs.region)
            assert str(tab.label) == COMPACT_TITLES[name]
        for i, (name, _) in enumerate(STEPS, 1):         # each key still reaches its step
            await pilot.press(f"f{i}")
            assert app.query_one("#steps", TabbedContent).active == f"step-{name}"
        await pilot.resize_terminal(*SIZE)
        await pilot.pause()
        assert [str(tabs.query_one(f"#--content-tab-step-{n}").label) for n, _ in STEPS] == [t for _, t in STEPS]


async def _pick(pilot, name: str, value: str) -> None:
    """Set a field as the user does (its Changed event drives the app), then settle."""
    widget = pilot.app.query_one(f"#field-{name}")
    widget.value = value
    await settle(pilot)


@run_async
async def test_inference_mode_shows_weights_kv_cache_layouts_and_saves_both_scripts(tmp_path):
    inputs = WizardInputs(model="llama-2-7b", gpu="a100-80g", vram="79.35", gpus="2", seq_len="1024")
    out_dir = tmp_path / "infer"
    app = WizardApp(inputs, debounce=0.01, output_dir=str(out_dir))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.outcome.estimate.task == "train"
        assert app.query_one("#row-optimizer").display and not app.query_one("#row-prompt_len").display
        await pilot.press("f3")
        await _pick(pilot, "task", "infer")
        # the step follows the task: inference fields shown, training-only ones hidden
        assert _text(app, "#training-title") == "How will you serve it?"
        assert app.query_one("#row-prompt_len").display
        assert not any(app.query_one(f"#row-{n}").display for n in ("optimizer", "checkpointing", "strategy",
                                                                     "global_batch", "loss", "lora_rank"))
        await _pick(pilot, "prompt_len", "768")
        est = app.outcome.estimate
        assert est.task == "infer" and {x.layout for x in est.inference} == {"replica-per-gpu", "device-map-auto"}
        legend = _text(app, "#memory-legend")
        assert "weights" in legend and "KV cache" in legend and "optimizer" not in legend
        verdict = _text(app, "#rec-verdict")      # the recommended layout, its batch and processes
        assert "RECOMMENDED" in verdict and " process(es)" in verdict and "checkpointing" not in verdict
        line = _text(app, "#memory-strategy")
        assert "Layouts: replica-per-gpu" in line and "device-map-auto" in line
        # the preview holds both launch scripts; the training configs are not written for inference
        texts = app.preview.texts
        assert texts["accelerate"] is None and texts["deepspeed"] is None
        assert "device_map=\"auto\"" in texts["device_map"] and "split_between_processes" in texts["replicas"]
        assert "Layouts that fit: device-map-auto" in app.preview.note
        await pilot.press("f5")
        await pilot.pause()
        assert app.query_one("#preview-device_map", TextArea).text == texts["device_map"]
        preview_tabs = app.query_one("#preview-tabs", TabbedContent).query_one(Tabs)
        shown_tabs = [t.id.removeprefix("--content-tab-") for t in preview_tabs.query("Tab") if t.display]
        assert shown_tabs == ["tab-device_map", "tab-replicas"] and not app.query_one("#row-framework").display
        await pilot.press("ctrl+s")
        for _ in range(200):
            await pilot.pause(0.05)
            if app.last_save is not None:
                break
        assert app.last_save[0], app.last_save
        manifest = json.loads((out_dir / "dsadvise.json").read_text())
        assert manifest["task"] == "infer" and manifest["plan"]["prompt_len"] == 768
        assert {"infer_device_map.py", "infer_replicas.py", "launch_replicas.sh"} <= {p.name for p in out_dir.iterdir()}
        # saving again without 'Overwrite existing files' is refused in the wizard's words, not the CLI's
        app.last_save = None
        await pilot.press("ctrl+s")
        for _ in range(200):
            await pilot.pause(0.05)
            if app.last_save is not None:
                break
        ok, message = app.last_save
        assert not ok and "tick 'Overwrite existing files' (F5)" in message and "--force" not in message


@run_async
async def test_method_details_reach_the_estimate_and_framework_file_is_previewed():
    base = WizardInputs(model="llama-3.1-8b", gpu="a100-80g", vram="79.35", gpus="1", strategy="single",
                        seq_len="1024")
    app = WizardApp(base, debounce=0.01, recommender=None)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("f3")
        assert not app.query_one("#row-lora_rank").display and not app.query_one("#row-double_quant").display
        await _pick(pilot, "method", "lora")
        assert app.query_one("#row-lora_rank").display and app.query_one("#row-lora_targets").display
        all_linear = app.outcome.estimate.model.trainable_parameters
        await _pick(pilot, "lora_targets", "q_proj,v_proj")
        assert app.outcome.estimate.model.trainable_parameters < all_linear
        await _pick(pilot, "lora_rank", "64")       # LoRA's A and B grow linearly with the rank
        rank64 = app.outcome.estimate.model.trainable_parameters
        await _pick(pilot, "lora_rank", "16")
        assert rank64 == 4 * app.outcome.estimate.model.trainable_parameters
        # QLoRA: double quantization stores the 4-bit scales in 8 bits (fewer bytes)
        await _pick(pilot, "method", "qlora")
        assert app.query_one("#row-double_quant").display
        double = app.outcome.estimate.per_gpu.parameters
        await _pick(pilot, "double_quant", "no")
        assert app.outcome.estimate.per_gpu.parameters > double
        # loss kernel and attention reach the estimate
        plain = app.outcome.estimate.per_gpu.total
        await _pick(pilot, "loss", "fused-linear")
        assert app.outcome.estimate.per_gpu.total < plain
        sdpa = app.outcome.estimate.per_gpu.total
        await _pick(pilot, "attention", "eager")
        assert app.outcome.estimate.per_gpu.total > sdpa
        # the framework's own file in the preview
        await pilot.press("f5")
        await _pick(pilot, "method", "full")
        assert "accelerate launch" in app.preview.texts["framework"]
        assert app.query_one("#preview-framework", TextArea).text == app.preview.texts["framework"]
        if "llamafactory" in FRAMEWORK_CHOICES:
            await _pick(pilot, "framework", "llamafactory")
            assert "finetuning_type" in app.preview.texts["framework"]
            assert "llamafactory" in app.preview.note


@run_async
async def test_what_would_fit_applies_with_one_key():
    # a 13B model, full fine-tuning, on one 24 GiB GPU with 32 GiB of CPU RAM: nothing fits (not even offload)
    inputs = WizardInputs(model="llama-2-13b", vram="24", gpus="1", cpu_ram="32", method="full", seq_len="512")
    app = WizardApp(inputs, debounce=0.01)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        rec = app.outcome.recommendation
        assert rec is not None and not rec.found and rec.suggestions
        await pilot.press("f4")
        await pilot.pause()
        options = app.query_one("#suggestions", OptionList)
        assert options.display and options.option_count == min(len(rec.suggestions), 9)
        first = rec.suggestions[0]
        shown = str(options.get_option_at_index(0).prompt)
        assert shown.startswith("1  ") and "--" not in shown.split(":")[1]   # the wizard's field names
        await pilot.press("1")
        await settle(pilot)
        from advisor.tui.form import field_for_flag

        for flag, value in first.flags.items():
            name = field_for_flag(flag)
            if name is not None:
                assert getattr(app.inputs, name) == str(value)
                assert app.query_one(f"#field-{name}").value == str(value)
        if first.verified:
            assert app.outcome.recommendation.found
        # the assumptions speak of the wizard's fields (no --gpu was given: a generic GPU)
        details = _text(app, "#rec-details")
        assert "--gpu" not in details and "--seq-len" not in details


def test_wizard_words():
    assert wizard_words("out: exists and is not empty; pass --force to overwrite") == \
        "out: exists and is not empty; tick 'Overwrite existing files' (F5) to overwrite"
    said = wizard_words("no --gpu given: step times assume a generic PCIe GPU; give --gpu for its own figures")
    assert said == ("no 'GPU model' (F2) given: step times assume a generic PCIe GPU; give 'GPU model' (F2) for "
                    "its own figures")
    assert wizard_words("--lora-targets q_proj") == "'LoRA target modules' (F3) q_proj"
    assert wizard_words("a generated field: --nvme-path") == "a generated field: '--nvme-path' (F2 Advanced)"
    assert wizard_words("a flag the wizard lacks: --json") == "a flag the wizard lacks: the command-line option --json"
    assert wizard_words("all-linear, q-proj") == "all-linear, q-proj"


@run_async
async def test_wizard_task_flag_starts_in_inference_mode():
    """`dsadvise wizard --task infer` starts on the inference form: the flag reaches the starting fields, and the
    first estimate is an inference one (weights + KV cache layouts), with no step to switch it."""
    import argparse

    from advisor.cli import wizard as wizard_cli

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    wizard_cli.register(sub)
    args = parser.parse_args(["wizard", "--model", "llama-2-7b", "--gpu", "a100-80g", "--gpus", "2", "--task",
                              "infer"])
    inputs = wizard_cli.initial_inputs(args)
    assert inputs.task == "infer"
    app = WizardApp(inputs, debounce=0.01)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        est = app.outcome.estimate
        assert est.task == "infer" and {x.layout for x in est.inference} >= {"replica-per-gpu"}
        assert app.query_one("#row-prompt_len").display and not app.query_one("#row-optimizer").display
