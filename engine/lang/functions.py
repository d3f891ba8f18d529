"""A rule's own functions (`def`), how deep they may call each other, what a loop goes over, and the
two ways a run stops early.

RuleFunction keeps Python's lexical scoping (asteval's Procedure is dynamic) and holds only underscore
attributes, which rules cannot read. Calls nest at most MAX_CALL_DEPTH deep and within FRAME_BUDGET
(CallsTooDeep). A for loop over a list fails as Starlark does if the list changes size meanwhile
(ListChanged). RuleAbort ends a run past its step budget or deadline.
"""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING, Any

from .values import add_function_class

if TYPE_CHECKING:
    from .interp import RuleInterpreter

class ListChanged(RuntimeError):
    """A list changed while a loop went over it."""


#: how deep a rule's functions may call each other (recursion is refused): a bound of the language, so a
#: chain fails alike whichever way it runs (a compiled def takes fewer Python frames a call than the walk)
#: and short of Python's own stack limit
MAX_CALL_DEPTH = 50
#: ...and the Python frames the walk would take for the calls in progress, each charged its body's
#: nesting (frames_of): deeply nested bodies allow fewer calls. 600 of Python's 1,000 leave room for the
#: server's own frames and a top level nested as deep as the checker allows (measured on the walk: a call
#: `return f(x)` takes 6 frames, each statement level around it 3 more, each expression level 1 more)
FRAME_BUDGET = 600


def frames_of(node: ast.FunctionDef) -> int:
    """What a call of this def is charged against FRAME_BUDGET: the walk's frames for its body's deepest
    nesting, 3 a statement or comprehension level and 1 an expression level, plus 1 (so `return f(x)`,
    3 + 1 + 1, is charged the 6 frames it takes); the defs inside it apart (each is charged when called)."""
    deepest = 0
    stack: list[tuple[ast.AST, int]] = [(child, 0) for child in node.body]
    while stack:
        child, depth = stack.pop()
        if isinstance(child, (ast.stmt, ast.comprehension)):
            depth += 3
        elif isinstance(child, ast.expr):
            depth += 1
        deepest = max(deepest, depth)
        stack.extend((c, depth) for c in ast.iter_child_nodes(child) if c.__class__ is not ast.FunctionDef)
    return 1 + deepest


class CallsTooDeep(RecursionError):
    """Functions called inside one another past the language's bounds (MAX_CALL_DEPTH and
    FRAME_BUDGET): the same for a compiled run and the walk, and short of Python's own stack limit."""


def each(iterable: Any) -> Any:
    """What a for loop or comprehension goes over: a list as Starlark has it, refusing to change."""
    return _frozen_while_iterated(iterable) if iterable.__class__ is list else iterable


def _frozen_while_iterated(items: list[Any]) -> Any:
    """Go over a list, failing as Starlark does if it grows or shrinks meanwhile (Python would go on
    over what the loop appends, until the step budget ran out)."""
    size = len(items)
    for value in items:
        if len(items) != size:
            break
        yield value
    if len(items) != size:
        raise ListChanged(f"the list changed size during the loop over it ({size} items, now {len(items)})")


class RuleFunction:
    """A `def` of a rule: its tree, its defaults and the scope it was defined in (its closure).

    Underscore attributes only: rules cannot read them (checker and on_attribute refuse `_` names).
    """

    __slots__ = ("_node", "_params", "_defaults", "_env", "_interp", "__weakref__")

    def __init__(self, node: ast.FunctionDef, params: list[str], defaults: dict[str, Any], env: dict[str, Any],
                 interp: RuleInterpreter):
        self._node = node
        self._params = params
        self._defaults = defaults
        self._env = env
        self._interp = interp

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Called from Python code, e.g. sorted(items, key=f): the same checks as a call in the rule."""
        return self._interp._call_function(self, list(args), kwargs)

    @property
    def name(self) -> str:
        return self._node.name

    def __repr__(self) -> str:
        return f"<function {self._node.name}>"

    def bind(self, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The call's local scope: the closure, then the parameters."""
        params = self._params
        if len(args) > len(params):
            raise TypeError(f"{self.name}() takes {len(params)} arguments but {len(args)} were given")
        frame = self._env.copy()
        frame.update(zip(params, args))
        for key, value in kwargs.items():
            if key not in params:
                raise TypeError(f"{self.name}() got an unexpected keyword argument '{key}'")
            if key in params[: len(args)]:
                raise TypeError(f"{self.name}() got multiple values for argument '{key}'")
            frame[key] = value
        for name in params[len(args):]:
            if name not in kwargs:
                if name not in self._defaults:
                    raise TypeError(f"{self.name}() missing argument '{name}'")
                frame[name] = self._defaults[name]
        return frame


add_function_class(RuleFunction)


class RuleAbort(BaseException):
    """The run went over its step budget (`steps`) or its deadline. BaseException, so no handler
    swallows it."""

    def __init__(self, message: str, node: ast.AST | None, steps: bool = False):
        super().__init__(message)
        self.node = node
        self.steps = steps
