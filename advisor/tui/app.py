"""The ``dsadvise wizard`` application: steps on the left, the live memory panel on the right.

The app only moves values between widgets and :mod:`advisor.tui.backend`: every change restarts a short
debounce timer; when it fires, a worker thread evaluates the inputs (estimate, recommendation, config preview)
and the result is shown if no newer change arrived meanwhile.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import ClassVar

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.timer import Timer
from textual.widget import MountError
from textual.widgets import Button, Checkbox, Footer, Header, Input, Select, TabbedContent, TabPane

from ..errors import AdvisorError
from . import backend
from .form import ADVANCED, WizardInputs, check_field
from .widgets.fields import Field
from .widgets.memory_bar import MemoryPanel
from .widgets.model_step import ModelStep
from .wording import wizard_words


def fmt_size(n: int) -> str:
    from ..formatting import fmt_bytes     # late: keeps pydantic off the first paint

    return fmt_bytes(n)

STEPS: tuple[tuple[str, str], ...] = (
    ("model", "F1 Model"), ("hardware", "F2 Hardware"), ("training", "F3 Training"),
    ("recommendation", "F4 Recommendation"), ("files", "F5 Configs"),
)
# The same steps under 110 columns, where the live panel leaves the tabs about 50 (every tab stays on screen at 80x24).
COMPACT_TITLES: dict[str, str] = {"model": "F1 Model", "hardware": "F2 GPUs", "training": "F3 Task",
                                  "recommendation": "F4 Advice", "files": "F5 Files"}
NARROW = 110          # columns: the breakpoint of HORIZONTAL_BREAKPOINTS below
INPUT_FIELDS = frozenset(WizardInputs.field_names())
# the fields whose value decides which others apply (advisor/tui/form.py APPLIES): a change re-shows the training step
SHOWN_BY = frozenset({"task", "method", "strategy", "loss"})


def internal_error(exc: Exception) -> str:
    """The one line a bug caught at the wizard's error boundary shows (the UI keeps running)."""
    return f"internal error: {type(exc).__name__}: {exc}"


def strategy_label(st) -> str:
    """``zero3 +opt:cpu, bf16, full, ckpt full, micro-batch 4`` from an estimate's StrategyInfo (an inference
    layout: ``replica-per-gpu, bf16, full, batch 48``)."""
    out = st.name
    if st.name in ("replica-per-gpu", "device-map-auto"):
        return f"{out}, {st.precision}, {st.method}, batch {st.micro_batch_size}"
    if st.offload_optimizer != "none":
        out += f" +opt:{st.offload_optimizer}"
    if st.offload_param != "none":
        out += f" +param:{st.offload_param}"
    return (f"{out}, {st.precision}, {st.method}, checkpointing {st.activation_checkpointing}, "
            f"micro-batch {st.micro_batch_size}")


