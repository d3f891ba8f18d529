"""JSON in and out of the webhook port: orjson's speed, json's meaning.

A webhook's body is decoded on every call and its reply encoded on most that are not one of the
constant answers. orjson does each in about a quarter of json's time (measured: 0.6 us against
2.5-3.2 us for the bench's bodies, 0.3 us against 5 us for a subscription's topic list), but it does
not read and write quite the same JSON, and what a rule sees of a body, or what VerneMQ reads back,
must not depend on which library parsed it. So json stays the reference, and orjson is used only
where it gives the same result:

decode(raw) is json.loads(raw.decode("utf-8")) exactly (its value, or its ValueError/RecursionError):
- what orjson refuses and json reads (NaN, Infinity, 1e999, lone surrogate escapes such as "\\ud800",
  nesting past orjson's 1024 levels) is handed to json, which decides;
- what orjson reads differently is not given to orjson at all, found by one cheap byte scan: an
  integer literal past 64 bits (a float in orjson, an exact int in json) has a run of 19 digits or
  more (18 always fit; a quoted run of digits only costs speed); nesting json refuses (RecursionError
  at its recursion limit, about 1000 levels less the caller's stack) that orjson reads (1024 levels)
  needs more than MAX_ORJSON_OPENINGS opening brackets. Such bodies go to json directly.

encode(value) is JSON with json.dumps(value, allow_nan=False)'s meaning, in orjson's compact form (no
spaces; non-ASCII text as UTF-8, not \\u escapes: VerneMQ's jsx reads both alike):
- what orjson refuses (a lone surrogate echoed from a request, an int past 64 bits, a key that is
  not a string) is handed to json, which writes it as before or raises;
- orjson writes NaN and infinities as null where json refuses them, so a result holding `null`
  anywhere is redone by json: it raises for the non-finite number, or writes the same null.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

#: every digit to "9", both opening brackets to "[", every other byte to a space: runs of digits and
#: the number of openings (an upper bound of the nesting) are then found by C-speed bytes methods
_SCAN = bytes(0x39 if 0x30 <= b <= 0x39 else 0x5B if b in b"[{" else 0x20 for b in range(256))
#: the shortest run of digits an integer past 64 bits may have (-9223372036854775809: 19 digits)
_LONG_RUN = b"9" * 19
#: past this many openings json may refuse a nesting orjson reads: json decides (with room for the
#: caller's own stack below json's recursion limit of 1000)
MAX_ORJSON_OPENINGS = 400


def decode(raw: bytes) -> Any:
    """The JSON value of a UTF-8 body, as json.loads reads it; ValueError or RecursionError if none."""
    scan = raw.translate(_SCAN)
    if _LONG_RUN not in scan and scan.count(b"[") <= MAX_ORJSON_OPENINGS:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # json may still read it (NaN, a lone surrogate, ...), or refuse it as before
    return json.loads(raw.decode("utf-8"))


def encode(value: Any) -> bytes:
    """The JSON of a reply; ValueError (or TypeError) for what json.dumps(allow_nan=False) refuses."""
    try:
        out = orjson.dumps(value)
    except orjson.JSONEncodeError:
        return reference_encode(value)
    if b"null" in out:  # a None, or a NaN/infinity orjson wrote as null: json tells which
        return reference_encode(value)
    return out


def reference_encode(value: Any) -> bytes:
    """json's encoding, for what orjson cannot be trusted with (and for the fallback replies)."""
    return json.dumps(value, allow_nan=False).encode()
