"""One labelled form field: the caption, the control, a hint and the inline error under it."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.validation import ValidationResult, Validator
from textual.widget import Widget
from textual.widgets import Input, Label, Static

from ..form import check_field


class Field(Vertical):
    """``caption`` over ``control`` (whose id is ``field-<name>``), then one line under it: the hint, or the
    inline error in its place while the value is invalid (``#error-<name>``; hidden when there is neither)."""

    DEFAULT_CLASSES = "field"

    def __init__(self, name: str, caption: str, control: Widget, hint: str = "") -> None:
        super().__init__(id=f"row-{name}")
        self.field_name = name
        self._caption = caption
        self._control = control
        self._hint = hint
        self.error: str | None = None

    def compose(self) -> ComposeResult:
        yield Label(self._caption, classes="caption")
        yield self._control
        note = Static(self._hint, classes="note", id=f"error-{self.field_name}", markup=False)
        note.display = bool(self._hint)
        yield note

    def set_error(self, message: str | None) -> None:
        if message == self.error:
            return
        self.error = message
        note = self.query_one(f"#error-{self.field_name}", Static)
        note.update(message or self._hint)
        note.display = bool(message or self._hint)
        self.set_class(bool(message), "-invalid")


class CliCheck(Validator):
    """Validates a field's text with the CLI's own argument type for that flag (see :mod:`advisor.tui.form`)."""

    def __init__(self, field_name: str) -> None:
        super().__init__()
        self.field_name = field_name

    def validate(self, value: str) -> ValidationResult:
        message = check_field(self.field_name, value)
        return self.success() if message is None else self.failure(message)


def number_input(name: str, value: str, placeholder: str = "") -> Input:
    """An Input for a numeric field, checked as the CLI checks its flag, on every change."""
    return Input(value, placeholder=placeholder, id=f"field-{name}", validators=[CliCheck(name)],
                 validate_on=["changed", "submitted"], valid_empty=False)
