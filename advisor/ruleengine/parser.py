"""Recursive-descent parser of rule expressions: text -> :mod:`advisor.ruleengine.nodes` tree.

Grammar, lowest precedence first (all binary operators are left-associative)::

    expr     := or
    or       := and ('or' and)*
    and      := not ('and' not)*
    not      := 'not' not | compare
    compare  := sum [ ('==' | '!=' | '<' | '<=' | '>' | '>=' | 'in' | 'not' 'in') sum ]
    sum      := product (('+' | '-') product)*
    product  := unary (('*' | '/' | '%') unary)*
    unary    := ('-' | '+') unary | primary
    primary  := NUMBER | STRING | 'true' | 'false' | 'null'
              | NAME ('.' NAME)*                     a fact, e.g. hardware.nodes
              | NAME '(' [expr (',' expr)*] ')'      a function: min, max, abs
              | '[' [expr (',' expr)* [',']] ']'     a list
              | '(' expr ')'

Comparisons do not chain (``1 < x < 3`` is an error: write ``1 < x and x < 3``). Nesting is limited to
:data:`MAX_DEPTH` levels so that no input can exhaust Python's stack.
"""

from __future__ import annotations

from .errors import RuleSyntaxError
from .lexer import Token, tokenize
from .nodes import BoolOp, Call, Compare, Fact, Literal, ListExpr, Node, Not, Binary, Unary

MAX_DEPTH = 60
_COMPARE = frozenset({"==", "!=", "<", "<=", ">", ">="})


def _describe(tok: Token) -> str:
    return "end of expression" if tok.kind == "EOF" else repr(tok.text)


