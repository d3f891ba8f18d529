"""Argument checks shared by the helpers: each names the helper and the argument it refuses, so a
rule author reads `bcrypt_check: password must be str or bytes, not int`."""

from __future__ import annotations

from collections.abc import Mapping

from .guards import MAX_TEXT, TooBig



def text_arg(helper: str, arg: str, value: object) -> bytes:
    """A str (as UTF-8) or bytes argument, as bytes."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes):
        return value
    raise TypeError(f"{helper}: {arg} must be str or bytes, not {type(value).__name__}")


def str_arg(helper: str, arg: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{helper}: {arg} must be a string, not {type(value).__name__}")
    return value


def choice_arg(helper: str, arg: str, value: object, choices: Mapping[str, str] | tuple[str, ...]) -> str:
    name = str_arg(helper, arg, value)
    if name not in choices:
        raise ValueError(f"{helper}: {arg}={name!r} is not one of {', '.join(repr(c) for c in choices)}")
    return name


def whole_arg(helper: str, arg: str, value: object, low: int, high: int) -> int:
    if type(value) is not int:  # bool is not a count
        raise TypeError(f"{helper}: {arg} must be a whole number, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{helper}: {arg}={value} is outside {low}..{high}")
    return value


def check_fits(helper: str, length: int) -> None:
    if length > MAX_TEXT:
        raise TooBig(f"{helper}: a result of {length} characters is over the limit of {MAX_TEXT}")
