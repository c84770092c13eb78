"""The expression language: tokens, precedence, semantics, load-time checks and their messages."""

from __future__ import annotations

import pytest

from advisor.ruleengine import (RuleError, RuleEvalError, RuleSyntaxError, RuleTypeError, UnknownFactError, check,
                           evaluate, parse_expression)
from advisor.ruleengine.lexer import tokenize
from advisor.ruleengine.nodes import BoolOp, Compare, Fact, Literal, facts_used

CATALOG = {"hardware.nodes": "number", "hardware.gpus_per_node": "number", "hardware.bf16": "bool",
           "hardware.nvme_path": "string?", "hardware.cpu_ram_bytes": "number?", "candidate.zero_stage": "number?",
           "candidate.strategy": "string", "training.precision": "string?", "estimate.per_gpu.total": "number"}


@pytest.mark.parametrize("text, value", [
    ("1 + 2 * 3", 7), ("(1 + 2) * 3", 9), ("10 - 4 - 3", 3), ("12 / 4 / 3", 1.0), ("7 % 4", 3), ("-2 * -3", 6),
    ("2 * 80GiB", 160 * 1024**3), ("1_000_000", 1_000_000), ("1.5e3", 1500.0), ("min(3, 1, 2)", 1),
    ("max(1, 4)", 4), ("abs(-5)", 5), ("not true or true", True), ("not (true or true)", False),
    ("true or false and false", True), ("1 < 2 and 2 < 3", True), ("'a' < 'b'", True),
    ("3 in [1, 2, 3]", True), ("'zero' in 'zero3'", True), ("4 not in [1, 2]", True), ("[1, 2] == [1, 2]", True),
    ("true == 1", False), ("null == null", True), ("'x' != 3", True), ("\"it's\"", "it's"), ("'a\\'b'", "a'b"),
])
def test_values_and_precedence(text, value):
    assert evaluate(text, {}) == value


def test_dotted_facts_and_positions():
    node = parse_expression("hardware.nodes > 1 and candidate.zero_stage in [2, 3]")
    assert isinstance(node, BoolOp) and node.op == "and"
    left = node.operands[0]
    assert isinstance(left, Compare) and isinstance(left.left, Fact) and left.left.name == "hardware.nodes"
    assert left.pos == 16 and left.left.pos == 1
    assert facts_used(node) == {"hardware.nodes", "candidate.zero_stage"}
    assert evaluate(node, {"hardware.nodes": 2, "candidate.zero_stage": 3}) is True
    assert evaluate(node, {"hardware.nodes": 2, "candidate.zero_stage": None}) is False


def test_tokens_carry_columns():
    toks = tokenize("a.b >= 80GiB")
    assert [(t.kind, t.pos) for t in toks] == [("NAME", 1), ("OP", 2), ("NAME", 3), ("OP", 5), ("NUMBER", 8),
                                               ("EOF", 13)]


@pytest.mark.parametrize("text", ["a.b > 1 and not c", "x in [1, 'a', null, true]", "-(a + 1) * 2",
                                  "min(a, 2) <= max(b, 3) or c not in 'xyz'", "'q\\'uote\\n' == s", "-3 - -2"])
def test_canonical_text_round_trips(text):
    node = parse_expression(text)
    assert parse_expression(str(node)) == node


@pytest.mark.parametrize("text, token, column, words", [
    ("hardware.nodes >", "<end>", 17, "expected a value"),
    ("(1 + 2", "<end>", 7, "expected ')'"),
    ("1 < x < 3", "<", 7, "do not chain"),
    ("a = 1", "=", 3, "use '=='"),
    ("a && b", "&&", 3, "use 'and'"),
    ("a || b", "||", 3, "use 'or'"),
    ("True", "True", 1, "write 'true'"),
    ("'abc", "'abc", 1, "unterminated string"),
    ("x.", "<end>", 3, "a name after '.'"),
    ("3x", "3x", 1, "size unit"),
    ("1 +* 2", "*", 4, "expected a value"),
    ("1 2", "2", 3, "expected an operator"),
    ("a.b(1)", "(", 4, "only plain names"),
    ("€", "€", 1, "unexpected character"),
    ("[1, 2", "<end>", 6, "',' or ']'"),
    ("1__0", "1__0", 1, "malformed number"),
])
def test_syntax_errors_name_token_and_column(text, token, column, words):
    with pytest.raises(RuleSyntaxError) as err:
        parse_expression(text)
    assert err.value.token == token
    assert err.value.pos == column
    assert words in str(err.value)
    assert f"column {column}" in str(err.value)


