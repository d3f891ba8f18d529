"""What the methods of str and bytes may cost: the ones that are not linear in their input, or whose
arguments choose an algorithm, have those arguments checked before the call (lang/interp on_call
looks the method's name up in TEXT_ARG_CHECKS: one dict lookup for the common call); every other
public method was measured linear at the sizes rules may hold (LINEAR_TEXT_METHODS), and
tests/test_values checks the lists cover every method Python has.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .guards import GUARDED_METHODS, MAX_WALK, TooBig, bounded_text

#: strip(chars) tests every stripped character against every one of `chars`: O(n * m) for text
#: beyond Latin-1 ('ā' * 262144 stripped of 262,144 chars took 22 s; of 256 chars, 27 ms)
MAX_STRIP_CHARS = 256
#: codecs whose cost is linear (punycode is quadratic: 6,000 distinct characters took 3 s; idna,
#: utf-7 and the CJK codecs select other algorithms). Names as codecs normalizes them.
ENCODINGS = frozenset({"utf_8", "utf8", "u8", "utf", "utf_8_sig", "utf_16", "utf16", "u16", "utf_16_le", "utf_16le",
                       "utf_16_be", "utf_16be", "utf_32", "utf32", "u32", "utf_32_le", "utf_32le", "utf_32_be",
                       "utf_32be", "ascii", "us_ascii", "646", "latin_1", "latin1", "latin", "l1", "iso_8859_1",
                       "iso8859_1", "8859", "cp819"})
#: error handlers of the codecs above, all linear
ERROR_HANDLERS = frozenset({"strict", "ignore", "replace", "backslashreplace", "surrogateescape", "surrogatepass",
                            "xmlcharrefreplace", "namereplace"})


def _codec(encoding: Any, errors: Any, what: str) -> None:
    name = encoding.lower().replace("-", "_").replace(" ", "_") if isinstance(encoding, str) else None
    if name is not None and name not in ENCODINGS:
        raise ValueError(f"{what}: the codec {encoding[:40]!r} is not allowed in rules (utf-8, utf-16, utf-32 with "
                         "-le/-be, ascii and latin-1 are)")
    if isinstance(errors, str) and errors not in ERROR_HANDLERS:
        raise ValueError(f"{what}: the error handler {errors[:40]!r} is not allowed in rules (one of "
                         f"{', '.join(sorted(ERROR_HANDLERS))})")


def _chars(chars: Any, what: str) -> None:
    if chars is not None and isinstance(chars, (str, bytes)) and len(chars) > MAX_STRIP_CHARS:
        raise TooBig(f"{what}: a set of more than {MAX_STRIP_CHARS} characters to strip is not allowed")


def _prefixes(prefix: Any, what: str) -> None:
    """A tuple of prefixes is compared one by one, with no shortcut for the same string again: 100,000
    references to one long string is billions of bytes compared in one call. Charged as a walk is
    (a machine word, 64 characters, a step)."""
    if prefix.__class__ is tuple and sum(len(p) // 64 + 1 for p in prefix if isinstance(p, (str, bytes))) > MAX_WALK:
        raise TooBig(f"{what}: comparing with these would walk over {MAX_WALK} items")


def _check_strip(name: str, args: list[Any], kwargs: dict[str, Any]) -> None:
    _chars(args[0] if args else kwargs.get("chars"), name)


def _check_codec(name: str, args: list[Any], kwargs: dict[str, Any]) -> None:
    _codec(args[0] if args else kwargs.get("encoding", "utf-8"),
           args[1] if len(args) > 1 else kwargs.get("errors", "strict"), name)


def _check_prefixes(name: str, args: list[Any], kwargs: dict[str, Any]) -> None:
    if args:
        _prefixes(args[0], name)


#: Methods of str and bytes whose arguments are checked before the call (lang/interp on_call, by the
#: method's name; the method itself runs unchanged, so the common call costs one dict lookup).
TEXT_ARG_CHECKS: dict[str, Callable[[str, list[Any], dict[str, Any]], None]] = {
    "strip": _check_strip, "lstrip": _check_strip, "rstrip": _check_strip, "encode": _check_codec,
    "decode": _check_codec, "startswith": _check_prefixes, "endswith": _check_prefixes,
}


#: the other public methods of str and bytes rules may call: measured linear in their input
LINEAR_TEXT_METHODS = frozenset({
    "capitalize", "casefold", "count", "endswith", "find", "fromhex", "hex", "index", "isalnum", "isalpha",
    "isascii", "isdecimal", "isdigit", "isidentifier", "islower", "isnumeric", "isprintable", "isspace", "istitle",
    "isupper", "lower", "partition", "removeprefix", "removesuffix", "rfind", "rindex", "rpartition", "rsplit",
    "split", "splitlines", "swapcase", "title", "upper",
}) - frozenset(GUARDED_METHODS) - frozenset(TEXT_ARG_CHECKS)


def safe_str(*args: Any) -> str:
    """str() of a rule: a value's text measured before it is made (guards.bounded_text); str(b, codec)
    with the linear codecs only, as b.decode."""
    if len(args) == 1:
        return bounded_text(args[0], str)
    if len(args) > 1:  # str(bytes, encoding, errors): the linear codecs only, as bytes.decode
        _codec(args[1], args[2] if len(args) > 2 else "strict", "str")
    return str(*args)
