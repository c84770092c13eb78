"""The rule engine: recommendation rules as data (``rules/*.yaml``) over a small, safe expression language.

Parts, kept apart: :mod:`.lexer` (text -> tokens), :mod:`.parser` (tokens -> :mod:`.nodes` tree),
:mod:`.evaluate` (type checking and closure compilation; no ``eval``/``exec``), :mod:`.loader` (YAML, JSON
Schema, file/rule/field errors), :mod:`.engine` (effects, precedence, conflicts) and :mod:`.errors`.
The language and the precedence of effects are documented in ``rules/README.md``.
"""

from __future__ import annotations

from .engine import EFFECTS, Firing, Rule, RuleSet, Verdict, apply_rules, narrow_domains, resolve_setting
from .errors import (RuleConflictError, RuleError, RuleEvalError, RuleSyntaxError, RuleTypeError,
                     UnknownFactError)
from .evaluate import check, compile_expression, evaluate
from .loader import load_rules, validate_document
from .parser import parse_expression

__all__ = ["EFFECTS", "Firing", "Rule", "RuleSet", "Verdict", "apply_rules", "narrow_domains", "resolve_setting",
           "RuleConflictError", "RuleError", "RuleEvalError", "RuleSyntaxError", "RuleTypeError",
           "UnknownFactError", "check", "compile_expression", "evaluate", "load_rules", "validate_document",
           "parse_expression"]
