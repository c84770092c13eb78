"""Static checking and evaluation of rule expressions; no ``eval``/``exec`` anywhere.

Values are numbers (int or float), strings, booleans, lists and ``null`` (Python ``None``).

* ``check(node, catalog)`` resolves every fact name against a catalog (name -> type spec such as
  ``"number"``, ``"string?"`` for nullable, ``"bool"``, ``"list"``, ``"any"``) and infers types, so that
  a misspelt fact (with a did-you-mean) or ``"a" < 3`` fails when the rule file is loaded.
* ``compile_expression(node)`` turns a tree into nested Python closures, evaluated against a flat dict
  ``{"hardware.nodes": 2, ...}``; every run-time failure is a :class:`RuleError`, never another exception.

Semantics worth knowing (documented for rule authors in ``rules/README.md``):

* ``and``/``or``/``not`` take booleans; ``null`` counts as false. ``==``/``!=`` never raise: values of
  different kinds are simply unequal (``true == 1`` is false). Ordering (``< <= > >=``) needs two numbers
  or two strings; with a ``null`` operand it is false. Arithmetic needs numbers; with ``null`` it gives
  ``null``. ``x in [..]`` tests membership with ``==``; ``s in "text"`` is a substring test.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping

from ..errors import did_you_mean
from .errors import RuleEvalError, RuleTypeError, UnknownFactError
from .nodes import Binary, BoolOp, Call, Compare, Fact, ListExpr, Literal, Node, Not, Unary

NUMBER, STRING, BOOL, LIST, NULL = "number", "string", "bool", "list", "null"
ANY = frozenset({NUMBER, STRING, BOOL, LIST, NULL})
Types = frozenset

FUNCTIONS = {"min": (1, None), "max": (1, None), "abs": (1, 1)}   # name -> (min args, max args)


def parse_type(spec: str) -> frozenset[str]:
    """A catalog type spec (``number``, ``string?``, ``bool``, ``list``, ``any``) as a set of kinds."""
    nullable = spec.endswith("?")
    base = spec.rstrip("?")
    if base == "any":
        return ANY
    if base not in (NUMBER, STRING, BOOL, LIST, NULL):
        raise ValueError(f"unknown fact type {spec!r}")
    return frozenset({base, NULL} if nullable else {base})


def kind_of(value: object) -> str:
    """The language kind of a Python value (``bool`` before ``number``: True is not 1 here)."""
    if value is None:
        return NULL
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, (int, float)):
        return NUMBER
    if isinstance(value, str):
        return STRING
    if isinstance(value, (list, tuple)):
        return LIST
    return "other"


def _names(types: frozenset[str]) -> str:
    order = [NUMBER, STRING, BOOL, LIST, NULL]
    return " or ".join(t for t in order if t in types)


# ----------------------------------------------------------------------------------------------- checking

def check(node: Node, catalog: Mapping[str, frozenset[str] | str]) -> frozenset[str]:
    """Infer the kinds ``node`` can evaluate to; raise UnknownFactError / RuleTypeError on misuse."""
    return _Checker(catalog).visit(node)


class _Checker:
    def __init__(self, catalog: Mapping[str, frozenset[str] | str]):
        self.catalog = {k: (parse_type(v) if isinstance(v, str) else v) for k, v in catalog.items()}

    def visit(self, node: Node) -> frozenset[str]:
        return getattr(self, "_" + type(node).__name__)(node)

    def _Literal(self, node: Literal) -> frozenset[str]:
        return frozenset({kind_of(node.value)})

    def _Fact(self, node: Fact) -> frozenset[str]:
        types = self.catalog.get(node.name)
        if types is not None:
            return types
        prefix = node.name + "."
        members = sorted(k for k in self.catalog if k.startswith(prefix))
        if members:
            shown = ", ".join(members[:4]) + (", ..." if len(members) > 4 else "")
            raise UnknownFactError(f"{node.name!r} at column {node.pos} is a group of facts; name one: {shown}",
                                   name=node.name, pos=node.pos)
        raise UnknownFactError(f"unknown fact {node.name!r} at column {node.pos}"
                               f"{did_you_mean(node.name, self.catalog)}", name=node.name, pos=node.pos)

    def _ListExpr(self, node: ListExpr) -> frozenset[str]:
        for item in node.items:
            self.visit(item)
        return frozenset({LIST})

    def _need(self, node: Node, types: frozenset[str], allowed: frozenset[str], what: str) -> None:
        if types == ANY:
            return
        if not (types - {NULL}) <= allowed or not (types & allowed):
            raise RuleTypeError(f"{what} at column {node.pos} needs {_names(allowed)}, got {_names(types)} "
                                f"(`{node}`)", pos=node.pos)

    def _Unary(self, node: Unary) -> frozenset[str]:
        t = self.visit(node.operand)
        self._need(node.operand, t, frozenset({NUMBER}), f"unary {node.op!r}")
        return frozenset({NUMBER} | (t & {NULL}))

    def _Not(self, node: Not) -> frozenset[str]:
        t = self.visit(node.operand)
        self._need(node.operand, t, frozenset({BOOL}), "'not'")
        return frozenset({BOOL})

    def _BoolOp(self, node: BoolOp) -> frozenset[str]:
        for operand in node.operands:
            self._need(operand, self.visit(operand), frozenset({BOOL}), f"{node.op!r}")
        return frozenset({BOOL})

    def _Binary(self, node: Binary) -> frozenset[str]:
        lt, rt = self.visit(node.left), self.visit(node.right)
        self._need(node.left, lt, frozenset({NUMBER}), f"{node.op!r}")
        self._need(node.right, rt, frozenset({NUMBER}), f"{node.op!r}")
        if isinstance(node.right, Literal) and node.op in ("/", "%") and node.right.value == 0:
            raise RuleTypeError(f"division by zero at column {node.pos} (`{node}`)", pos=node.pos)
        return frozenset({NUMBER} | ((lt | rt) & {NULL}))

    def _Compare(self, node: Compare) -> frozenset[str]:
        lt, rt = self.visit(node.left), self.visit(node.right)
        lv, rv = lt - {NULL}, rt - {NULL}
        if node.op in ("==", "!="):
            if lt != ANY and rt != ANY and lv and rv and not (lv & rv):
                raise RuleTypeError(f"{node.op!r} at column {node.pos} compares {_names(lv)} with {_names(rv)}: "
                                    f"never equal (`{node}`)", pos=node.pos)
        elif node.op in ("in", "not in"):
            if rt != ANY and not (rt & {LIST, STRING}):
                raise RuleTypeError(f"{node.op!r} at column {node.pos} needs a list or a string on its right, "
                                    f"got {_names(rt)} (`{node}`)", pos=node.pos)
            if rt != ANY and lt != ANY and rv <= {STRING} and lv and not lv <= {STRING}:
                raise RuleTypeError(f"{node.op!r} at column {node.pos}: only a string can be found in a string "
                                    f"(`{node}`)", pos=node.pos)
            if isinstance(node.right, ListExpr) and lt != ANY and lv:
                kinds = {k for item in node.right.items for k in self.visit(item)}
                if node.right.items and ANY - {NULL} > kinds and not (kinds & lv):
                    raise RuleTypeError(f"{node.op!r} at column {node.pos} looks for {_names(lv)} in a list of "
                                        f"{_names(frozenset(kinds))}: never found (`{node}`)", pos=node.pos)
        else:
            ok = lt == ANY or rt == ANY or (lv and rv and (lv | rv <= {NUMBER} or lv | rv <= {STRING}))
            if not ok:
                raise RuleTypeError(f"{node.op!r} at column {node.pos} orders two numbers or two strings, got "
                                    f"{_names(lt)} and {_names(rt)} (`{node}`)", pos=node.pos)
        return frozenset({BOOL})

    def _Call(self, node: Call) -> frozenset[str]:
        if node.func not in FUNCTIONS:
            raise UnknownFactError(f"unknown function {node.func!r} at column {node.pos}"
                                   f"{did_you_mean(node.func, FUNCTIONS)}; functions: {', '.join(FUNCTIONS)}",
                                   name=node.func, pos=node.pos)
        lo, hi = FUNCTIONS[node.func]
        if len(node.args) < lo or (hi is not None and len(node.args) > hi):
            want = f"{lo}" if lo == hi else f"at least {lo}"
            raise RuleTypeError(f"{node.func}() at column {node.pos} takes {want} argument(s), got {len(node.args)}",
                                pos=node.pos)
        nullable = False
        for arg in node.args:
            t = self.visit(arg)
            self._need(arg, t, frozenset({NUMBER}), f"{node.func}()")
            nullable = nullable or NULL in t
        return frozenset({NUMBER, NULL} if nullable else {NUMBER})


# ----------------------------------------------------------------------------------------------- evaluation

Facts = Mapping[str, object]
Compiled = Callable[[Facts], object]


def _type_error(node: Node, message: str) -> RuleTypeError:
    return RuleTypeError(f"{message} at column {node.pos} (`{node}`)", pos=node.pos)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def values_equal(a: object, b: object) -> bool:
    """Equality of the language: kinds must match (true != 1), lists compare element-wise."""
    ka, kb = kind_of(a), kind_of(b)
    if ka != kb:
        return False
    if ka == LIST:
        return len(a) == len(b) and all(values_equal(x, y) for x, y in zip(a, b))  # type: ignore[arg-type]
    return a == b


def _truth(node: Node, v: object) -> bool:
    if v is None:
        return False
    if isinstance(v, bool):
        return v
    raise _type_error(node, f"expected true or false, got {kind_of(v)} {v!r}")


_ARITH = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv, "%": operator.mod}
_ORDER = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def _compile(node: Node) -> Compiled:  # noqa: C901 - one branch per node kind
    if isinstance(node, Literal):
        value = node.value
        return lambda f: value
    if isinstance(node, Fact):
        name = node.name
        return lambda f: f[name]
    if isinstance(node, ListExpr):
        items = tuple(_compile(i) for i in node.items)
        return lambda f: [i(f) for i in items]
    if isinstance(node, Not):
        inner = _compile(node.operand)
        operand = node.operand
        return lambda f: not _truth(operand, inner(f))
    if isinstance(node, BoolOp):
        parts = tuple((o, _compile(o)) for o in node.operands)
        if node.op == "and":
            def _and(f: Facts) -> bool:
                for o, c in parts:
                    if not _truth(o, c(f)):
                        return False
                return True
            return _and

        def _or(f: Facts) -> bool:
            for o, c in parts:
                if _truth(o, c(f)):
                    return True
            return False
        return _or
    if isinstance(node, Unary):
        inner = _compile(node.operand)
        negate = node.op == "-"

        def _unary(f: Facts) -> object:
            v = inner(f)
            if v is None:
                return None
            if not _is_number(v):
                raise _type_error(node, f"unary {node.op!r} needs a number, got {kind_of(v)}")
            return -v if negate else v
        return _unary
    if isinstance(node, Binary):
        left, right, fn, op = _compile(node.left), _compile(node.right), _ARITH[node.op], node.op

        def _arith(f: Facts) -> object:
            a, b = left(f), right(f)
            if a is None or b is None:
                return None
            if not (_is_number(a) and _is_number(b)):
                raise _type_error(node, f"{op!r} needs numbers, got {kind_of(a)} and {kind_of(b)}")
            if op in ("/", "%") and b == 0:
                raise RuleEvalError(f"division by zero at column {node.pos} (`{node}`)", pos=node.pos)
            try:
                return fn(a, b)
            except (OverflowError, ValueError) as exc:
                raise RuleEvalError(f"arithmetic failed at column {node.pos}: {exc} (`{node}`)",
                                    pos=node.pos) from None
        return _arith
    if isinstance(node, Compare):
        left, right, op = _compile(node.left), _compile(node.right), node.op
        if op in ("==", "!="):
            want = op == "=="
            return lambda f: values_equal(left(f), right(f)) is want
        if op in ("in", "not in"):
            want = op == "in"

            def _in(f: Facts) -> bool:
                a, b = left(f), right(f)
                if b is None:
                    return not want
                if isinstance(b, (list, tuple)):
                    return any(values_equal(a, x) for x in b) is want
                if isinstance(b, str):
                    if not isinstance(a, str):
                        raise _type_error(node, f"only a string can be found in a string, got {kind_of(a)}")
                    return (a in b) is want
                raise _type_error(node, f"{op!r} needs a list or a string on its right, got {kind_of(b)}")
            return _in
        fn = _ORDER[op]

        def _order(f: Facts) -> bool:
            a, b = left(f), right(f)
            if a is None or b is None:
                return False
            if (_is_number(a) and _is_number(b)) or (isinstance(a, str) and isinstance(b, str)):
                return fn(a, b)
            raise _type_error(node, f"{op!r} orders two numbers or two strings, got {kind_of(a)} and {kind_of(b)}")
        return _order
    if isinstance(node, Call):
        args = tuple(_compile(a) for a in node.args)
        name = node.func
        if name not in FUNCTIONS:
            raise UnknownFactError(f"unknown function {name!r} at column {node.pos}", name=name, pos=node.pos)

        def _call(f: Facts) -> object:
            vals = [a(f) for a in args]
            if any(v is None for v in vals):
                return None
            if not all(_is_number(v) for v in vals):
                raise _type_error(node, f"{name}() needs numbers")
            if name == "abs":
                if len(vals) != 1:
                    raise _type_error(node, "abs() takes one argument")
                return abs(vals[0])
            if not vals:
                raise _type_error(node, f"{name}() needs at least one argument")
            return min(vals) if name == "min" else max(vals)
        return _call
    raise TypeError(f"not an expression node: {node!r}")


class CompiledExpression:
    """A checked expression ready to run: ``expr(facts) -> value``; errors are RuleError only."""

    __slots__ = ("node", "_fn")

    def __init__(self, node: Node):
        self.node = node
        self._fn = _compile(node)

    def __call__(self, facts: Facts) -> object:
        try:
            return self._fn(facts)
        except KeyError as exc:
            raise RuleEvalError(f"fact {exc.args[0]!r} was not provided") from None
        except RecursionError:
            raise RuleEvalError("expression too deeply nested to evaluate") from None
        except (OverflowError, ValueError, TypeError) as exc:  # defensive: the closures raise RuleError
            raise RuleEvalError(f"evaluation failed: {exc}") from None

    def test(self, facts: Facts) -> bool:
        """Evaluate as a condition: true fires, false and null do not; any other value is an error."""
        v = self(facts)
        if v is None:
            return False
        if isinstance(v, bool):
            return v
        raise RuleTypeError(f"the condition gives {kind_of(v)} {v!r}, not true or false (`{self.node}`)")

    def __repr__(self) -> str:
        return f"CompiledExpression({str(self.node)!r})"


def compile_expression(node: Node) -> CompiledExpression:
    """Compile a syntax tree (check it first with :func:`check` for load-time errors)."""
    return CompiledExpression(node)


def evaluate(text_or_node: str | Node, facts: Facts) -> object:
    """Parse (if text) and evaluate once; a convenience for tests and one-off use."""
    from .parser import parse_expression

    node = parse_expression(text_or_node) if isinstance(text_or_node, str) else text_or_node
    return CompiledExpression(node)(facts)


__all__ = ["check", "compile_expression", "evaluate", "values_equal", "parse_type", "kind_of",
           "CompiledExpression", "FUNCTIONS", "ANY"]