def test_nesting_is_bounded():
    with pytest.raises(RuleSyntaxError, match="nested deeper"):
        parse_expression("(" * 100 + "1" + ")" * 100)
    with pytest.raises(RuleSyntaxError, match="too deeply nested"):
        parse_expression("+".join(["1"] * 500))
    with pytest.raises(RuleSyntaxError, match="longer than"):
        parse_expression("1" + " " * 5000)


def test_unknown_fact_suggests():
    with pytest.raises(UnknownFactError) as err:
        check(parse_expression("hardware.node > 1"), CATALOG)
    assert "hardware.nodes" in str(err.value) and "did you mean" in str(err.value)
    assert err.value.name == "hardware.node" and err.value.pos == 1
    with pytest.raises(UnknownFactError, match="group of facts"):
        check(parse_expression("hardware == 1"), CATALOG)
    with pytest.raises(UnknownFactError, match="unknown function .mix.*did you mean min, max"):
        check(parse_expression("mix(1, 2) > 0"), CATALOG)


@pytest.mark.parametrize("text, words", [
    ("hardware.nodes == 'two'", "never equal"),
    ("hardware.bf16 + 1", "needs number"),
    ("hardware.nodes and true", "needs bool"),
    ("training.precision < 3", "orders two numbers or two strings"),
    ("candidate.zero_stage in ['a']", "never found"),
    ("hardware.nodes in 5", "list or a string"),
    ("hardware.nodes in 'abc'", "only a string"),
    ("hardware.nodes / 0", "division by zero"),
    ("abs(1, 2) > 0", "takes 1"),
    ("not hardware.nodes", "needs bool"),
])
def test_type_errors_at_load_time(text, words):
    with pytest.raises(RuleTypeError, match=words):
        check(parse_expression(text), CATALOG)


def test_nullable_facts_are_fine_statically():
    for text in ("hardware.nvme_path == null", "hardware.cpu_ram_bytes > 64GiB", "candidate.zero_stage in [2, 3]",
                 "training.precision in ['bf16', 'fp16']"):
        check(parse_expression(text), CATALOG)


def test_null_semantics():
    facts = {"hardware.cpu_ram_bytes": None, "hardware.nvme_path": None}
    assert evaluate("hardware.cpu_ram_bytes > 1", facts) is False
    assert evaluate("hardware.cpu_ram_bytes < 1", facts) is False
    assert evaluate("hardware.cpu_ram_bytes + 1", facts) is None
    assert evaluate("not hardware.nvme_path", facts) is True
    assert evaluate("hardware.nvme_path == null", facts) is True
    assert evaluate("1 in hardware.nvme_path", facts) is False


def test_runtime_errors_are_rule_errors():
    with pytest.raises(RuleEvalError, match="division by zero"):
        evaluate("1 / x", {"x": 0})
    with pytest.raises(RuleEvalError, match="not provided"):
        evaluate("missing.fact > 1", {})
    with pytest.raises(RuleTypeError, match="needs numbers"):
        evaluate("x + 1", {"x": "a"})
    with pytest.raises(RuleTypeError, match="true or false"):
        evaluate("x and true", {"x": 3})
    with pytest.raises(RuleEvalError):
        evaluate("1" + "0" * 400 + " * 1.5", {})


def test_literals():
    assert parse_expression("null") == Literal(None)
    assert parse_expression(True) == Literal(True)
    assert evaluate("1KiB + 1MiB", {}) == 1024 + 1024**2
    assert isinstance(RuleSyntaxError("x"), RuleError)
