"""A rule's own functions (`def`), what a loop goes over, and the two ways a run stops early.

RuleFunction keeps Python's lexical scoping (asteval's Procedure is dynamic) and holds only underscore
attributes, which rules cannot read. A for loop over a list fails as Starlark does if the list changes
size meanwhile (ListChanged). RuleAbort ends a run past its step budget or deadline.
"""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING, Any

from .values import add_function_class

if TYPE_CHECKING:
    from .interp import RuleInterpreter

class ListChanged(RuntimeError):
    """A list changed while a loop went over it."""


class CallsTooDeep(RecursionError):
    """Functions called inside one another past the language's bound (interp.MAX_CALL_DEPTH and
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
    """The run went over its step budget or deadline. BaseException, so no handler swallows it."""

    def __init__(self, message: str, node: ast.AST | None):
        super().__init__(message)
        self.node = node
