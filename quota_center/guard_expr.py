"""The condition language of the guard rules: a small, safe expression over named integers and booleans.

    condition  := comparisons joined by `and`, `or`, `not` (and parentheses)
    comparison := sum (== != < <= > >=) sum ...      chained as in Python: 0 < x <= 10
    sum        := integers with + - * // and unary -, integer literals (10_000), field names
    field      := name | before.name | after.name     the names are given by the caller

Integers only (money is in minor units): no floats, strings, True/False, calls, indexing, attributes
other than the before./after. prefixes, `/`, `%` or `**`. A condition is parsed with `ast`, every node
checked against that whitelist and typed (a condition is a boolean, arithmetic takes integers) once, at
load; it then runs as closures built here, never through eval(). `and`/`or` short-circuit as in Python,
so `min_spend > 0 and face_value // min_spend > 1` never divides by zero; a division by zero that does
happen makes the condition undecided (`Condition.holds` answers None), never an exception.
"""

from __future__ import annotations

import ast
import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

Type = Literal["int", "bool"]
Scope = Mapping[str, int]
"""A value for each field, by its full name ("budget", "before.budget"); booleans are Python bools."""
_Run = Callable[[Scope], int]

MAX_LENGTH = 1_000
MAX_DEPTH = 40
PREFIXES = ("before", "after")
_ARITHMETIC: dict[type[ast.operator], Callable[[int, int], int]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.FloorDiv: lambda a, b: a // b,
}
_COMPARE: dict[type[ast.cmpop], Callable[[int, int], bool]] = {
    ast.Eq: lambda a, b: a == b,
    ast.NotEq: lambda a, b: a != b,
    ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b,
    ast.Gt: lambda a, b: a > b,
    ast.GtE: lambda a, b: a >= b,
}
_ALLOWED = "only comparisons, and/or/not, + - * // on integers, integer literals and field names"
_WHAT = {"int": "a number", "bool": "a condition"}


class ExprError(ValueError):
    """A condition outside the language; the message quotes the offending part and says what to write."""


@dataclass(frozen=True)
class Condition:
    text: str
    fields: frozenset[str]
    """Every field it reads, by full name ("budget", "before.budget")."""
    run: _Run

    def holds(self, scope: Scope) -> bool | None:
        """Whether it is true for `scope` (which gives every field in `fields`); None when a division by
        zero leaves it undecided."""
        try:
            return bool(self.run(scope))
        except ZeroDivisionError:
            return None


def compile_condition(text: str, fields: Mapping[str, Type], prefixed: Mapping[str, Type]) -> Condition:
    """`fields` are the bare names, `prefixed` those also valid after `before.` / `after.`. ExprError when
    `text` is not a boolean condition of the language."""
    if len(text) > MAX_LENGTH:
        raise ExprError(f"longer than {MAX_LENGTH} characters; split it into several rules")
    if "#" in text:
        raise ExprError("a '#' inside a condition would silently cut it short; put comments on their own line")
    flat = " ".join(text.split())  # a condition may span lines in the TOML file
    try:
        tree = ast.parse(flat, mode="eval")
    except SyntaxError as error:
        raise ExprError(f"not a valid expression: {error.msg} at column {error.offset or 0} of `{flat}`") from None
    if _depth(tree) > MAX_DEPTH:
        raise ExprError(f"nested more than {MAX_DEPTH} levels deep; split it into several rules")
    compiler = _Compiler(flat, fields, prefixed)
    run, kind = compiler.compile(tree.body)
    if kind != "bool":
        raise ExprError(f"`{flat}` is a number, not a condition; compare it with something, e.g. `{flat} > 0`")
    return Condition(text, frozenset(compiler.used), run)


def _depth(tree: ast.AST) -> int:
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


