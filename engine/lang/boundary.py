"""The boundary between a rule and the C code it calls: the checks made before one C call compares,
hashes or inserts many items (walks, colliding keys, depth), and the tables that say which methods do
what. lang/interp applies them on every call, comparison and operator a rule makes; lang/trace on its
comparisons too.
"""

from __future__ import annotations

import ast
import itertools
import operator
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from .guards import check_spread, check_walk, keys_of
from .textmethods import TEXT_ARG_CHECKS
from .values import CONTAINERS, HASHED

#: the comparison operators, as asteval's table has them (this module stays free of asteval)
COMPARISONS: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
    ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not,
    ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}


def check_bulk(owner: Any, name: str, args: list[Any]) -> None:
    """Before a method hashes many keys in one C call: the keys it will put in the same table."""
    if owner is dict:  # dict.fromkeys(keys)
        if args:
            check_spread(keys_of(args[0], False))
        return
    pairs = owner.__class__ is dict or owner.__class__ is MappingProxyType
    check_spread(itertools.chain(keys_of(owner, False), *(keys_of(a, pairs) for a in args)))


def compare(op: type[ast.cmpop], left: Any, right: Any) -> Any:
    """One comparison of a chain, with the walk guard between two containers (guards.check_walk),
    and the collision guard between two hashed ones (== of two sets looks each item up in the other)."""
    rcls = right.__class__
    if rcls in CONTAINERS and (left.__class__ in CONTAINERS or op is ast.In or op is ast.NotIn):
        check_walk(left, right, op)  # `text in a_list` compares the text with every item
        if left.__class__ in HASHED and rcls in HASHED and op not in LOOKUPS:
            check_spread(itertools.chain(keys_of(left, False), keys_of(right, False)))
    return COMPARISONS[op](left, right)


LOOKUPS = frozenset({ast.Is, ast.IsNot, ast.In, ast.NotIn})

#: methods of a list, dict or set that put values into it, with the level their argument goes in at:
#: 1 for the value itself (append), 0 for its items (extend, update)
#: (tests/test_costs enumerates every method of list, dict and set and fails on one missing here)
INSERTS: dict[str, int] = {"append": 1, "insert": 1, "add": 1, "setdefault": 1, "extend": 0, "update": 0,
                            "symmetric_difference_update": 0}
#: methods of a dict, set or frozenset that hash the items of their arguments in one C call
BULK_HASHING = frozenset({"update", "fromkeys", "union", "intersection", "intersection_update", "difference",
                           "difference_update", "symmetric_difference", "symmetric_difference_update",
                           "issubset", "issuperset", "isdisjoint"})

#: methods of a list or tuple that compare their argument with every item
SCANS = frozenset({"count", "index", "remove"})


def container_method(func: Any, args: list[Any], kwargs: dict[str, Any]) -> tuple[Any, str, list[Any]] | None:
    """(the container, the method's name, the other arguments) when `func` is an unbound method of a
    container of the set (`list.append` taken from the type), else None; an unbound str or bytes
    method has its arguments checked. (A bound one, `d.update` or `dict.fromkeys`, is recognised
    inline in on_call.)"""
    objclass = getattr(func, "__objclass__", None)
    if objclass in CONTAINERS and args:
        return args[0], func.__name__, args[1:]
    if (objclass is str or objclass is bytes) and func.__name__ in TEXT_ARG_CHECKS:
        TEXT_ARG_CHECKS[func.__name__](func.__name__, args[1:], kwargs)
    return None
