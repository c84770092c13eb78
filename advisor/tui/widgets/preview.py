"""Step 5: the generated files, previewed read-only with syntax highlighting; save them; optionally dry-run."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Button, Checkbox, Input, ProgressBar, Select, Static, TabbedContent, TabPane, TextArea

from ..form import FRAMEWORK_CHOICES
from .fields import Field

# (tab id, title, TextArea language): the files the wizard previews (a tab is disabled when the setup writes no
# such file): training's two configs and the framework's own file; inference's two launch scripts.
PREVIEWS: tuple[tuple[str, str, str | None], ...] = (
    ("accelerate", "accelerate YAML", "yaml"),
    ("deepspeed", "DeepSpeed JSON", "json"),
    ("framework", "Framework file", None),
    ("device_map", "device_map.py", "python"),
    ("replicas", "replicas.py", "python"),
)
# the tabs each task writes (the others are hidden): training's configs, inference's two launch scripts
TASK_TABS = {"train": ("accelerate", "deepspeed", "framework"), "infer": ("device_map", "replicas")}


class PreviewStep(VerticalScroll):
    """Previews of the accelerate YAML and DeepSpeed JSON, where to save them, Save and Dry run."""

    can_focus = False    # Tab goes to the fields; they scroll into view

    def __init__(self, output_dir: str = "dsadvise-configs", force: bool = False, framework: str = "accelerate",
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self._framework = framework if framework in FRAMEWORK_CHOICES else FRAMEWORK_CHOICES[0]
        self._output_dir = output_dir
        self._force = force

    def compose(self) -> ComposeResult:
        yield Static("The configs to launch it", classes="step-title")
        yield Field("framework", "Framework", Select([(f, f) for f in FRAMEWORK_CHOICES], value=self._framework,
                                                     allow_blank=False, id="field-framework"),
                    hint="its own file is previewed under 'Framework file'")
        yield Static("", id="preview-note", markup=False)
        with Horizontal(id="command-row"):
            yield Static("", id="cli-command", markup=False)
            yield Button("Copy", id="copy-command")
        with TabbedContent(id="preview-tabs"):
            for key, title, language in PREVIEWS:
                with TabPane(title, id=f"tab-{key}"):
                    yield TextArea("", language=language, read_only=True, show_line_numbers=True,
                                   soft_wrap=False, id=f"preview-{key}")
        with Horizontal(id="save-row"):
            yield Field("output_dir", "Save to folder", Input(self._output_dir, id="field-output_dir"))
            yield Checkbox("Overwrite existing files", self._force, id="field-force")
        with Horizontal(id="button-row"):
            yield Button("Save  ^s", id="save", variant="primary")
            yield Button("Dry run  ^r", id="dry-run")
        yield ProgressBar(total=None, show_eta=False, id="dry-run-progress")
        yield Static("", id="save-status", markup=False)

    def on_mount(self) -> None:
        self.query_one("#dry-run-progress").display = False

    def show_files(self, texts: dict[str, str | None], note: str, task: str = "train") -> None:
        """Put each config's text in its tab (``None``: this setup writes no such file, say why in ``note``);
        only the tabs of ``task`` are shown, and the Framework field only for training."""
        self.query_one("#preview-note", Static).update(note)
        tabs = self.query_one("#preview-tabs", TabbedContent)
        for key, _, _ in PREVIEWS:
            if key in TASK_TABS.get(task, ()):
                tabs.show_tab(f"tab-{key}")
            else:
                tabs.hide_tab(f"tab-{key}")
        self.query_one("#row-framework").display = task != "infer"
        for key, _, _ in PREVIEWS:
            text = texts.get(key)
            area = self.query_one(f"#preview-{key}", TextArea)
            new = text if text is not None else ""
            if area.text != new:
                area.load_text(new)
            self.query_one(f"#tab-{key}", TabPane).disabled = text is None
        pane = tabs.get_pane(tabs.active) if tabs.active else None
        shown = TASK_TABS.get(task, ())
        if pane is None or pane.disabled or pane.id.removeprefix("tab-") not in shown:
            # the shown tab has no file now: show the first of this task that has one
            first = next((key for key, _, _ in PREVIEWS if key in shown and texts.get(key) is not None), None)
            if first is not None:
                tabs.active = f"tab-{first}"

    def show_command(self, command: str) -> None:
        """The ``dsadvise`` command that computes what the wizard shows (every field, the Advanced ones too)."""
        self.query_one("#cli-command", Static).update(f"Command line: {command}" if command else "")
        self.query_one("#command-row").display = bool(command)

    @property
    def output_dir(self) -> str:
        return self.query_one("#field-output_dir", Input).value.strip()

    @property
    def force(self) -> bool:
        return self.query_one("#field-force", Checkbox).value

    def set_status(self, text: str) -> None:
        self.query_one("#save-status", Static).update(text)

    def progress(self, done: int | None, total: int | None, label: str = "") -> None:
        """Show dry-run progress (``done`` None hides the bar)."""
        bar = self.query_one("#dry-run-progress", ProgressBar)
        bar.display = done is not None
        if done is not None:
            bar.update(total=total, progress=done)
        if label:
            self.set_status(label)