class _Compiler:
    def __init__(self, text: str, fields: Mapping[str, Type], prefixed: Mapping[str, Type]) -> None:
        self.text, self.fields, self.prefixed = text, fields, prefixed
        self.used: set[str] = set()

    def fail(self, node: ast.AST, why: str) -> ExprError:
        return ExprError(f"`{ast.get_source_segment(self.text, node) or self.text}`: {why}")

    def expect(self, node: ast.expr, wanted: Type) -> _Run:
        run, kind = self.compile(node)
        if kind != wanted:
            raise self.fail(node, f"is {_WHAT[kind]}, but {_WHAT[wanted]} is needed here")
        return run

    def compile(self, node: ast.expr) -> tuple[_Run, Type]:
        match node:
            case ast.BoolOp(op=ast.And(), values=values):
                all_of = [self.expect(value, "bool") for value in values]
                return (lambda scope: all(run(scope) for run in all_of)), "bool"
            case ast.BoolOp(op=ast.Or(), values=values):
                any_of = [self.expect(value, "bool") for value in values]
                return (lambda scope: any(run(scope) for run in any_of)), "bool"
            case ast.UnaryOp(op=ast.Not(), operand=operand):
                condition = self.expect(operand, "bool")
                return (lambda scope: not condition(scope)), "bool"
            case ast.UnaryOp(op=ast.USub(), operand=operand):
                number = self.expect(operand, "int")
                return (lambda scope: -number(scope)), "int"
            case ast.BinOp(left=left, op=op, right=right) if type(op) in _ARITHMETIC:
                apply, first, second = _ARITHMETIC[type(op)], self.expect(left, "int"), self.expect(right, "int")
                return (lambda scope: apply(first(scope), second(scope))), "int"
            case ast.BinOp(op=ast.Div()):
                raise self.fail(node, "`/` makes fractions; use `//` (integer division), or better, multiply")
            case ast.Compare(left=left, ops=ops, comparators=comparators):
                return self.compare(node, [left, *comparators], ops), "bool"
            case ast.Constant(value=bool()):
                raise self.fail(node, "True/False are not allowed; write a comparison")
            case ast.Constant(value=int() as value):
                return (lambda scope: value), "int"
            case ast.Constant(value=float()):
                raise self.fail(node, "integers only (money is in minor units: ¥1.50 is 150)")
            case ast.Constant(value=str()):
                raise self.fail(node, "no strings; the kind is the booleans is_amount and is_count")
            case ast.Name(id=name):
                return self.field(node, name, self.fields, name)
            case ast.Attribute(value=ast.Name(id=prefix), attr=name) if prefix in PREFIXES:
                return self.field(node, name, self.prefixed, f"{prefix}.{name}")
            case ast.Attribute():
                raise self.fail(node, "no attributes; only before.<field> and after.<field>")
            case ast.Call():
                raise self.fail(node, f"no calls; {_ALLOWED}")
        raise self.fail(node, f"not allowed; {_ALLOWED}")

    def compare(self, node: ast.expr, operands: list[ast.expr], ops: list[ast.cmpop]) -> _Run:
        compiled = [self.compile(operand) for operand in operands]
        links = []
        for index, op in enumerate(ops):
            (_, left_kind), (right, right_kind) = compiled[index], compiled[index + 1]
            if type(op) not in _COMPARE:
                raise self.fail(node, f"no `in` or `is`; {_ALLOWED}")
            if left_kind != right_kind:
                raise self.fail(node, "compares a number with a condition")
            if left_kind == "bool" and not isinstance(op, ast.Eq | ast.NotEq):
                raise self.fail(node, "conditions compare only with == and !=")
            links.append((_COMPARE[type(op)], right))
        first = compiled[0][0]

        def run(scope: Scope) -> bool:
            # As Python's chains: each operand evaluated once, stop at the first false link.
            left = first(scope)
            for compare, operand in links:
                right = operand(scope)
                if not compare(left, right):
                    return False
                left = right
            return True

        return run

    def field(self, node: ast.expr, name: str, known: Mapping[str, Type], full: str) -> tuple[_Run, Type]:
        kind = known.get(name)
        if kind is None:
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f"did you mean {close[0]}?" if close else f"the fields are {', '.join(sorted(known))}"
            raise self.fail(node, f"unknown field; {hint}")
        self.used.add(full)
        return (lambda scope: scope[full]), kind
