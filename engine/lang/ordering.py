"""sorted, min, max and list.sort: the builtins that compare many items in one C call, and the only
ones that call a function back from C (their key=).

Both are taken out of C's hands here. The key function is called by the interpreter, item by item,
through the same checks as a call written in the rule (a builtin or method as key, `key=dict` or
`key=sorted`, meets on_call's guards, and each call is a step under the deadline); the keys are
then measured as == measures its operands (guards.walk_size: every item, text and big integer by
its size) before C compares them, a sort's items about log2(n) times each.
"""

from __future__ import annotations

from collections.abc import Callable
from types import BuiltinMethodType, MethodDescriptorType
from typing import Any

from .guards import MAX_WALK, TooBig, walk_size

#: the builtin functions handled here (list.sort is recognised by its owner and name)
ORDERING: frozenset[Any] = frozenset({sorted, min, max})


def is_ordering(func: Any) -> bool:
    """Whether a call of `func` compares many items in C, or would call a key= function from C."""
    if func in ORDERING:
        return True
    fcls = func.__class__
    if fcls is BuiltinMethodType:
        return func.__name__ == "sort" and func.__self__.__class__ is list
    return fcls is MethodDescriptorType and func.__name__ == "sort" and getattr(func, "__objclass__", None) is list


def check_order(items: list[Any], sorting: bool) -> None:
    """What comparing these items costs, refused past MAX_WALK before C starts: the walk inside the
    items (lists, text, big integers, by size), once for min/max, log2(n) times for a sort."""
    n = len(items)
    factor = max(1, n.bit_length()) if sorting else 1
    inner = walk_size(items, n + MAX_WALK // factor + 1) - n
    if inner * factor > MAX_WALK:
        raise TooBig(f"{'sorting' if sorting else 'comparing'} these values would walk over {MAX_WALK} items "
                     "(long texts, big numbers and lists inside count by their size, each time they appear)")


def ordered(func: Any, args: list[Any], kwargs: dict[str, Any], call: Callable[[Any, Any], Any]) -> Any:
    """sorted/min/max/list.sort(args, **kwargs), with `call(key, item)` computing each key."""
    sorting = func is sorted or func.__name__ == "sort"
    target: list[Any] | None = None
    if func is sorted:
        if len(args) != 1:
            return sorted(*args, **kwargs)  # Python's own error
        items = list(args[0])
    elif sorting:
        if func.__class__ is BuiltinMethodType:
            target, rest = func.__self__, args  # type: ignore[assignment]
        elif args and args[0].__class__ is list:
            target, rest = args[0], args[1:]
        else:
            return func(*args, **kwargs)  # Python's own error
        if rest:
            return target.sort(*rest)  # type: ignore[union-attr]
        items = list(target)  # type: ignore[arg-type]
    else:
        if not args:
            return func(**kwargs)  # Python's own error
        items = list(args[0]) if len(args) == 1 else list(args)
    key = kwargs.get("key")
    extra = {k: v for k, v in kwargs.items() if k != "key"}
    if key is None:
        check_order(items, sorting)
        if target is not None:
            target.sort(**extra)
            return None
        return func(items, **extra) if len(args) <= 1 else func(*args, **extra)
    if not items:
        return func(items, **extra)  # an empty sequence: the default, or Python's error
    keys = [call(key, item) for item in items]
    check_order(keys, sorting)
    if not sorting:
        if len(args) > 1 and extra:
            return func(*args, **extra)  # Python's own error (default= with several arguments)
        return items[func(range(len(items)), key=keys.__getitem__, **extra)]
    order = sorted(range(len(items)), key=keys.__getitem__, **extra)
    result = [items[i] for i in order]
    if target is None:
        return result
    if len(target) != len(items) or any(a is not b for a, b in zip(target, items)):
        raise ValueError("list modified during sort")
    target[:] = result
    return None