class _Parser:
    def __init__(self, text: str):
        self.tokens = tokenize(text)
        self.i = 0
        self.depth = 0

    # -- helpers
    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def _advance(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def _is(self, kind: str, value: object = None) -> bool:
        t = self.tok
        return t.kind == kind and (value is None or t.value == value)

    def _error(self, expected: str, tok: Token | None = None) -> RuleSyntaxError:
        tok = tok or self.tok
        return RuleSyntaxError(f"unexpected {_describe(tok)} at column {tok.pos} (expected {expected})",
                               token=tok.text or "<end>", pos=tok.pos)

    def _expect(self, kind: str, value: str, expected: str) -> Token:
        if not self._is(kind, value):
            raise self._error(expected)
        return self._advance()

    def _enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise RuleSyntaxError(f"expression nested deeper than {MAX_DEPTH} levels at column {self.tok.pos}",
                                  token=self.tok.text, pos=self.tok.pos)

    # -- grammar
    def parse(self) -> Node:
        node = self.expr()
        if not self._is("EOF"):
            raise self._error("an operator or the end of the expression")
        return node

    def expr(self) -> Node:
        self._enter()
        try:
            return self.or_()
        finally:
            self.depth -= 1

    def or_(self) -> Node:
        first = self.and_()
        operands = [first]
        while self._is("KEYWORD", "or"):
            self._advance()
            operands.append(self.and_())
        return first if len(operands) == 1 else BoolOp("or", tuple(operands), pos=first.pos)

    def and_(self) -> Node:
        first = self.not_()
        operands = [first]
        while self._is("KEYWORD", "and"):
            self._advance()
            operands.append(self.not_())
        return first if len(operands) == 1 else BoolOp("and", tuple(operands), pos=first.pos)

    def not_(self) -> Node:
        if self._is("KEYWORD", "not"):
            tok = self._advance()
            self._enter()
            try:
                return Not(self.not_(), pos=tok.pos)
            finally:
                self.depth -= 1
        return self.compare()

    def _compare_op(self) -> str | None:
        t = self.tok
        if t.kind == "OP" and t.value in _COMPARE:
            return str(t.value)
        if t.kind == "KEYWORD" and t.value == "in":
            return "in"
        if t.kind == "KEYWORD" and t.value == "not" and self.tokens[self.i + 1].kind == "KEYWORD" \
                and self.tokens[self.i + 1].value == "in":
            return "not in"
        return None

    def compare(self) -> Node:
        left = self.sum_()
        op = self._compare_op()
        if op is None:
            return left
        op_tok = self._advance()
        if op == "not in":
            self._advance()
        right = self.sum_()
        if self._compare_op() is not None:
            t = self.tok
            raise RuleSyntaxError(f"unexpected {_describe(t)} at column {t.pos}: comparisons do not chain, "
                                  f"join them with 'and'", token=t.text, pos=t.pos)
        return Compare(op, left, right, pos=op_tok.pos)

    def sum_(self) -> Node:
        node = self.product()
        while self.tok.kind == "OP" and self.tok.value in ("+", "-"):
            tok = self._advance()
            node = Binary(str(tok.value), node, self.product(), pos=tok.pos)
        return node

    def product(self) -> Node:
        node = self.unary()
        while self.tok.kind == "OP" and self.tok.value in ("*", "/", "%"):
            tok = self._advance()
            node = Binary(str(tok.value), node, self.unary(), pos=tok.pos)
        return node

    def unary(self) -> Node:
        if self.tok.kind == "OP" and self.tok.value in ("-", "+"):
            tok = self._advance()
            self._enter()
            try:
                operand = self.unary()
            finally:
                self.depth -= 1
            if isinstance(operand, Literal) and isinstance(operand.value, (int, float)) \
                    and not isinstance(operand.value, bool):
                return Literal(-operand.value if tok.value == "-" else operand.value, pos=tok.pos)
            return Unary(str(tok.value), operand, pos=tok.pos)
        return self.primary()

    def primary(self) -> Node:
        tok = self.tok
        if tok.kind in ("NUMBER", "STRING"):
            self._advance()
            return Literal(tok.value, pos=tok.pos)
        if tok.kind == "KEYWORD" and tok.value in ("true", "false", "null"):
            self._advance()
            return Literal({"true": True, "false": False, "null": None}[str(tok.value)], pos=tok.pos)
        if tok.kind == "NAME":
            return self._name()
        if tok.kind == "OP" and tok.value == "(":
            self._advance()
            node = self.expr()
            self._expect("OP", ")", "')'")
            return node
        if tok.kind == "OP" and tok.value == "[":
            self._advance()
            items = self._items("]")
            return ListExpr(tuple(items), pos=tok.pos)
        raise self._error("a value: a number, a string, true, false, null, a fact name, '(' or '['")

    def _items(self, close: str) -> list[Node]:
        items: list[Node] = []
        while not self._is("OP", close):
            items.append(self.expr())
            if self._is("OP", ","):
                self._advance()
            elif not self._is("OP", close):
                raise self._error(f"',' or '{close}'")
        self._advance()
        return items

    def _name(self) -> Node:
        first = self._advance()
        if first.value in ("True", "False", "None"):
            lower = {"True": "true", "False": "false", "None": "null"}[str(first.value)]
            raise RuleSyntaxError(f"unexpected {first.text!r} at column {first.pos}: write {lower!r}",
                                  token=first.text, pos=first.pos)
        parts = [str(first.value)]
        while self._is("OP", "."):
            self._advance()
            if not self._is("NAME"):
                raise self._error("a name after '.'")
            parts.append(str(self._advance().value))
        if self._is("OP", "("):
            if len(parts) > 1:
                raise self._error("an operator (only plain names such as min, max, abs can be called)")
            self._advance()
            args = self._items(")")
            return Call(parts[0], tuple(args), pos=first.pos)
        return Fact(".".join(parts), pos=first.pos)


MAX_TREE_DEPTH = 200


def tree_depth(node: Node) -> int:
    """Height of the tree, computed without recursion."""
    best = 0
    stack: list[tuple[Node, int]] = [(node, 1)]
    while stack:
        n, d = stack.pop()
        best = max(best, d)
        for attr in ("operand", "left", "right"):
            child = getattr(n, attr, None)
            if isinstance(child, Node):
                stack.append((child, d + 1))
        for attr in ("operands", "items", "args"):
            for child in getattr(n, attr, ()):
                stack.append((child, d + 1))
    return best


def parse_expression(text: str) -> Node:
    """Parse ``text`` into a syntax tree; raises :class:`RuleSyntaxError` (with token and column) only.

    Trees are at most :data:`MAX_TREE_DEPTH` high (long operator chains count), so that printing,
    checking and evaluating them never recurse past Python's limit.
    """
    if isinstance(text, bool):
        return Literal(text)
    node = _Parser(text).parse()
    if tree_depth(node) > MAX_TREE_DEPTH:
        raise RuleSyntaxError(f"expression too deeply nested (more than {MAX_TREE_DEPTH} levels of operators)",
                              token=None, pos=1)
    return node
