"""Freezing a library once it has run, as Starlark does: no run can change what the next one sees.

Every value a library leaves at top level is made read-only, deeply and inside the closed set of
values (lang/values): lists and dict views become tuples, dicts read-only dicts (their keys frozen
too: a key may be a tuple holding a function), sets frozensets, and the scopes the library's
functions closed over are frozen in place. What has no read-only form (a method that changes a
list, dict or set; anything outside the set) is refused, so the rule does not load.
"""

from __future__ import annotations

from collections.abc import ItemsView, KeysView, Mapping, ValuesView
from types import BuiltinMethodType, MappingProxyType
from typing import Any

from .functions import RuleFunction
from .nesting import pin
from .values import CONVERSIONS, is_held


class _MutableMethod(ValueError):
    """A library keeps a method of a list, dict or set (`put = store.setdefault`), or another value
    that has no read-only form: calling it would change what every later run, and every other
    client, sees."""


_MUTABLE = (list, dict, set, bytearray)
#: methods that only read: kept, bound to the frozen value instead
_READ_ONLY_METHODS = frozenset({"get", "keys", "values", "items", "count", "index", "isdisjoint", "issubset",
                                "issuperset", "union", "intersection", "difference", "symmetric_difference"})
#: views of a dict: a tuple of what they show (the view would keep the dict it shows alive and mutable)
_VIEWS: tuple[type, ...] = (KeysView, ValuesView, ItemsView, type({}.keys()), type({}.values()), type({}.items()))


def _freeze_scope(scope: dict[str, Any], done: set[int], memo: dict[int, tuple[Any, Any]]) -> None:
    """Freeze a scope's values in place, and the scopes its functions closed over: a function a
    library made by calling another (a closure) keeps that call's variables, which must not stay
    mutable either, wherever the function is kept (a constant, inside a list or dict, a dict key)."""
    if id(scope) in done:
        return
    done.add(id(scope))
    for key, value in scope.items():
        try:
            scope[key] = frozen = _freeze_value(value, done, memo)
        except _MutableMethod as exc:
            raise _MutableMethod(f"'{key}': {exc}") from None
        pin(frozen)  # measured once for every run (lang/nesting): nothing else outlives a run


def _freeze_value(value: Any, done: set[int], memo: dict[int, tuple[Any, Any]]) -> Any:
    """events.freeze, which also reaches the closures of the functions inside containers (and keys).
    A part shared by several containers is frozen once and stays shared (`memo`, by id): t = (t, t)
    twenty times over is 20 tuples, not a million copies."""
    known = memo.get(id(value))
    if known is not None:
        return known[1]
    frozen: Any
    if isinstance(value, RuleFunction):
        _freeze_scope(value._env, done, memo)
        frozen = value
    elif isinstance(value, BuiltinMethodType) and isinstance(getattr(value, "__self__", None), _MUTABLE):
        name = value.__name__
        owner = _freeze_value(value.__self__, done, memo)
        if name not in _READ_ONLY_METHODS or not hasattr(owner, name):
            raise _MutableMethod(f"a library value is the method {name}() of a {type(value.__self__).__name__}: "
                                 "runs could share state through it")
        frozen = getattr(owner, name)  # lookup = TABLE.get: the same method of the frozen table
    elif isinstance(value, Mapping):
        frozen = MappingProxyType({_freeze_value(k, done, memo): _freeze_value(v, done, memo)
                                   for k, v in value.items()})
    elif isinstance(value, (list, tuple)) or isinstance(value, _VIEWS) or value.__class__ in CONVERSIONS:
        frozen = tuple(_freeze_value(v, done, memo) for v in value)  # type: ignore[attr-defined]
    elif isinstance(value, (set, frozenset)):
        frozen = frozenset(_freeze_value(v, done, memo) for v in value)
    elif is_held(value):
        return value  # scalars, read-only records, ranges, functions
    else:
        raise _MutableMethod(f"a library value is a '{type(value).__name__}', which is not a value rules can hold")
    memo[id(value)] = (value, frozen)  # the original too: alive, its id cannot be reused meanwhile
    return frozen
