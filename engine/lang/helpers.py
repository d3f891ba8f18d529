"""The helpers rules need for authentication and ACLs: password checks (lang/passwords), JSON Web
Tokens (lang/jwtdecode), MQTT topic templates, bounded regular expressions, base64, JSON text and HMAC.

Like the helpers in builtins, each is a plain function over plain values: it checks its arguments
(TypeError naming the helper and the argument), keeps what it returns within the sandbox's size
limits (lang/guards) and returns only str, bytes, bool, tuple or None.

Everything here runs synchronously on the server's event loop, so what can be slow is bounded:
password hashes by a cost cap and a small cache, regular expressions by a pattern-size and
expansion check and a match timeout.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

import regex

from ..events import JSONArray
from .guards import MAX_ITEMS, MAX_TEXT, TooBig

from .helperargs import check_fits, str_arg, text_arg
from .jwtdecode import jwt_decode
from .passwords import bcrypt_check, hash_check, pbkdf2_check

# -- MQTT topics --------------------------------------------------------------------------------

#: EMQX 5's ${username} and ${clientid}, EMQX 4's and mosquitto's %u and %c; one pass, so a value
#: that itself holds "%c" is never substituted again
_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}|%([uc])")
_PLACEHOLDER_NAMES = {"username": "username", "clientid": "client_id", "u": "username", "c": "client_id"}


def topic_words(topic: str) -> tuple[str, ...]:
    """The topic's levels: "a//b/" is ("a", "", "b", "")."""
    text = str_arg("topic_words", "topic", topic)
    if text.count("/") >= MAX_ITEMS:
        raise TooBig(f"topic_words: a topic of more than {MAX_ITEMS} levels is over the limit")
    return tuple(text.split("/"))


def topic_fill(pattern: str, username: str = "", client_id: str = "") -> str:
    """`pattern` with ${username}/%u and ${clientid}/%c replaced, for per-client ACL filters.

    A placeholder must not widen the filter, so a value it would take raises ValueError when it is
    empty (all anonymous clients would share "users//#"), contains + or # (a username "+" would
    turn "users/%u/#" into "users/+/#"; mosquitto refuses such clients too) or / (it would add
    levels), or starts with $ at the start of the pattern ("%u/#" must not become "$SYS/#"). In a
    rule that is a run-time error, answered by the hook's failure policy (deny for client.authorize
    unless configured otherwise); test `client.username` first to answer differently.
    Other ${...} placeholders raise ValueError; other % sequences are left as they are.
    """
    text = str_arg("topic_fill", "pattern", pattern)
    values = {"username": str_arg("topic_fill", "username", username),
              "client_id": str_arg("topic_fill", "client_id", client_id)}
    length = len(text)

    def fill(found: re.Match[str]) -> str:
        nonlocal length
        arg = _PLACEHOLDER_NAMES.get(found.group(1) or found.group(2))
        if arg is None:
            raise ValueError(f"topic_fill: unknown placeholder {found.group(0)!r}; "
                             "the placeholders are ${username}, ${clientid}, %u and %c")
        value = values[arg]
        where = f"topic_fill: {found.group(0)} needs a {arg}"
        if not value:
            raise ValueError(f"{where}, and {arg} is empty")
        bad = sorted(set(value) & {"+", "#", "/"})
        if bad:
            raise ValueError(f"{where} without {' '.join(bad)}: {arg} {value!r} would widen the filter")
        if found.start() == 0 and value.startswith("$"):
            raise ValueError(f"{where} that does not start with '$' at the start of the pattern: "
                             f"{arg} {value!r} would reach $-topics")
        length += len(value) - len(found.group(0))
        check_fits("topic_fill", length)
        return value

    return _PLACEHOLDER.sub(fill, text)


# -- regular expressions ------------------------------------------------------------------------

MAX_REGEX_PATTERN = 1000  # characters
MAX_REGEX_TEXT = 64 * 1024  # characters
REGEX_TIMEOUT = 0.05  # seconds one match may take
#: `regex` compiles a counted repeat by copying its item: (a{1000}){1000} allocates hundreds of MB
#: before any timeout applies, so patterns are refused above this many copied items
MAX_REGEX_EXPANSION = 10_000
#: verbose mode (comments, free spacing) and VERSION1 (nested sets) change where groups and sets
#: end, which the expansion estimate has to know; rule patterns do without both
_REFUSED_FLAGS = re.compile(r"\(\?[A-Za-z0-9^-]*(?:x|V1)[A-Za-z0-9^-]*[:)]")
_REPEAT = re.compile(r"\{\s*([0-9]*)\s*(?:,\s*[0-9]*\s*)?\}")
_POSIX_CLASS = re.compile(r"\[:\^?[A-Za-z]+:\]")


def _set_end(pattern: str, start: int) -> int:
    """The index just past the character set that opens at `start` (as `re` and regex VERSION0 read it)."""
    i = start + 1
    if pattern.startswith("^", i):
        i += 1
    if pattern.startswith("]", i):  # a ] first is a literal
        i += 1
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            posix = _POSIX_CLASS.match(pattern, i)
            if posix:
                i = posix.end()
                continue
        if c == "]":
            return i + 1
        i += 1
    return len(pattern)  # unterminated: regex will refuse it


