"""The Advanced areas: one collapsible section per group of the flag table, its fields generated from the table.

Nothing here names a flag: each field comes from :data:`advisor.tui.form.ADVANCED` (the flag's spelling as the
caption, its help as the hint, its ``Literal`` choices, default and argparse type), so a flag added to
:mod:`advisor.cli.flags` appears here without wizard code. A choice is a Select, a switch a Checkbox, anything
else an Input checked with the CLI's own parser on every change.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widget import Widget
from textual.widgets import Checkbox, Collapsible, Input, Select, Static

from ..form import ADVANCED, SECTIONS, AdvancedField, WizardInputs, applies
from .fields import CliCheck, Field


def control(field: AdvancedField, text: str) -> Widget:
    """The widget for one generated field holding ``text`` (its id is ``field-<name>``)."""
    wid = f"field-{field.name}"
    if field.kind == "switch":
        return Checkbox("on", text == "yes", id=wid)
    if field.kind == "choice":
        return Select([(c, c) for c in field.choices], value=text or Select.BLANK, id=wid,
                      allow_blank=field.flag.default is None, prompt=field.placeholder)
    return Input(text, placeholder=field.placeholder, id=wid, validators=[CliCheck(field.name)],
                 validate_on=["changed", "submitted"], valid_empty=True)


def section_fields(section: str) -> list[AdvancedField]:
    return [f for f in ADVANCED.values() if f.section == section]


class AdvancedSection(Collapsible):
    """One section of generated fields, collapsed until opened (its title counts the fields that differ from the
    command line's defaults). Its fields are mounted when it is first opened (or at once when one is set): two
    dozen rows nobody opened cost every start a third of a second."""

    def __init__(self, section: str, inputs: WizardInputs) -> None:
        spec = next(s for s in SECTIONS if s.id == section)
        self._section, self._heading, self._inputs = section, spec.title, inputs   # Collapsible owns _title
        self._fields = section_fields(section)
        self._body = Vertical(*([Static(spec.note, classes="advanced-note", markup=False)] if spec.note else []),
                              classes="advanced-fields")
        self.filled = False
        super().__init__(self._body, title=self._label(inputs), collapsed=not self._changed(inputs),
                         id=f"advanced-{section}", classes="advanced")

    async def on_mount(self) -> None:
        if not self.collapsed:
            await self.fill()

    async def on_collapsible_expanded(self, event: Collapsible.Expanded) -> None:
        if event.collapsible is self:
            await self.fill()

    async def fill(self) -> None:
        """Mount the section's fields with the app's current values, then let the app show their errors."""
        if self.filled:
            return
        self.filled = True
        inputs = getattr(self.app, "inputs", self._inputs)
        rows = [Field(f.name, f.flag.flag, control(f, inputs.get(f.name)), hint=f.flag.help) for f in self._fields]
        for row in rows:       # a field that does not apply to the inputs is mounted hidden
            row.display = applies(row.field_name, inputs)
        await self._body.mount_all(rows)
        hook = getattr(self.app, "fields_mounted", None)
        if hook is not None:
            hook()

    def _changed(self, inputs: WizardInputs) -> int:
        """Fields set (differing from the default) among those that apply (a hidden one is not in effect)."""
        return sum(inputs.get(f.name) != f.default and applies(f.name, inputs) for f in self._fields)

    def applies(self, inputs: WizardInputs) -> bool:
        """Whether any of the section's fields applies to ``inputs`` (else the section is hidden)."""
        return any(applies(f.name, inputs) for f in self._fields)

    def _label(self, inputs: WizardInputs) -> str:
        n = self._changed(inputs)
        return f"{self._heading}{f' ({n} set)' if n else ''}"

    def update_title(self, inputs: WizardInputs) -> None:
        """Say how many of the section's fields are set."""
        self.title = self._label(inputs)


def sections_for(step: str) -> tuple[str, ...]:
    """The section ids placed on ``step`` (``hardware``, ``training``), in the table's order."""
    return tuple(s.id for s in SECTIONS if s.step == step and section_fields(s.id))


def advanced_sections(step: str, inputs: WizardInputs) -> ComposeResult:
    """Yield the Advanced sections of ``step``."""
    for section in sections_for(step):
        yield AdvancedSection(section, inputs)
