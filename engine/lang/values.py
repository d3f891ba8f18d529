"""The closed set of values a rule can hold, as in Starlark, and the conversion at its boundary.

A rule holds only: None, bool, int, float, str, bytes; list, dict, set (which it builds and may
change); their read-only forms tuple, MappingProxyType ("read-only dict"), frozenset, range and the
lazy read-only JSON views of a webhook body; read-only records the host hands in (client, message,
topic filters, `data`); and functions (its own `def`s, the helpers and builtins, methods of values).

Everything a builtin, helper or method returns, and every attribute a rule reads, passes `admit`:
dict views and iterators become lists (Starlark's dict.items() is a list too; a view shares the
dict it came from, an iterator can be nested in C without bound), anything else is refused. One
set lookup decides the common case.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, ItemsView, KeysView, ValuesView
from types import (
    BuiltinFunctionType,
    FunctionType,
    MappingProxyType,
    MethodDescriptorType,
    MethodType,
)
from typing import Any

from ..datafiles import DataNamespace
from ..events import Client, Conn, JSONArray, JSONObject, Message, SubOpts, TopicFilter

SCALARS: frozenset[type] = frozenset({type(None), bool, int, float, str, bytes})
#: containers a rule builds and may change
MUTABLE: frozenset[type] = frozenset({list, dict, set})
#: the read-only forms: what freezing makes, and what the host hands in
READ_ONLY: frozenset[type] = frozenset({tuple, frozenset, MappingProxyType, range, JSONObject, JSONArray})
#: read-only records of the host: fields read by name, nothing to change
RECORDS: frozenset[type] = frozenset({Client, Conn, Message, SubOpts, TopicFilter, DataNamespace})
#: callables; `type` covers the constructors rules are given (bool dict float int list tuple)


class BoundMethod:
    """A guarded method (guards.GUARDED_METHODS) bound to the str or bytes it was read from.

    Not functools.partial: a partial's public `.func`, `.args` and `.keywords` hand a rule the bound
    value and a mutable dict that lives as long as the partial (a library's `R = "x".replace` then
    carried one client's data to the next). A function value has no public attribute at all."""

    __slots__ = ("_func", "_self")

    def __init__(self, func: Callable[..., Any], obj: Any):
        self._func = func
        self._self = obj

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._func(self._self, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<method {self._func.__name__} of {type(self._self).__name__}>"


FUNCTIONS: frozenset[type] = frozenset({FunctionType, BuiltinFunctionType, MethodType, MethodDescriptorType,
                                        BoundMethod, type})
#: the types a rule may be handed as constructors, the only `type` objects in the set
CONSTRUCTORS: frozenset[type] = frozenset({bool, dict, float, int, list, tuple})

#: the rule's own functions; lang/interp adds RuleFunction (it is defined there)
_HELD: set[type] = set(SCALARS | MUTABLE | READ_ONLY | RECORDS | FUNCTIONS)
HELD: frozenset[type] = frozenset(_HELD)

#: mappings a rule can read: dict, read-only dict, JSON object
MAPPINGS: frozenset[type] = frozenset({dict, MappingProxyType, JSONObject})
#: ordered collections
SEQUENCES: frozenset[type] = frozenset({list, tuple, range, JSONArray})
SETS: frozenset[type] = frozenset({set, frozenset})
#: every container of the set: what the size, walk, text and nesting guards measure
CONTAINERS: frozenset[type] = MAPPINGS | SEQUENCES | SETS
#: containers that hash what goes in: bulk inserts are checked for colliding keys
HASHED: frozenset[type] = frozenset({dict, MappingProxyType, set, frozenset})


def add_function_class(cls: type) -> None:
    """Let lang/interp put its RuleFunction into the set (it imports this module, not the reverse)."""
    global HELD
    _HELD.add(cls)
    HELD = frozenset(_HELD)


class NotAValue(TypeError):
    """A call or attribute gave something outside the closed set, which has no conversion."""


def _listed(values: Iterable[Any], what: str) -> list[Any]:
    """At most MAX_ITEMS items of an iterator or view, as a list."""
    from .guards import MAX_ITEMS, TooBig  # guards measures with this module's classes

    out = list(itertools.islice(values, MAX_ITEMS + 1))
    if len(out) > MAX_ITEMS:
        raise TooBig(f"{what} of more than {MAX_ITEMS} items is over the limit")
    return out


def _iterator_classes() -> set[type]:
    """The iterator and view classes builtins and methods can hand back (Python has no one base class)."""
    samples: list[Any] = [iter([]), iter(()), iter(""), iter(b""), iter(range(0)), iter(range(1 << 70)),
                          iter({}), iter({}.values()), iter({}.items()), iter(set()), iter(frozenset()),
                          reversed([]), reversed(()), reversed(range(0)), reversed({}), reversed({}.values()),
                          reversed({}.items()), enumerate([]), zip(), map(len, []), filter(None, []),
                          (_ for _ in ()), iter(bytearray()), iter(MappingProxyType({}))]
    return {type(s) for s in samples}


_VIEWS: dict[type, Callable[[Any], list[Any]]] = {
    type({}.keys()): lambda v: _listed(v, "dict.keys()"),
    type({}.values()): lambda v: _listed(v, "dict.values()"),
    type({}.items()): lambda v: _listed(v, "dict.items()"),
    KeysView: lambda v: _listed(v, "keys()"),
    ValuesView: lambda v: _listed(v, "values()"),
    ItemsView: lambda v: _listed(v, "items()"),
}
#: what the boundary converts instead of refusing: views and iterators become lists
CONVERSIONS: dict[type, Callable[[Any], Any]] = {
    **{cls: (lambda v: _listed(v, "an iterator")) for cls in _iterator_classes()},
    **_VIEWS,
}


def admit(value: Any) -> Any:
    """`value` as a rule may hold it: itself when in the set, a list for a view or an iterator, or
    NotAValue. Only the value itself is looked at: what a builtin or method builds holds parts of its
    inputs, which were in the set already, and the views it may build (items()) are converted here."""
    cls = value.__class__
    if cls in HELD:
        if cls is type and value not in CONSTRUCTORS:
            raise NotAValue(f"the type '{value.__name__}' is not a value rules can hold")
        return value
    convert = CONVERSIONS.get(cls)
    if convert is not None:
        return convert(value)
    raise NotAValue(f"a '{cls.__name__}' is not a value rules can hold (rules hold None, bool, int, float, str, "
                    "bytes, list, tuple, dict, set, read-only forms of these, event records and functions)")


def is_held(value: Any) -> bool:
    return value.__class__ in HELD and (value.__class__ is not type or value in CONSTRUCTORS)
