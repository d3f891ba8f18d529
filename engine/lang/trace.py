"""A rule interpreter that remembers what ran: line coverage for `hookrules test --coverage` and
the statements and values behind a decision for `hookrules eval --explain`. Never used to serve:
recording costs time on every statement.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .guards import TooBig, bounded_text
from .boundary import compare
from .interp import RuleInterpreter

MAX_VALUE_CHARS = 80


@dataclass(frozen=True, slots=True)
class Step:
    """One thing --explain shows: a statement that ran, or what a condition saw."""

    file: str
    line: int
    kind: str  # "stmt" | "if" | "compare" | "and" | "or"
    text: str


def show(value: Any) -> str:
    """A value as --explain prints it: bounded (a list of big lists would be gigabytes of text), and
    read-only data shown as the dict it reads like."""
    if isinstance(value, MappingProxyType):
        value = dict(value)
    try:
        text = bounded_text(value, repr)
    except TooBig:
        return f"<a {type(value).__name__} too big to show>"
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


class TracingInterpreter(RuleInterpreter):
    def __init__(self) -> None:
        super().__init__()
        self.steps: list[Step] = []
        #: (file, line) of every statement that ran, across runs
        self.covered: set[tuple[str, int]] = set()
        self._file = ""

    def execute(self, tree: ast.Module, symtable: dict[str, Any], max_steps: int, deadline: float,
                body: Any = None) -> Any:
        self.steps = []
        return super().execute(tree, symtable, max_steps, deadline, None)  # every node walked, to be watched

    def run(self, node: Any, expr: Any = None, lineno: Any = None, with_raise: bool = True) -> Any:
        if isinstance(node, ast.stmt):
            self._file = getattr(node, "hr_file", "")
            self.covered.add((self._file, node.lineno))
            self.steps.append(Step(self._file, node.lineno, "stmt", ""))
        return super().run(node, expr, lineno, with_raise)

    def on_if(self, node: Any) -> None:
        test = node.test
        value = test.hr_run(test)
        self.steps.append(Step(self._file, node.lineno, "if", f"{ast.unparse(test)}  ->  {bool(value)}"))
        self._block(node.body if value else node.orelse)

    def on_boolop(self, node: Any) -> Any:
        """`a or b`: what each operand that ran gave (the rest were not evaluated)."""
        is_and = node.op.__class__ is ast.And
        seen = []
        value = None
        for child in node.values:
            value = child.hr_run(child)
            seen.append(f"{ast.unparse(child)}  ->  {show(value)}")
            if bool(value) is not is_and:
                break
        self.steps.append(Step(self._file, node.lineno, "and" if is_and else "or", ";  ".join(seen)))
        return value

    def on_compare(self, node: Any) -> Any:
        left_node = node.left
        left = left_node.hr_run(left_node)
        shown = [show(left)]
        result = True
        for op, right_node in zip(node.ops, node.comparators):
            right = right_node.hr_run(right_node)
            shown.append(_OP_TEXT.get(op.__class__, "?"))
            shown.append(show(right))
            if not compare(op.__class__, left, right):  # the interpreter's own, guard included
                result = False
                break
            left = right
        self.steps.append(Step(self._file, node.lineno, "compare",
                               f"{ast.unparse(node)}  ->  {' '.join(shown)}  ->  {result}"))
        return result


_OP_TEXT = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
            ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in"}


def statement_lines(tree: ast.Module) -> set[int]:
    """The lines a coverage report counts: where statements start."""
    return {node.lineno for node in ast.walk(tree) if isinstance(node, ast.stmt)}
