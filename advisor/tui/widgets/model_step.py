"""Step 1: the model. Type to search the catalog, or give a size (7B) or a path to a config.json."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from .fields import Field


def search_catalog(text: str, models: list) -> list:
    """Catalog models whose name, alias or hf_id contains every word of ``text`` (all of them when blank);
    names that start with the text come first."""
    from ...catalog.models import lookup_keys

    words = text.lower().split()
    if not words:
        return list(models)
    hits = [m for m in models if all(any(w in k.lower() for k in lookup_keys(m)) for w in words)]
    return sorted(hits, key=lambda m: not m.name.lower().startswith(words[0]))


def _option(m) -> Option:
    from ...formatting import fmt_count

    prompt = Text.assemble((f"{m.name:<20}", "bold"), f"{fmt_count(m.parameters):>9}  ",
                           (f"{m.architecture.family:<9}", "italic"), (m.hf_id, "dim"))
    return Option(prompt, id=m.name)


class ModelInput(Input):
    """The model field; Down moves into the matches list."""

    BINDINGS = [Binding("down", "matches", "Matches", show=False)]

    def action_matches(self) -> None:
        self.screen.query_one("#model-matches", MatchList).focus()


class MatchList(OptionList):
    """Catalog models matching the model field; focusing it highlights the best match, Enter picks."""

    def on_focus(self) -> None:
        if self.highlighted is None and self.option_count:
            self.highlighted = 0


class ModelStep(VerticalScroll):
    """The model field, the catalog matches as you type, and how the text resolved."""

    can_focus = False    # Tab goes to the fields; they scroll into view

    def __init__(self, value: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self._value = value
        self._models: list = []       # the catalog, loaded just after the first paint

    def compose(self) -> ComposeResult:
        yield Static("Which model do you want to train?", classes="step-title")
        yield Field("model", "Model", ModelInput(
            self._value, placeholder="a catalog name (llama-3.1-8b), a size (7B, 350M) or ./config.json",
            id="field-model"),
            hint="Type to search the catalog; Down/Tab then Enter picks a match.")
        yield MatchList(id="model-matches")
        yield Static("", id="model-note", markup=False)

    def load_catalog(self) -> None:
        """Read the model catalog (pydantic, YAML: kept off the path to the first paint) and list matches."""
        from ...catalog.models import list_models

        self._models = list_models()
        self._filter(self.query_one("#field-model", Input).value)

    @on(Input.Changed, "#field-model")
    def _changed(self, event: Input.Changed) -> None:
        self._filter(event.value)

    def _filter(self, text: str) -> None:
        matches = self.query_one("#model-matches", OptionList)
        hits = search_catalog(text, self._models)
        matches.clear_options()
        matches.add_options([_option(m) for m in hits])
        matches.display = bool(hits)

    @on(OptionList.OptionSelected, "#model-matches")
    def _pick(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        field = self.query_one("#field-model", Input)
        field.value = event.option.id or ""
        field.cursor_position = len(field.value)

    @property
    def match_count(self) -> int:
        return self.query_one("#model-matches", OptionList).option_count

    def set_note(self, note: str) -> None:
        self.query_one("#model-note", Static).update(note)
