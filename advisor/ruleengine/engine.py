"""Rules, rule sets and how fired rules combine into a verdict on one candidate (or on the whole problem).

Effects and precedence (also in ``rules/README.md``):

1. ``reject`` always wins: a candidate a reject rule fires on is out, whatever else fired.
2. ``require`` / ``forbid`` constrain settings. The constraints fired on one setting are intersected. When
   they contradict (no value satisfies all), the higher ``priority`` wins and the lower-priority rule is
   recorded as *overridden*; a contradiction between rules of equal priority is a
   :class:`RuleConflictError` (exit 2) naming both, never a silent pick. A candidate whose setting is not
   in the resulting allowed set is rejected, blaming the rule(s) that exclude it.
3. ``prefer`` / ``penalise`` multiply the candidate's ranking step time by their factors; they never bring
   back a rejected candidate (forbid beats prefer).
4. ``advise`` attaches text; it never changes the ranking.

Rules run in a fixed order: priority (high first), then file name, then position in the file, so the
order of ``rules_fired`` is deterministic.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .errors import RuleConflictError, RuleError
from .evaluate import CompiledExpression

EFFECTS = ("reject", "require", "forbid", "prefer", "penalise", "advise")
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)(?::([a-z]+))?\}")
FORMATS = ("bytes", "count", "pct", "s")


def format_value(value: object, fmt: str | None) -> str:
    """A fact value as text for a message: ``bytes`` -> '12.50 GiB', ``count`` -> '6.74B', ``pct``, ``s``."""
    if value is None:
        return "unknown"
    if isinstance(value, bool):
        return "true" if value else "false"
    if fmt and isinstance(value, (int, float)):
        from ..formatting import fmt_bytes, fmt_count

        if fmt == "bytes":
            return fmt_bytes(value)
        if fmt == "count":
            return fmt_count(int(value))
        if fmt == "pct":
            return f"{value * 100:.0f}%"
        if fmt == "s":
            return f"{value:.2f} s"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclass(frozen=True)
class Template:
    """Message text with ``{fact}`` / ``{fact:bytes}`` placeholders, filled from the facts when a rule fires."""

    text: str

    @property
    def facts(self) -> frozenset[str]:
        return frozenset(m.group(1) for m in PLACEHOLDER.finditer(self.text))

    def render(self, facts: Mapping[str, object]) -> str:
        if "{" not in self.text:
            return self.text
        return PLACEHOLDER.sub(lambda m: format_value(facts.get(m.group(1)), m.group(2)), self.text)


@dataclass(frozen=True, eq=False)
class Rule:
    """One loaded rule. ``file`` is its display path (``rules/precision.yaml``), ``index`` its position."""

    id: str
    description: str
    file: str
    index: int
    priority: int
    when: CompiledExpression
    effect: str
    settings: Mapping[str, frozenset] = field(default_factory=dict)   # require / forbid
    factor: float = 1.0                                               # prefer / penalise
    message: Template | None = None                                   # reject reason / advice text
    facts: frozenset[str] = frozenset()                               # every fact the rule reads

    @property
    def when_text(self) -> str:
        return str(self.when.node)

    @property
    def sort_key(self) -> tuple:
        return (-self.priority, self.file, self.index)

    def fires(self, facts: Mapping[str, object]) -> bool:
        """True when ``when`` holds for these facts; errors come back naming this rule and its file."""
        try:
            return self.when.test(facts)
        except RuleError as exc:
            raise exc.located(file=self.file, rule=self.id, field="when") from None

    def text(self, facts: Mapping[str, object]) -> str:
        """The reason / advice shown to users: the message if the rule has one, else its description."""
        return self.message.render(facts) if self.message else self.description


@dataclass(frozen=True)
class Firing:
    """One rule that fired: on which candidate (None = the problem as a whole), with what outcome."""

    rule: Rule
    candidate: str | None
    outcome: str                  # rejected | constrained | overridden | applied | advised | passed

    def to_json(self) -> dict:
        out = {"rule": self.rule.id, "file": self.rule.file, "effect": self.rule.effect, "outcome": self.outcome}
        if self.candidate is not None:
            out["candidate"] = self.candidate
        return out


@dataclass
class Verdict:
    """What the fired rules decided about one candidate."""

    rejected_by: list[tuple[Rule, str]] = field(default_factory=list)   # (rule, reason text)
    factor: float = 1.0
    factors: list[tuple[Rule, float]] = field(default_factory=list)
    advice: list[tuple[Rule, str]] = field(default_factory=list)
    fired: list[Firing] = field(default_factory=list)

    @property
    def rejected(self) -> bool:
        return bool(self.rejected_by)

    @property
    def reason(self) -> str:
        return "; ".join(f"{text} [rule {r.id}]" for r, text in self.rejected_by)


def resolve_setting(setting: str, constraints: Sequence[Rule], domain: Iterable[object]
                    ) -> tuple[frozenset, list[Rule], list[tuple[Rule, Rule]]]:
    """Allowed values of ``setting`` under fired require/forbid rules, by the precedence above.

    Returns (allowed values, rules that took effect, [(overridden rule, the rule that beat it)]).
    Raises RuleConflictError when rules of equal priority contradict each other.
    """
    full = frozenset(domain)

    def admits(rule: Rule) -> frozenset:
        values = rule.settings[setting]
        return full & values if rule.effect == "require" else full - values

    allowed = full
    effective: list[Rule] = []
    overridden: list[tuple[Rule, Rule]] = []
    ordered = sorted(constraints, key=lambda r: r.sort_key)
    i = 0
    while i < len(ordered):
        priority = ordered[i].priority
        group = []
        while i < len(ordered) and ordered[i].priority == priority:
            group.append(ordered[i])
            i += 1
        kept: list[Rule] = []
        for rule in group:
            if effective and not (allowed & admits(rule)):
                winner = next((w for w in effective if not (admits(w) & admits(rule))), effective[0])
                overridden.append((rule, winner))
            else:
                kept.append(rule)
        narrowed = allowed
        for rule in kept:
            narrowed = narrowed & admits(rule)
        if kept and not narrowed and (allowed & admits(kept[0])):
            pair = next(((a, b) for j, a in enumerate(kept) for b in kept[j + 1:]
                         if not (allowed & admits(a) & admits(b))), (kept[0], kept[-1]))
            a, b = pair
            raise RuleConflictError(
                f"rules {a.id!r} ({a.file}) and {b.id!r} ({b.file}) both fire with priority {priority} and "
                f"contradict each other on {setting!r}; give one of them a higher priority")
        allowed = narrowed
        effective.extend(kept)
    return allowed, effective, overridden


def apply_rules(rules: Sequence[Rule], facts: Mapping[str, object], values: Mapping[str, object] | None,
                domains: Mapping[str, Iterable[object]], candidate: str | None = None,
                record_passes: bool = False) -> Verdict:
    """Run ``rules`` (already in order) against ``facts`` for one candidate with setting ``values``.

    ``values`` None means the rules judge the whole problem: require/forbid then only narrow domains
    (see :func:`narrow_domains`) and are recorded as 'constrained'.
    """
    v = Verdict()
    constraints: dict[str, list[Rule]] = {}
    for rule in rules:
        if not rule.fires(facts):
            continue
        eff = rule.effect
        if eff == "reject":
            v.rejected_by.append((rule, rule.text(facts)))
            v.fired.append(Firing(rule, candidate, "rejected"))
        elif eff in ("require", "forbid"):
            for setting in rule.settings:
                constraints.setdefault(setting, []).append(rule)
        elif eff in ("prefer", "penalise"):
            v.factor *= rule.factor
            v.factors.append((rule, rule.factor))
            v.fired.append(Firing(rule, candidate, "applied"))
        else:
            v.advice.append((rule, rule.text(facts)))
            v.fired.append(Firing(rule, candidate, "advised"))
    if not constraints:
        return v
    seen: dict[int, str] = {}
    for setting, rules_on in constraints.items():
        allowed, effective, overridden = resolve_setting(setting, rules_on, domains[setting])
        for rule, _winner in overridden:
            seen[id(rule)] = "overridden"
        if values is None:
            for rule in effective:
                seen.setdefault(id(rule), "constrained")
            continue
        value = values.get(setting)
        if value in allowed:
            for rule in effective:
                seen.setdefault(id(rule), "passed")
            continue
        for rule in effective:
            vals = rule.settings[setting]
            excludes = (value not in vals) if rule.effect == "require" else (value in vals)
            if excludes:
                if seen.get(id(rule)) != "rejected":
                    v.rejected_by.append((rule, rule.text(facts)))
                seen[id(rule)] = "rejected"
            else:
                seen.setdefault(id(rule), "passed")
    by_id = {id(r): r for rs in constraints.values() for r in rs}
    for rid, outcome in seen.items():
        if outcome != "passed" or record_passes:
            v.fired.append(Firing(by_id[rid], candidate, outcome))
    return v


def narrow_domains(rules: Sequence[Rule], facts: Mapping[str, object], domains: Mapping[str, Iterable[object]]
                   ) -> tuple[dict[str, frozenset], list[Firing], dict[str, list[Rule]]]:
    """Problem-level require/forbid: the allowed values of each setting before any candidate is built.

    Returns (allowed values per constrained setting, firings, the effective rules per setting).
    """
    constraints: dict[str, list[Rule]] = {}
    fired: list[Firing] = []
    for rule in rules:
        if rule.effect in ("require", "forbid") and rule.fires(facts):
            for setting in rule.settings:
                constraints.setdefault(setting, []).append(rule)
    allowed: dict[str, frozenset] = {}
    blame: dict[str, list[Rule]] = {}
    outcome: dict[int, tuple[Rule, str]] = {}
    for setting, rules_on in constraints.items():
        ok, effective, overridden = resolve_setting(setting, rules_on, domains[setting])
        allowed[setting] = ok
        blame[setting] = effective
        for rule in effective:
            outcome.setdefault(id(rule), (rule, "constrained"))
        for rule, _ in overridden:
            outcome[id(rule)] = (rule, "overridden")
    for rule, out in sorted(outcome.values(), key=lambda x: x[0].sort_key):
        fired.append(Firing(rule, None, out))
    return allowed, fired, blame


@dataclass
class RuleSet:
    """Every loaded rule in evaluation order, the constants, and the files they came from."""

    rules: list[Rule]
    constants: dict[str, object]
    files: list[str]

    def __post_init__(self) -> None:
        self.rules.sort(key=lambda r: r.sort_key)

    def by_id(self, rule_id: str) -> Rule:
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise KeyError(rule_id)

    def partition(self, stage_of: Callable[[Rule], int], stages: int) -> list[list[Rule]]:
        """Rules split by the evaluation stage the caller assigns (order kept inside each stage)."""
        out: list[list[Rule]] = [[] for _ in range(stages)]
        for r in self.rules:
            out[stage_of(r)].append(r)
        return out

    def constant(self, name: str) -> object:
        key = name if name.startswith("const.") else f"const.{name}"
        if key not in self.constants:
            raise RuleError(f"the rules define no constant {key!r} (expected in rules/defaults.yaml)")
        return self.constants[key]