def regex_expansion(pattern: str) -> int:
    """How many items compiling `pattern` copies, counting each counted repeat's minimum (an upper estimate)."""
    # one frame per open group: [cost of the group so far, cost of its last item]
    frames: list[list[int]] = [[0, 0]]
    i = 0
    while i < len(pattern):
        c = pattern[i]
        frame = frames[-1]
        if c == "\\":
            frame[0] += 1
            frame[1] = 1
            i += 2
        elif c == "[":
            frame[0] += 1
            frame[1] = 1
            i = _set_end(pattern, i)
        elif c == "(":
            if pattern.startswith("(?#", i):  # a comment runs to the first )
                end = pattern.find(")", i)
                i = len(pattern) if end < 0 else end + 1
                continue
            frames.append([0, 0])
            i += 1
        elif c == ")":
            if len(frames) > 1:
                inner = frames.pop()[0]
                frames[-1][0] += inner
                frames[-1][1] = inner
            i += 1
        elif c == "|":
            frame[1] = 0  # nothing before it to repeat
            i += 1
        elif c == "{" and (repeat := _REPEAT.match(pattern, i)):
            times = int(repeat.group(1) or 0)
            if times > 1:
                frame[0] += frame[1] * (times - 1)
                frame[1] *= times
            i = repeat.end()
        else:
            frame[0] += 1
            frame[1] = 1
            i += 1
    return sum(f[0] for f in frames)


@lru_cache(maxsize=256)
def _compile(pattern: str) -> Any:
    """A compiled pattern, or ValueError saying why not (the caller adds its name)."""
    if len(pattern) > MAX_REGEX_PATTERN:
        raise ValueError(f"a pattern of {len(pattern)} characters is over the limit of {MAX_REGEX_PATTERN}")
    if _REFUSED_FLAGS.search(pattern):
        raise ValueError("the inline flags x (verbose) and V1 are not allowed in rule patterns")
    copies = regex_expansion(pattern)
    if copies > MAX_REGEX_EXPANSION:
        raise ValueError(f"the pattern's counted repeats expand to about {copies} items, over the limit of "
                         f"{MAX_REGEX_EXPANSION}: use a range ({{1,n}}) or a smaller count")
    try:
        return regex.compile(pattern)
    except regex.error as exc:
        raise ValueError(f"invalid pattern {pattern!r}: {exc}") from None


def pattern_problem(pattern: str) -> str | None:
    """Why a pattern cannot be used, or None: for `hookrules check` on patterns written literally."""
    try:
        _compile(pattern)
    except ValueError as exc:
        return str(exc)
    return None


#: helpers whose first argument is a pattern
PATTERN_HELPERS = ("regex_match", "regex_search")


def _match(helper: str, pattern: object, text: object, how: str) -> Any:
    source = str_arg(helper, "pattern", pattern)
    if isinstance(text, bytes):
        raise TypeError(f"{helper}: text must be a string, not bytes (decode a payload first: payload.decode())")
    subject = str_arg(helper, "text", text)
    if len(subject) > MAX_REGEX_TEXT:
        raise ValueError(f"{helper}: a text of {len(subject)} characters is over the limit of {MAX_REGEX_TEXT}")
    try:
        compiled = _compile(source)
    except ValueError as exc:
        raise ValueError(f"{helper}: {exc}") from None
    try:
        return getattr(compiled, how)(subject, timeout=REGEX_TIMEOUT)
    except TimeoutError:
        raise ValueError(f"{helper}: regex took too long (over {REGEX_TIMEOUT} s): nested repeats such as "
                         "(a+)+ backtrack without end; make the pattern more specific") from None


def regex_match(pattern: str, text: str) -> bool:
    """Whether the whole of `text` matches `pattern` (Python `re` syntax, run by the `regex` package).

    Patterns are up to 1000 characters, texts up to 64 KiB; a match over 0.05 s raises ValueError.
    """
    return _match("regex_match", pattern, text, "fullmatch") is not None


def regex_search(pattern: str, text: str) -> str | None:
    """The first part of `text` that matches `pattern`, or None; limits as regex_match."""
    found = _match("regex_search", pattern, text, "search")
    return None if found is None else str(found.group(0))


# -- encodings and digests ----------------------------------------------------------------------

MAX_JSON_DEPTH = 100


