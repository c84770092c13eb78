"""Property tests: any text parses or fails with a clean RuleError; parsed trees round-trip and evaluate
to a value or a RuleError - never another exception."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from advisor.ruleengine import RuleError, parse_expression
from advisor.ruleengine.evaluate import compile_expression

ALPHABET = st.sampled_from(list("abcxyz_.0123456789 ()[],'\"+-*/%<>=!&|\\\n\t") + [
    " and ", " or ", " not ", " in ", "true", "false", "null", "GiB", "e", "min(", "abs(", "hardware.nodes",
    "1e999", "==", "!=", "<=", ">="])

FACTS = {"a": 3, "b": 0, "c": "text", "x": None, "y": True, "z": [1, 2], "hardware.nodes": 2, "a.b": 1.5}


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=80), st.lists(ALPHABET, max_size=40).map("".join)))
def test_any_text_parses_or_raises_rule_error(text):
    try:
        node = parse_expression(text)
    except RuleError:
        return
    assert parse_expression(str(node)) == node
    try:
        compile_expression(node)(FACTS)
    except RuleError:
        pass


_leaf = st.one_of(st.integers(-1000, 1000), st.floats(allow_nan=False, width=32).map(lambda f: round(f, 3)),
                  st.sampled_from(["'s'", "true", "false", "null", "a", "b", "c", "x", "y", "z", "hardware.nodes"]))


def _expr(children):
    ops = ["+", "-", "*", "/", "%", "==", "!=", "<", "<=", ">", ">=", "and", "or", "in", "not in"]
    return st.one_of(
        st.tuples(children, st.sampled_from(ops), children).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        children.map(lambda c: f"(not {c})"),
        children.map(lambda c: f"(-{c})"),
        st.lists(children, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.lists(children, min_size=1, max_size=3).map(lambda xs: "max(" + ", ".join(xs) + ")"),
    )


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(st.recursive(_leaf.map(str), _expr, max_leaves=12))
def test_well_formed_expressions_evaluate_or_raise_rule_error(text):
    node = parse_expression(text)
    assert parse_expression(str(node)) == node
    try:
        compile_expression(node)(FACTS)
    except RuleError:
        pass