class WizardApp(App[int]):
    """Model, hardware, training, recommendation, configs: live feedback at every step."""

    CSS_PATH = Path(__file__).with_name("wizard.tcss")     # absolute: subclasses elsewhere find it too
    TITLE = "dsadvise wizard"
    SUB_TITLE = "memory, strategy and configs for accelerate / DeepSpeed"
    ENABLE_COMMAND_PALETTE = False
    AUTO_FOCUS = "#field-model"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]    # the screen's class, used in wizard.tcss

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+n", "next_step", "Next step", priority=True),
        Binding("ctrl+b", "previous_step", "Back", priority=True),
        Binding("ctrl+s", "save", "Save configs", priority=True),
        Binding("ctrl+r", "dry_run", "Dry run", priority=True),
        Binding("ctrl+q", "quit", "Quit", priority=True),
        *(Binding(f"f{i}", f"go('{name}')", title, show=False) for i, (name, title) in enumerate(STEPS, 1)),
        # "what would fit": on the Recommendation step, 1-9 apply that suggestion (Enter applies the highlighted)
        *(Binding(str(i), f"apply_suggestion({i})", f"Apply suggestion {i}", show=False) for i in range(1, 10)),
    ]

    def __init__(self, inputs: WizardInputs | None = None, *, output_dir: str = "dsadvise-configs",
                 force: bool = False, debounce: float = 0.15, recommender=backend.LOAD, profile=None) -> None:
        super().__init__()
        self.profile = profile             # a `dsadvise calibrate` profile (--profile), or None
        self.inputs = inputs or WizardInputs()
        self.debounce = debounce
        self.recommender = recommender     # see backend.evaluate
        self.outcome: backend.Outcome | None = None
        self.preview: backend.Preview | None = None
        self._seq = 0
        self._shown_seq = -1
        self._started = False
        self._quit_requested = False
        self._field_rows: dict[str, Field] | None = None
        self._last_shown: tuple | None = None     # (estimate, fits, source, recommendation) last in the bar
        self._timer: Timer | None = None
        self._output_dir = output_dir
        self.last_save: tuple[bool, str] | None = None   # (saved?, message) of the last Save
        self._saved_as: tuple[WizardInputs, str] | None = None   # what the last successful save wrote, where
        self.dry_run_result: tuple[bool, list[str]] | None = None
        self._dry_run_started: float | None = None
        self._dry_run_timer: Timer | None = None
        self._dry_run_label = "Dry run: saving the configs ..."
        self._force = force

    # ---------------------------------------------------------------- layout

    def compose(self) -> ComposeResult:
        v = self.inputs
        yield Header()
        with Horizontal(id="body"):
            with TabbedContent(id="steps", initial="step-model"):
                with TabPane(STEPS[0][1], id="step-model"):
                    yield ModelStep(v.model, id="model-step")
                # The hidden steps are mounted just after the first paint (see _finish_startup).
                for name, title in STEPS[1:]:
                    yield TabPane(title, id=f"step-{name}")
            yield MemoryPanel(id="live")
        yield Footer()

    def on_mount(self) -> None:
        self._title_tabs(self.size.width)
        self.call_after_refresh(self._finish_startup)

    def on_resize(self, event) -> None:
        self._title_tabs(event.size.width)

    def _title_tabs(self, width: int) -> None:
        """Full step titles on wide terminals, compact ones under NARROW columns (all five stay on screen)."""
        try:
            tabs = self.query_one("#steps", TabbedContent)
        except Exception:       # not composed yet
            return
        for name, title in STEPS:
            label = COMPACT_TITLES[name] if width < NARROW else title
            tab = tabs.get_tab(f"step-{name}")
            if str(tab.label) != label:
                tab.label = label

    async def _finish_startup(self) -> None:
        """After the first paint: mount the hidden steps, read the catalogs, evaluate the initial inputs."""
        if self._exit or self._closing:     # quit before we got here
            return
        from .widgets.hardware_step import HardwareStep      # imported here: not on the path to the first paint
        from .widgets.preview import PreviewStep
        from .widgets.recommendation_step import RecommendationView
        from .widgets.training_step import TrainingStep

        v = self.inputs
        steps = {
            "hardware": HardwareStep(gpu=v.gpu, vram=v.vram, gpus=v.gpus, nodes=v.nodes, cpu_ram=v.cpu_ram,
                                     inputs=v, id="hardware-step"),
            "training": TrainingStep(v, id="training-step"),
            "recommendation": RecommendationView(id="recommendation-view"),
            "files": PreviewStep(self._output_dir, self._force, v.framework, id="preview-step"),
        }
        try:
            for name, widget in steps.items():
                await self.query_one(f"#step-{name}", TabPane).mount(widget)
        except MountError:                  # the app is closing
            return
        self.query_one(ModelStep).load_catalog()
        self._started = True
        if self._quit_requested:            # Ctrl+Q while the steps were mounting: quit now, cleanly
            self.exit()
            return
        self.schedule_evaluation(0.001)

    async def action_quit(self) -> None:
        """Quit (exit code 0). During the split second the hidden steps are mounting, quitting waits for them:
        tearing widgets down half-mounted makes Textual report errors and exit 1."""
        if not self._started:
            self._quit_requested = True
            return
        self.exit()

    def _alive(self) -> bool:
        """Not exiting: results arriving from threads after Ctrl+Q are dropped."""
        return not (self._exit or self._closing)

    @property
    def idle(self) -> bool:
        """Started, with no evaluation waiting or running: what is shown matches the inputs."""
        return self._started and self._timer is None and self._shown_seq == self._seq

    # ---------------------------------------------------------------- navigation

    def _step_index(self) -> int:
        active = self.query_one("#steps", TabbedContent).active
        return next((i for i, (name, _) in enumerate(STEPS) if f"step-{name}" == active), 0)

    def action_go(self, name: str) -> None:
        self.query_one("#steps", TabbedContent).active = f"step-{name}"
        self.call_after_refresh(self._focus_step, name)

    def _focus_step(self, name: str) -> None:
        pane = self.query_one(f"#step-{name}", TabPane)
        for widget in pane.query("*"):
            if widget.focusable:
                widget.focus()
                return

    def action_next_step(self) -> None:
        self.action_go(STEPS[min(self._step_index() + 1, len(STEPS) - 1)][0])

    def action_previous_step(self) -> None:
        self.action_go(STEPS[max(self._step_index() - 1, 0)][0])

    # ---------------------------------------------------------------- inputs

    def _field_of(self, widget) -> str | None:
        wid = widget.id or ""
        name = wid.removeprefix("field-")
        return name if wid.startswith("field-") and name in INPUT_FIELDS else None

    def _set_field(self, name: str, value: str) -> None:
        if self.inputs.get(name) == value:
            return
        self.inputs = self.inputs.with_(**{name: value})
        if name in ADVANCED:
            self._advanced_titles()
        self.schedule_evaluation()

    def _advanced_titles(self) -> None:
        if self._started:
            for step in ("#hardware-step", "#training-step"):
                self.query_one(step).update_titles(self.inputs)

    @on(Input.Changed)
    def _input_changed(self, event: Input.Changed) -> None:
        name = self._field_of(event.input)
        if name is None:
            return
        self._show_error(name, check_field(name, event.value))   # the CLI's check, at once
        self._set_field(name, event.value)

    @on(Checkbox.Changed)
    def _checkbox_changed(self, event: Checkbox.Changed) -> None:
        name = self._field_of(event.checkbox)
        if name is not None:
            self._set_field(name, "yes" if event.value else "no")

    @on(Select.Changed)
    def _select_changed(self, event: Select.Changed) -> None:
        name = self._field_of(event.select)
        if name is not None:
            self._set_field(name, event.value if isinstance(event.value, str) else "")
            if name in SHOWN_BY and self._started:
                self.query_one("#training-step").show_for(self.inputs)

    # ---------------------------------------------------------------- "what would fit"

    def suggestions(self) -> list:
        """The recommender's verified changes that make something fit (empty when something fits)."""
        rec = self.outcome.recommendation if self.outcome is not None else None
        if rec is None or rec.found:
            return []
        return list(rec.suggestions)

    def action_apply_suggestion(self, number: int) -> None:
        """Apply suggestion ``number`` (1-based) to the fields, as if typed; only on the Recommendation step."""
        if self._step_index() != [n for n, _ in STEPS].index("recommendation"):
            return
        found = self.suggestions()
        if not 1 <= number <= len(found):
            return
        applied, skipped = self.apply_flags(found[number - 1].flags)
        if applied:
            self.notify("Applied: " + ", ".join(applied) + (f" (not a wizard field: {', '.join(skipped)})"
                                                            if skipped else ""), timeout=4)
        else:
            self.notify(f"Not a wizard field: {', '.join(skipped)}", severity="warning", timeout=4)

    def apply_flags(self, changes: dict) -> tuple[list[str], list[str]]:
        """Set the fields that stand for these CLI flags (the flag table's map) in the inputs and on screen."""
        from .form import field_for_flag, vram_text
        from .wording import field_words

        applied, skipped, updates = [], [], {}
        for flag, value in changes.items():
            name = field_for_flag(flag)
            if name is None or name not in INPUT_FIELDS:
                skipped.append(flag)
                continue
            switch = name in ADVANCED and ADVANCED[name].kind == "switch"
            updates[name] = ("yes" if value not in (False, "no") else "no") if switch else str(value)
            if name == "gpu":
                updates["vram"] = vram_text(str(value))
            applied.append(f"{field_words(name)} = {value}")
        if not updates:
            return applied, skipped
        for name, value in updates.items():
            try:
                widget = self.query_one(f"#field-{name}")
            except Exception:
                continue
            widget.value = (value == "yes") if isinstance(widget, Checkbox) else value   # its Changed event finds
            self._show_error(name, None)                                                 # the inputs updated
        self.inputs = self.inputs.with_(**updates)
        self._advanced_titles()
        if SHOWN_BY & set(updates):
            self.query_one("#training-step").show_for(self.inputs)
        self.schedule_evaluation(0.001)
        return applied, skipped

    @on(Input.Submitted)
    def _next_field(self, event: Input.Submitted) -> None:
        self.screen.focus_next()

    def _fields(self) -> dict[str, Field]:
        """The input fields by name (cached once every step is mounted)."""
        if self._field_rows is None or not self._started:
            rows = {row.field_name: row for row in self.query(Field) if row.field_name in INPUT_FIELDS}
            if not self._started:
                return rows
            self._field_rows = rows
        return self._field_rows

    def fields_mounted(self) -> None:
        """Fields mounted late (an Advanced section opened): find them, and show the errors of what is shown."""
        self._field_rows = None
        errors = self.outcome.errors if self.outcome is not None else {}
        for name, row in self._fields().items():
            if name in ADVANCED and name in errors:
                row.set_error(wizard_words(errors[name]))

    def _show_error(self, name: str, message: str | None) -> None:
        row = self._fields().get(name)
        if row is not None:
            row.set_error(message)

    # ---------------------------------------------------------------- evaluation

    def schedule_evaluation(self, delay: float | None = None) -> None:
        """Evaluate after ``delay`` (default: the debounce) unless another change comes first."""
        if self._timer is not None:
            self._timer.stop()
        self._seq += 1
        self._timer = self.set_timer(max(self.debounce if delay is None else delay, 0.001), self._evaluate_now)

    def _evaluate_now(self) -> None:
        self._timer = None
        if self._alive():
            self._evaluate(self.inputs, self._seq)

    @work(thread=True, exclusive=True, group="evaluate", exit_on_error=False)
    def _evaluate(self, inputs: WizardInputs, seq: int) -> None:
        try:
            outcome = backend.evaluate(inputs, recommender=self.recommender, profile=self.profile)
            shown = backend.preview(outcome)
        except Exception as exc:   # the wizard's error boundary (as the CLI's): a bug is one line, not a crash
            outcome = backend.Outcome(inputs=inputs, general_error=internal_error(exc))
            shown = backend.Preview({}, "")
        self._call(self._show, outcome, shown, seq)

    def _show(self, outcome: backend.Outcome, shown: backend.Preview, seq: int) -> None:
        if seq != self._seq or not self._alive():    # newer inputs since (their result is on its way), or quitting
            return
        self.outcome, self.preview = outcome, shown
        self._shown_seq = seq
        model_step = self.query_one(ModelStep)
        errors = dict(outcome.errors)
        if "model" in errors and model_step.match_count:     # mid-typing: point at the matches, not a scolding
            n = model_step.match_count
            errors["model"] = (f"not a model name yet: {n} catalog match{'es' if n > 1 else ''} below "
                               f"(Down, then Enter picks one)")
        for name, row in self._fields().items():
            row.set_error(wizard_words(errors[name]) if name in errors else None)
        model_step.set_note(wizard_words(outcome.model_note))
        self._show_live(outcome)
        self.query_one("#recommendation-view").show(outcome)
        self.query_one("#preview-step").show_files(shown.texts, wizard_words(shown.note), outcome.inputs.task)
        self.query_one("#preview-step").show_command(outcome.command)

    def _show_live(self, out: backend.Outcome) -> None:
        est, rec = out.estimate, out.recommendation
        line, status = "", out.general_error or out.recommender_note
        chosen = out.strategy_source is backend.StrategySource.CHOSEN
        fits = False if (rec is not None and not rec.found and not chosen) else None
        if est is not None:
            self._last_shown = (est, fits, out.strategy_source, rec)
            line = f"Strategy ({out.strategy_source.label}): {strategy_label(est.strategy)}"
            if rec is not None and not rec.found:
                line = "No configuration fits. " + line
        elif (out.errors or out.general_error) and not out.missing:
            status = out.general_error or "Fix the fields marked in red."
            if self._last_shown is not None:        # keep the last valid picture while a field is being fixed
                est, fits = self._last_shown[0], self._last_shown[1]
                line = f"Showing the last valid inputs ({strategy_label(est.strategy)})."
        if out.estimate is not None and (est.notes or out.assumed or (est.step_time and est.step_time.assumptions)):
            n = len({*est.notes, *out.assumed}) + (len(est.step_time.assumptions) if est.step_time is not None else 0)
            status = "; ".join(x for x in (status, f"{n} notes and assumptions: F4 Recommendation, Why") if x)
        if est is not None and est.task == "infer" and est.inference:
            line += "\nLayouts: " + "; ".join(f"{x.layout} {fmt_size(x.total)} per GPU"
                                             f"{'' if x.fits else ' (does not fit)'}" for x in est.inference)
        self.query_one(MemoryPanel).show(est, out.missing, wizard_words(status), strategy_line=line, fits=fits)

    # ---------------------------------------------------------------- files

    @on(Button.Pressed, "#save")
    def _save_pressed(self) -> None:
        self.action_save()

    @on(Button.Pressed, "#copy-command")
    def _copy_pressed(self) -> None:
        self.action_copy_command()

    def action_copy_command(self) -> None:
        """Put the equivalent ``dsadvise`` command on the clipboard (the terminal's, OSC 52)."""
        command = self.outcome.command if self.outcome is not None else ""
        if not command:
            self.notify("Nothing to copy yet: fill in the model and hardware.", severity="warning", timeout=3)
            return
        self.copy_to_clipboard(command)
        self.notify("Copied: " + command, timeout=4)

    @on(Button.Pressed, "#dry-run")
    def _dry_run_pressed(self) -> None:
        self.action_dry_run()

    def _ready_for_files(self) -> bool:
        if not self._started:               # the steps are still being mounted (a fraction of a second)
            self.notify("Still starting: try again in a moment.", severity="warning", timeout=3)
        return self._started

    def action_save(self) -> None:
        if not self._ready_for_files():
            return
        step = self.query_one("#preview-step")
        step.set_status("Saving ...")
        self._save(self.inputs, step.output_dir, step.force)

    @work(thread=True, exclusive=True, group="save", exit_on_error=False)
    def _save(self, inputs: WizardInputs, out_dir: str, force: bool) -> None:
        """Render what is shown (fresh, unless the preview on screen is current) and write it."""
        try:
            if self.idle and self.outcome is not None and self.outcome.inputs == inputs:
                outcome, shown = self.outcome, self.preview
            else:
                outcome = backend.evaluate(inputs, recommender=self.recommender, profile=self.profile)
                shown = backend.preview(outcome)
            paths = backend.save(outcome, shown, out_dir, force=force)
            self._saved_as = (outcome.inputs, out_dir)
            message = f"Saved {len(paths)} files to {out_dir}: {', '.join(p.name for p in paths)}"
            ok = True
        except AdvisorError as exc:
            message, ok = f"Not saved: {exc}", False
        except Exception as exc:   # the wizard's error boundary: report the bug, keep running
            message, ok = f"Not saved: {internal_error(exc)}", False
        self._call(self._saved, message, ok)

    def _saved(self, message: str, ok: bool) -> None:
        if not self._alive():
            return
        message = wizard_words(message)
        self.last_save = (ok, message)
        self.query_one("#preview-step").set_status(message)
        self.notify(message, severity="information" if ok else "error", timeout=6)

    def action_dry_run(self) -> None:
        """Save (unless this folder already holds what is shown), then ``dsadvise dry-run`` it, with progress.

        It runs in a daemon thread, not a worker: a dry run can take minutes, and quitting must not wait
        for it."""
        if not self._ready_for_files():
            return
        step = self.query_one("#preview-step")
        if self._dry_run_started is not None:
            self.notify("A dry run is already running.", severity="warning", timeout=3)
            return
        self._dry_run_started = time.monotonic()
        self.dry_run_result = None
        step.progress(0, None, "Dry run: saving the configs ...")
        self._dry_run_timer = self.set_interval(0.5, self._dry_run_tick)
        threading.Thread(target=self._dry_run_thread, args=(self.inputs, step.output_dir, step.force),
                         name="dsadvise-dry-run", daemon=True).start()

    def _dry_run_thread(self, inputs: WizardInputs, out_dir: str, force: bool) -> None:
        try:
            if self._saved_as != (inputs, out_dir):
                outcome = backend.evaluate(inputs, recommender=self.recommender, profile=self.profile)
                backend.save(outcome, backend.preview(outcome), out_dir, force=force)
                self._saved_as = (inputs, out_dir)
            self._call(self._dry_run_phase, "Dry run: loading the configs in accelerate and DeepSpeed, then "
                                            "launching a tiny proxy run ...")
            passed, lines = backend.dry_run(out_dir)
        except AdvisorError as exc:
            passed, lines = False, [f"Dry run not done: {exc}"]
        except Exception as exc:   # the wizard's error boundary: report the bug, keep running
            passed, lines = False, [f"Dry run failed: {internal_error(exc)}"]
        self._call(self._dry_run_done, passed, lines)

    def _call(self, callback, *args) -> None:
        """call_from_thread that does nothing once the app has gone (the user quit meanwhile)."""
        try:
            self.call_from_thread(callback, *args)
        except RuntimeError:
            pass

    def _dry_run_phase(self, label: str) -> None:
        if not self._alive():
            return
        self._dry_run_label = label
        self._dry_run_tick()

    def _dry_run_tick(self) -> None:
        if self._dry_run_started is not None and self._alive():
            elapsed = time.monotonic() - self._dry_run_started
            self.query_one("#preview-step").progress(0, None, f"{self._dry_run_label} {elapsed:.0f} s")

    def _dry_run_done(self, passed: bool, lines: list[str]) -> None:
        if not self._alive():
            return
        if self._dry_run_timer is not None:
            self._dry_run_timer.stop()
        self._dry_run_started, self._dry_run_timer = None, None
        self._dry_run_label = "Dry run: saving the configs ..."
        lines = [wizard_words(line) for line in lines]
        self.dry_run_result = (passed, lines)
        head = "Dry run passed." if passed else "Dry run found problems."
        step = self.query_one("#preview-step")
        step.progress(1, 1)
        step.set_status("\n".join([head, *lines]))
        self.notify(head, severity="information" if passed else "error", timeout=6)