def b64encode(data: str | bytes) -> str:
    """Standard base64 of `data` (a str is encoded as UTF-8 first)."""
    raw = text_arg("b64encode", "data", data)
    check_fits("b64encode", (len(raw) + 2) // 3 * 4)
    return base64.b64encode(raw).decode("ascii")


def b64decode(text: str | bytes) -> bytes:
    """The bytes of standard base64 `text`, strictly: only the canonical encoding (padding required, no
    other characters or spaces, unused bits zero) decodes."""
    if isinstance(text, str):
        if not text.isascii():
            raise ValueError("b64decode: text is not base64 (it has non-ASCII characters)")
        raw = text.encode("ascii")
    else:
        raw = text_arg("b64decode", "text", text)
    if len(raw) // 4 * 3 > MAX_TEXT:
        raise TooBig(f"b64decode: a result of about {len(raw) // 4 * 3} bytes is over the limit of {MAX_TEXT}")
    try:
        out = base64.b64decode(raw, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"b64decode: text is not valid base64 ({exc})") from None
    if base64.b64encode(out) != raw:  # binascii lets extra padding and non-zero unused bits through
        raise ValueError("b64decode: text is not valid base64 (not in its canonical form)")
    return out


def _plain_json(value: Any, depth: int, room: list[int]) -> Any:
    """`value` as the dicts and lists json writes, type-checked; `room` counts down characters it
    will take at least, so a list holding one big string 100,000 times stops before it is written."""
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"json_encode: value nested deeper than {MAX_JSON_DEPTH} levels (a list holding itself?)")
    out: Any
    if value is None or isinstance(value, bool):
        room[0] -= 5
        out = value
    elif isinstance(value, int):
        room[0] -= max(1, value.bit_length() * 3 // 10)
        out = value
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"json_encode: {value} has no JSON form")
        room[0] -= 3
        out = value
    elif isinstance(value, str):
        if value.isprintable() and '"' not in value and "\\" not in value:
            room[0] -= len(value) + 2
        else:  # escapes: a control character is 6 characters of JSON; measured before the text is made
            room[0] -= len(value) + 2 + value.count('"') + value.count("\\") + 5 * sum(
                1 for c in value if not c.isprintable()) if len(value) <= room[0] else len(value) + 2
        out = value
    elif isinstance(value, (bytes, bytearray)):
        raise TypeError("json_encode: bytes have no JSON form; decode them (payload.decode()) or b64encode() them")
    elif isinstance(value, (list, tuple, JSONArray)):  # a webhook body's arrays too, as its objects
        room[0] -= 1 + len(value)
        if room[0] < 0:
            raise TooBig(f"json_encode: the JSON text would be over the limit of {MAX_TEXT} characters")
        out = [_plain_json(v, depth + 1, room) for v in value]
    elif isinstance(value, Mapping):
        room[0] -= 1 + 2 * len(value)
        items: dict[Any, Any] = {}
        for k, v in value.items():
            if not (k is None or isinstance(k, (str, int, float))):
                raise TypeError(f"json_encode: a dict key must be a string or a number, not {type(k).__name__}")
            room[0] -= len(k) + 2 if isinstance(k, str) else 2
            items[k] = _plain_json(v, depth + 1, room)
        out = items
    elif isinstance(value, (set, frozenset)):
        raise TypeError("json_encode: a set has no JSON form; pass sorted(s) or list(s)")
    else:
        raise TypeError(f"json_encode: a {type(value).__name__} has no JSON form")
    if room[0] < 0:
        raise TooBig(f"json_encode: the JSON text would be over the limit of {MAX_TEXT} characters")
    return out


def json_encode(value: Any) -> str:
    """Compact JSON text (no spaces, keys in the order given, non-ASCII as is) of dicts, lists, tuples,
    strings, numbers, booleans and None; bytes, sets, NaN and infinity are refused."""
    plain = _plain_json(value, 0, [MAX_TEXT])
    text = json.dumps(plain, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    check_fits("json_encode", len(text))
    return text


def sha256(data: str | bytes) -> str:
    """Hex SHA-256 of `data` (a str as UTF-8)."""
    return hashlib.sha256(text_arg("sha256", "data", data)).hexdigest()


def hmac_sha256(key: str | bytes, message: str | bytes) -> str:
    """Hex HMAC-SHA256 of `message` under `key` (str as UTF-8)."""
    return hmac.new(text_arg("hmac_sha256", "key", key), text_arg("hmac_sha256", "message", message),
                    hashlib.sha256).hexdigest()


def hmac_equal(a: str | bytes, b: str | bytes) -> bool:
    """Whether `a` and `b` are equal, in time that does not depend on where they differ (str as UTF-8)."""
    return hmac.compare_digest(text_arg("hmac_equal", "a", a), text_arg("hmac_equal", "b", b))


#: What builtins.HELPERS adds for rules, by the name rules call.
HELPERS: dict[str, Callable[..., Any]] = {
    "bcrypt_check": bcrypt_check,
    "pbkdf2_check": pbkdf2_check,
    "hash_check": hash_check,
    "topic_words": topic_words,
    "topic_fill": topic_fill,
    "regex_match": regex_match,
    "regex_search": regex_search,
    "b64encode": b64encode,
    "b64decode": b64decode,
    "json_encode": json_encode,
    "sha256": sha256,
    "hmac_sha256": hmac_sha256,
    "hmac_equal": hmac_equal,
    "jwt_decode": jwt_decode,
}
