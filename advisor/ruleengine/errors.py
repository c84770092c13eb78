"""Errors of the rule engine: one readable line each, naming the file, the rule and the field at fault.

Hierarchy (all are :class:`advisor.errors.AdvisorError`, so the CLI prints one line and exits 2)::

    RuleError                    anything wrong with a rule file or a rule
    ├── RuleSyntaxError          the expression does not parse: offending token and column
    ├── UnknownFactError         a fact name no fact catalog has, with a did-you-mean
    ├── RuleTypeError            operands of the wrong type (found at load time, or at evaluation)
    ├── RuleEvalError            evaluation failed (division by zero, a fact missing at run time)
    └── RuleConflictError        two rules of equal priority contradict each other on a setting
"""

from __future__ import annotations

from ..errors import AdvisorError


class RuleError(AdvisorError):
    """A problem with a rule; ``where`` (file, rule id, field) is prefixed when known."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, rule: str | None = None,
                 field: str | None = None, pos: int | None = None):
        self.message = message
        self.file = file
        self.rule = rule
        self.field = field
        self.pos = pos            # 1-based column in the expression, when the error has one
        super().__init__(self._render())

    def _render(self) -> str:
        parts = []
        if self.file:
            parts.append(self.file)
        if self.rule:
            parts.append(f"rule {self.rule!r}")
        if self.field:
            parts.append(self.field)
        return ": ".join(parts + [self.message])

    def located(self, *, file: str | None = None, rule: str | None = None,
                field: str | None = None) -> "RuleError":
        """The same error with file / rule / field filled in where still unknown (returns self)."""
        self.file = self.file or file
        self.rule = self.rule or rule
        self.field = self.field or field
        self.args = (self._render(),)
        return self

    def __str__(self) -> str:
        return self._render()


class RuleSyntaxError(RuleError):
    """The expression text does not parse; ``token`` is the offending text, ``pos`` its column."""

    def __init__(self, message: str, *, token: str | None = None, pos: int | None = None, **kw):
        self.token = token
        super().__init__(message, pos=pos, **kw)


class UnknownFactError(RuleError):
    """A fact name that is not in the catalog; the message suggests the closest names."""

    def __init__(self, message: str, *, name: str, pos: int | None = None, **kw):
        self.name = name
        super().__init__(message, pos=pos, **kw)


class RuleTypeError(RuleError):
    """An operator got operands it cannot work on (``"a" < 3``, ``true + 1``, ``x in 5``)."""


class RuleEvalError(RuleError):
    """Evaluation failed at run time (division by zero, a fact missing from the facts given)."""


class RuleConflictError(RuleError):
    """Rules of equal priority require and forbid the same setting value: no deterministic winner."""
