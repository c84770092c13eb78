"""Step 4: the recommendation: the choice and why, the alternatives with their reasons, the rules that fired."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import DataTable, OptionList, Static, TabbedContent, TabPane
from textual.widgets.option_list import Option

from ..wording import wizard_words

from ..backend import Outcome, StrategySource
from .memory_bar import fmt_bytes


def settings_line(s: dict | None) -> str:
    """A configuration dict (a recommendation or an alternative's strategy) in a few words:
    ``zero3 +opt:cpu, bf16, lora, checkpointing full, micro-batch 4``."""
    if not s:
        return ""
    out = str(s.get("name") or s.get("strategy") or "?")
    for key, tag in (("offload_optimizer", "opt"), ("offload_param", "param")):
        if s.get(key) not in (None, "none"):
            out += f" +{tag}:{s[key]}"
    parts = [out]
    keys = (("precision", "{}"), ("method", "{}"), ("activation_checkpointing", "checkpointing {}"),
            ("micro_batch_size", "micro-batch {}"))
    if s.get("layout"):            # an inference layout: no checkpointing; the batch per generate() call
        keys = (("precision", "{}"), ("method", "{}"), ("batch_size", "batch {}"), ("processes", "{} process(es)"))
    for key, fmt in keys:
        if s.get(key) is not None:
            parts.append(fmt.format(s[key]))
    if (s.get("gradient_accumulation_steps") or 1) > 1:
        parts.append(f"accumulation {s['gradient_accumulation_steps']}")
    return ", ".join(parts)


def short_label(s: dict | None) -> str:
    """An alternative in the table: strategy and offloads, checkpointing, micro-batch."""
    if not s:
        return ""
    out = str(s.get("name") or "?")
    for key, tag in (("offload_optimizer", "opt"), ("offload_param", "param")):
        if s.get(key) not in (None, "none"):
            out += f" +{tag}:{s[key]}"
    if s.get("method") not in (None, "full"):
        out += f" {s['method']}"
    if s.get("activation_checkpointing") not in (None, "none"):
        out += f" ckpt:{s['activation_checkpointing']}"
    if s.get("micro_batch_size") is not None:
        out += f" mb:{s['micro_batch_size']}"
    return out


def _estimate_speed(est: Any) -> str:
    """The chosen configuration's own step time (the estimate's, with its assumptions in the CLI and JSON)."""
    st = getattr(est, "step_time", None)
    if st is None:
        return ""
    return (f" Its step: {fmt_seconds(st.seconds)}, {st.tokens_per_second:,.0f} tokens/s, compute at "
            f"{st.compute_efficiency:.0%} of peak, MFU {st.mfu:.0%}.")


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


def _rule_text(rule: Any) -> tuple[str, str, str]:
    """(id, effect, message) of one ``rules_fired`` entry, whatever keys it uses."""
    if not isinstance(rule, dict):
        return str(rule), "", ""
    rid = str(rule.get("rule") or rule.get("id") or "?")
    effect = str(rule.get("effect") or "")
    if rule.get("outcome"):
        effect = f"{effect} ({rule['outcome']})" if effect else str(rule["outcome"])
    detail = str(rule.get("message") or rule.get("candidate") or "")
    if rule.get("file"):
        detail = f"{detail}  [{rule['file']}]" if detail else f"[{rule['file']}]"
    return rid, effect, detail


def _bullets(title: str, items: list[str]) -> Text:
    out = Text()
    if items:
        out.append(f"{title}\n", style="bold")
        for item in items:
            out.append(f"  • {wizard_words(item)}\n")
    return out


def estimate_notes(est: Any, assumed: list[str] = ()) -> Text:
    """What the estimate shown says beside its figures, as ``dsadvise estimate`` prints it (``Note``, ``Assumed``)
    and its JSON holds it (``notes``, ``step_time.assumptions``), after what was ``assumed`` from the inputs (the
    sequence length, a VRAM replacing the GPU's: the notes the CLI adds)."""
    if est is None:
        return _bullets("Assumed from your inputs", list(assumed))
    step = getattr(est, "step_time", None)
    notes = [*assumed, *(n for n in est.notes if n not in assumed)]
    out = _bullets(f"Notes on the estimate shown ({est.strategy.name})", notes)
    out.append_text(_bullets("Assumed for its step time", list(step.assumptions) if step is not None else []))
    return out


def suggestion_text(number: int, s: Any) -> str:
    """One "what would fit" line: its key, the change in the wizard's words, and what the re-run found."""
    from ..form import field_for_flag
    from ..wording import field_words

    fields = [f"{field_words(n)} = {v}" if (n := field_for_flag(k)) else f"{k} {v} (command line only)"
              for k, v in s.flags.items()]
    return (f"{number}  {wizard_words(s.change)}: {', '.join(fields)}" + ("" if s.verified else " [unverified]")
            + (f" -> {wizard_words(s.result)}" if s.result else ""))


class RecommendationView(Vertical):
    """The recommendation, or the estimate of the chosen strategy when the recommender is unavailable."""

    def compose(self) -> ComposeResult:
        yield Static("Recommendation", classes="step-title")
        yield Static(id="rec-verdict")
        yield Static("What would fit: press its number (or Enter on it) to apply it", id="suggestions-title")
        yield OptionList(id="suggestions")
        with TabbedContent(id="rec-tabs"):
            with TabPane("Why", id="rec-why"):
                yield VerticalScroll(Static(id="rec-details"))
            with TabPane("Alternatives", id="rec-alternatives"):
                yield DataTable(id="alternatives", cursor_type="row", zebra_stripes=True)
            with TabPane("Rules fired", id="rec-rules"):
                yield DataTable(id="rules-fired", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        self._columns()

    def on_resize(self) -> None:
        self._columns()

    def _columns(self) -> None:
        """Fixed widths, the last column taking the rest, so that long reasons wrap inside it."""
        width = max(self.size.width, 60)
        self._reason_width = max(20, width - 28 - 5 - 10 - 8)
        self._detail_width = max(20, width - 26 - 22 - 8)
        for wid, columns in (("#alternatives", (("configuration", 28), ("fits", 5), ("tokens/s", 10),
                                                ("why not chosen", self._reason_width))),
                             ("#rules-fired", (("rule", 26), ("effect", 22), ("detail", self._detail_width)))):
            table = self.query_one(wid, DataTable)
            if [c.width for c in table.columns.values()] != [w for _, w in columns]:
                table.clear(columns=True)
                for label, w in columns:
                    table.add_column(label, width=w)
                if getattr(self, "_last", None) is not None:
                    self.call_after_refresh(self.show, self._last)

    def show(self, out: Outcome | None) -> None:
        verdict, details = Text(), Text()
        alternatives = self.query_one("#alternatives", DataTable)
        rules = self.query_one("#rules-fired", DataTable)
        self._last = out
        alternatives.clear()
        rules.clear()
        rec = out.recommendation if out is not None else None
        if out is None or not out.ready:
            verdict.append("Nothing to recommend yet. ", style="italic")
            if out is not None and out.missing:
                verdict.append("Still needed: " + ", ".join(out.missing) + ".")
            elif out is not None and (out.errors or out.general_error):
                verdict.append("Fix the fields marked in red.")
        elif rec is not None:
            self._show_recommendation(out, rec, verdict, details, alternatives, rules)
        else:
            verdict.append("Recommender unavailable", style="bold")
            verdict.append(f": {wizard_words(out.recommender_note)}.\n" if out.recommender_note else ".\n")
            est = out.estimate
            if est is not None:
                st = est.strategy
                verdict.append(f"Estimate for {st.name} ({out.strategy_source}): ")
                verdict.append("fits" if est.fits else "does not fit", style="bold green" if est.fits else "bold red")
                verdict.append(f", {fmt_bytes(est.per_gpu.total)} of {fmt_bytes(est.hardware.vram_bytes)} per GPU.")
                verdict.append(_estimate_speed(est))
        if out is not None and out.general_error:
            verdict.append(f"\n{wizard_words(out.general_error)}", style="bold red")
        ready = out is not None and out.ready
        if ready:
            details.append_text(estimate_notes(out.estimate, out.assumed))
        self.query_one("#rec-verdict", Static).update(verdict)
        self.query_one("#rec-details", Static).update(details)
        self.query_one("#rec-tabs", TabbedContent).display = ready and (rec is not None or out.estimate is not None)
        found = list(rec.suggestions) if rec is not None and not rec.found and out.ready else []
        options = self.query_one("#suggestions", OptionList)
        options.clear_options()
        options.add_options([Option(suggestion_text(i, s), id=f"suggestion-{i}")
                             for i, s in enumerate(found[:9], 1)])
        options.display = bool(found)
        self.query_one("#suggestions-title", Static).display = bool(found)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option_list.id == "suggestions" and event.option.id:
            self.app.action_apply_suggestion(int(event.option.id.split("-")[1]))

    def _show_recommendation(self, out: Outcome, rec: Any, verdict: Text, details: Text,
                             alternatives: DataTable, rules: DataTable) -> None:
        if rec.found:
            verdict.append(" RECOMMENDED ", style="bold black on #59a14f")
            settings = rec.recommendation.model_dump(mode="json") if rec.recommendation is not None else {}
            verdict.append("  " + settings_line(settings), style="bold")
            launcher = settings.get("launcher")
            if launcher:
                verdict.append(f"\nLaunch: {launcher}")
            if rec.step_time is not None:
                t = rec.step_time
                verdict.append(f"\nStep time {fmt_seconds(t.seconds)} (compute {fmt_seconds(t.compute_seconds)}, "
                               f"exposed communication {fmt_seconds(t.communication_seconds)}, offload "
                               f"{fmt_seconds(t.offload_seconds)}), {t.tokens_per_second:,.0f} tokens/s; "
                               f"compute at {t.compute_efficiency:.0%} of peak, MFU {t.mfu:.0%}")
            if out.strategy_source is StrategySource.CHOSEN and out.estimate is not None:
                est = out.estimate
                verdict.append(f"\nThe bar shows your choice, {est.strategy.name}: "
                               f"{'fits' if est.fits else 'does not fit'}.")
                verdict.append(_estimate_speed(est))
        else:
            verdict.append(" NOTHING FITS ", style="bold white on #c0392b")
            verdict.append("  no configuration fits this hardware")
        details.append_text(_bullets("Why", list(rec.reasons)))
        details.append_text(_bullets("Advice", list(rec.advice)))
        details.append_text(_bullets("Assumptions", list(rec.assumptions)))
        for alt in rec.alternatives:
            fits = "-" if alt.fits is None else ("yes" if alt.fits else "no")
            label = short_label(alt.strategy.model_dump(mode="json"))
            tps = "-" if alt.tokens_per_second is None else f"{alt.tokens_per_second:,.0f}"
            alternatives.add_row(label, fits, tps,
                                 Text(wizard_words(alt.rejected_because)), height=None)
        for rule in rec.rules_fired:
            rid, effect, detail = _rule_text(rule.model_dump(mode="json"))
            rules.add_row(rid, effect, Text(detail), height=None)
