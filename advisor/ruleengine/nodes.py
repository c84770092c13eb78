"""The syntax tree of a rule expression. ``pos`` (1-based column) is kept for messages but ignored by ``==``.

``str(node)`` writes the canonical text of a node (fully parenthesized where it matters); parsing that text
gives an equal tree, which the tests check and :mod:`advisor.ruleengine.loader` uses to spot duplicate conditions.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def _literal_text(value: object) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\t", "\\t") + "'"
    if isinstance(value, float):
        text = repr(value)
        if text in ("inf", "nan", "-inf"):
            return "(1e999 - 1e999)" if text == "nan" else ("1e999" if text == "inf" else "(-1e999)")
        return text if ("e" in text or "." in text) else text + ".0"
    return str(value)


@dataclass(frozen=True, slots=True)
class Node:
    pos: int = field(default=0, compare=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Literal(Node):
    value: object

    def __str__(self) -> str:
        if isinstance(self.value, (int, float)) and not isinstance(self.value, bool) and self.value < 0:
            return f"({_literal_text(self.value)})"
        return _literal_text(self.value)


@dataclass(frozen=True, slots=True)
class Fact(Node):
    name: str                     # dotted: 'hardware.nodes'

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class ListExpr(Node):
    items: tuple[Node, ...]

    def __str__(self) -> str:
        return "[" + ", ".join(str(i) for i in self.items) + "]"


@dataclass(frozen=True, slots=True)
class Unary(Node):
    op: str                       # '-' or '+'
    operand: Node

    def __str__(self) -> str:
        return f"({self.op}{self.operand})"


@dataclass(frozen=True, slots=True)
class Not(Node):
    operand: Node

    def __str__(self) -> str:
        return f"(not {self.operand})"


@dataclass(frozen=True, slots=True)
class Binary(Node):
    op: str                       # + - * / %
    left: Node
    right: Node

    def __str__(self) -> str:
        return f"({self.left} {self.op} {self.right})"


@dataclass(frozen=True, slots=True)
class Compare(Node):
    op: str                       # == != < <= > >= in 'not in'
    left: Node
    right: Node

    def __str__(self) -> str:
        return f"({self.left} {self.op} {self.right})"


@dataclass(frozen=True, slots=True)
class BoolOp(Node):
    op: str                       # 'and' | 'or'
    operands: tuple[Node, ...]

    def __str__(self) -> str:
        return "(" + f" {self.op} ".join(str(o) for o in self.operands) + ")"


@dataclass(frozen=True, slots=True)
class Call(Node):
    func: str
    args: tuple[Node, ...]

    def __str__(self) -> str:
        return f"{self.func}(" + ", ".join(str(a) for a in self.args) + ")"


def facts_used(node: Node) -> set[str]:
    """Every fact name the expression reads."""
    out: set[str] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, Fact):
            out.add(n.name)
        elif isinstance(n, (Unary, Not)):
            stack.append(n.operand)
        elif isinstance(n, (Binary, Compare)):
            stack.extend((n.left, n.right))
        elif isinstance(n, BoolOp):
            stack.extend(n.operands)
        elif isinstance(n, (ListExpr,)):
            stack.extend(n.items)
        elif isinstance(n, Call):
            stack.extend(n.args)
    return out
