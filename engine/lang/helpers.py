"""The helpers rules need for authentication and ACLs: password checks, MQTT topic templates, bounded
regular expressions, base64, JSON text and HMAC.

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
import secrets
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

import bcrypt
import regex

from ..events import JSONArray
from .guards import MAX_ITEMS, MAX_TEXT, TooBig

# -- arguments ----------------------------------------------------------------------------------


def _text(helper: str, arg: str, value: object) -> bytes:
    """A str (as UTF-8) or bytes argument, as bytes."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes):
        return value
    raise TypeError(f"{helper}: {arg} must be str or bytes, not {type(value).__name__}")


def _str(helper: str, arg: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{helper}: {arg} must be a string, not {type(value).__name__}")
    return value


def _choice(helper: str, arg: str, value: object, choices: Mapping[str, str] | tuple[str, ...]) -> str:
    name = _str(helper, arg, value)
    if name not in choices:
        raise ValueError(f"{helper}: {arg}={name!r} is not one of {', '.join(repr(c) for c in choices)}")
    return name


def _whole(helper: str, arg: str, value: object, low: int, high: int) -> int:
    if type(value) is not int:  # bool is not a count
        raise TypeError(f"{helper}: {arg} must be a whole number, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{helper}: {arg}={value} is outside {low}..{high}")
    return value


def _fits(helper: str, length: int) -> None:
    if length > MAX_TEXT:
        raise TooBig(f"{helper}: a result of {length} characters is over the limit of {MAX_TEXT}")


# -- password checks ----------------------------------------------------------------------------

#: bcrypt cost is 2**cost rounds: 10 takes about 70 ms and each step doubles it, so the cap keeps one
#: check (on the event loop) around a second. EMQX itself generates costs 5 to 10.
MAX_BCRYPT_COST = 14
BCRYPT_MAX_PASSWORD = 72  # bytes bcrypt reads; every implementation ignores the rest
MAX_PBKDF2_ITERATIONS = 1_000_000
MAX_PBKDF2_DK_LENGTH = 256  # bytes; each digest-size block costs `iterations` more HMACs
#: iterations x blocks: one check must not hold the event loop much past a second (1,000,000
#: iterations of one block is about that; 1,000,000 of md5 at dk_length 256 would be eight)
MAX_PBKDF2_WORK = 1_000_000
CHECK_CACHE_SIZE = 1024

_BCRYPT_HASH = re.compile(rb"\$2[aby]\$([0-9]{2})\$[./A-Za-z0-9]{53}")

#: EMQX's names (sha) and hashlib's (sha1) both work
_DIGESTS = {"md4": "md4", "md5": "md5", "ripemd160": "ripemd160", "sha": "sha1", "sha1": "sha1", "sha224": "sha224",
            "sha256": "sha256", "sha384": "sha384", "sha512": "sha512"}  # EMQX's pbkdf2 mac_fun choices


def _digest_size(helper: str, digest: str) -> int:
    """md4 and ripemd160 come from OpenSSL, whose version 3 moved them to a 'legacy' provider that
    many builds leave out: say so instead of failing with hashlib's 'unsupported hash type'."""
    try:
        return hashlib.new(digest).digest_size
    except ValueError:
        raise ValueError(f"{helper}: {digest} is not available in this server's OpenSSL (OpenSSL 3 keeps it in "
                         f"its legacy provider); rehash the stored passwords with sha256") from None
_SIMPLE_HASHES = ("plain", "md5", "sha", "sha1", "sha256", "sha512")  # EMQX's simple hashes
_SALT_POSITIONS = ("prefix", "suffix", "disable")
_ENCODINGS = ("hex", "base64")


class _CheckCache:
    """Recent results of the slow checks, keyed by an HMAC under a per-process random key.

    The key covers the algorithm's parameters, the stored hash and the password, so no plaintext
    password (nor anything it could be recovered from without the key, which never leaves the
    process) is kept. Failures are cached too: a client retrying a wrong password costs one hash.
    """

    def __init__(self, size: int):
        self._size = size
        self._key = secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, bool] = OrderedDict()
        self._lock = threading.Lock()  # runs are on one loop, but tests and tools may use threads

    def key(self, *parts: bytes) -> bytes:
        # length-prefixed, so no two different part lists make the same message
        message = b"".join(len(p).to_bytes(8, "big") + p for p in parts)
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def get(self, key: bytes) -> bool | None:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
            return found

    def put(self, key: bytes, result: bool) -> None:
        with self._lock:
            self._entries[key] = result
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


_CHECKS = _CheckCache(CHECK_CACHE_SIZE)


def clear_check_cache() -> None:
    """Forget every cached bcrypt/pbkdf2 result (for tests and tools; rules cannot call it)."""
    _CHECKS.clear()


class _RunBudget(threading.local):
    """The deadline (time.monotonic) of the rule run in progress, math.inf outside one: set and cleared
    by RuleInterpreter.execute, so a slow check can tell, before it starts, whether it can finish.
    One per thread: libraries run in the scan thread while rules run on the event loop."""

    deadline = math.inf


RunBudget = _RunBudget()


#: a check starts only if its estimated time, times this, fits in what is left of the run's budget:
#: the estimate comes from the best of a few short measurements, and a busy machine runs slower
COST_SAFETY = 1.25
#: seconds per unit of work (a bcrypt round; one pbkdf2 iteration of one block), by bcrypt or digest
_PER_UNIT: dict[str, float] = {}
_REAL_HASHPW = bcrypt.hashpw
_REAL_PBKDF2 = hashlib.pbkdf2_hmac


def _per_unit(kind: str) -> float:
    """Measured once per process and kind, the first time a check of that kind has to be estimated:
    bcrypt at cost 4 (16 rounds, about 1 ms) and pbkdf2 at 1000 iterations of one block (well under
    1 ms); the best of three, so a moment of load does not make every later check look too slow."""
    per = _PER_UNIT.get(kind)
    if per is None:
        best = math.inf
        for _ in range(3):
            started = time.perf_counter()
            if kind == "bcrypt":
                _REAL_HASHPW(b"calibration", b"$2b$04$" + b"." * 22)
            else:
                _REAL_PBKDF2(kind, b"calibration", b"salt", 1000)
            best = min(best, time.perf_counter() - started)
        per = _PER_UNIT[kind] = best / (16 if kind == "bcrypt" else 1000)
    return per


def _calling_node() -> Any:
    """The innermost rule statement being run (for the error's file:line:col), found as the
    interpreter's own error report finds it: the `node` its handlers are working on."""
    frame = sys._getframe(1)
    while frame is not None:
        node = frame.f_locals.get("node")
        if hasattr(node, "hr_file") and hasattr(node, "lineno"):
            return node
        frame = frame.f_back  # type: ignore[assignment]
    return None


def _cached(key: bytes, compute: Callable[[], bool], helper: str, kind: str, units: int) -> bool:
    """The cached result (a hit costs a fraction of a millisecond, whatever the budget), else the
    computed one, if its estimated cost (`units` of `kind`) fits in the run's remaining budget.
    One that does not is refused before it starts, as a deadline error: a hash cannot be stopped
    once started, and it would hold the event loop (every broker call) past the budget, only for
    the run to be refused at its end anyway."""
    found = _CHECKS.get(key)
    if found is None:
        deadline = RunBudget.deadline
        if deadline != math.inf:
            estimate = _per_unit(kind) * units
            left = deadline - time.monotonic()
            if estimate * COST_SAFETY > left:
                from .interp import RuleAbort  # here: interp imports this module

                raise RuleAbort(f"{helper} would take about {estimate * 1000:.0f} ms, more than the "
                                f"{max(left, 0.0) * 1000:.0f} ms left of the rule's budget: refused before it "
                                "started (raise --rule-timeout above the cost of the stored hashes)",
                                _calling_node())
        found = compute()
        _CHECKS.put(key, found)
    return found


def _stored_digest(helper: str, hashed: object, encoding: str) -> bytes:
    """The stored hash as bytes: hex (either case, as EMQX compares) or standard base64."""
    if isinstance(hashed, bytes):
        try:
            hashed = hashed.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"{helper}: hashed is not {encoding} text") from None
    text = _str(helper, "hashed", hashed)
    try:
        if encoding == "hex":
            return bytes.fromhex(text)
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise ValueError(f"{helper}: hashed is not valid {encoding} (encoding={encoding!r})") from None


def bcrypt_check(password: str | bytes, hashed: str | bytes) -> bool:
    """Whether `password` matches the bcrypt hash `hashed` ($2a$, $2b$ or $2y$, cost 4 to 14).

    Like every bcrypt implementation, only the first 72 bytes of the password count. Results are
    cached (see _CheckCache), but an uncached check costs the full hash on the server's event loop:
    cost 10 is about 70 ms, so a rule that calls this needs a --rule-timeout above the hash cost
    (the default 0.1 s is too tight from cost 10 up). A malformed hash raises ValueError.
    """
    pw = _text("bcrypt_check", "password", password)[:BCRYPT_MAX_PASSWORD]
    stored = _text("bcrypt_check", "hashed", hashed)
    found = _BCRYPT_HASH.fullmatch(stored)
    if found is None:
        raise ValueError("bcrypt_check: hashed is not a bcrypt hash "
                         "('$2a$', '$2b$' or '$2y$', a two-digit cost, '$', then 53 characters of ./A-Za-z0-9)")
    cost = int(found.group(1))
    if not 4 <= cost <= MAX_BCRYPT_COST:
        raise ValueError(f"bcrypt_check: the hash's cost {cost} is outside 4..{MAX_BCRYPT_COST}")
    # $2a$ and $2y$ differ from $2b$ only for passwords over 255 bytes, which bcrypt never reads
    normal = b"$2b$" + stored[4:]

    def compute() -> bool:
        try:
            computed = bcrypt.hashpw(pw, normal)
        except ValueError:  # a salt whose last character carries bits bcrypt has no room for
            raise ValueError("bcrypt_check: hashed is not a bcrypt hash (its salt does not decode)") from None
        return hmac.compare_digest(computed, normal)

    return _cached(_CHECKS.key(b"bcrypt", normal, pw), compute, "bcrypt_check", "bcrypt", 2**cost)


def pbkdf2_check(password: str | bytes, hashed: str | bytes, salt: str | bytes, iterations: int = 4096,
                 algorithm: str = "sha256", dk_length: int | None = None, encoding: str = "hex") -> bool:
    """Whether PBKDF2-HMAC(`algorithm`, password, salt, iterations, dk_length) equals `hashed`.

    As EMQX's pbkdf2: `algorithm` is its mac_fun (md5, sha, sha224, sha256, sha384, sha512), and
    `dk_length` None means the digest's size. `hashed` is hex (either case) or base64, per `encoding`;
    a hash that does not decode, or whose length is not dk_length, raises ValueError.
    Results are cached like bcrypt_check's; an uncached check runs `iterations` HMACs on the server's
    event loop (4096 × sha256 is a few ms, 1,000,000 about a second): --rule-timeout must exceed that.
    """
    helper = "pbkdf2_check"
    pw = _text(helper, "password", password)
    salt_bytes = _text(helper, "salt", salt)
    rounds = _whole(helper, "iterations", iterations, 1, MAX_PBKDF2_ITERATIONS)
    digest = _DIGESTS[_choice(helper, "algorithm", algorithm, _DIGESTS)]
    size = _digest_size(helper, digest)
    length = size if dk_length is None else _whole(helper, "dk_length", dk_length, 1, MAX_PBKDF2_DK_LENGTH)
    blocks = -(-length // size)
    if rounds * blocks > MAX_PBKDF2_WORK:
        raise ValueError(f"{helper}: {rounds} iterations x {blocks} blocks of {digest} is over the limit of "
                         f"{MAX_PBKDF2_WORK} (a shorter dk_length, or fewer iterations)")
    expected = _stored_digest(helper, hashed, _choice(helper, "encoding", encoding, _ENCODINGS))
    if len(expected) != length:
        raise ValueError(f"{helper}: hashed is {len(expected)} bytes but the derived key is {length}: "
                         f"pass dk_length={len(expected)} (or check algorithm and encoding)")

    def compute() -> bool:
        return hmac.compare_digest(hashlib.pbkdf2_hmac(digest, pw, salt_bytes, rounds, length), expected)

    params = f"{digest}:{rounds}:{length}".encode()
    return _cached(_CHECKS.key(b"pbkdf2", params, salt_bytes, expected, pw), compute, helper, digest,
                   rounds * blocks)


def hash_check(password: str | bytes, hashed: str | bytes, algorithm: str = "sha256", salt: str | bytes = "",
               salt_position: str = "prefix", encoding: str = "hex") -> bool:
    """EMQX's simple password hashes: digest(salt + password) (prefix), digest(password + salt)
    (suffix) or digest(password) (disable) equals `hashed`, compared in constant time.

    `algorithm` is plain, md5, sha (or sha1), sha256 or sha512; `hashed` is hex (either case) or base64
    per `encoding`. With plain the salted password itself is compared with `hashed`, byte for byte.
    """
    helper = "hash_check"
    pw = _text(helper, "password", password)
    name = _choice(helper, "algorithm", algorithm, _SIMPLE_HASHES)
    salt_bytes = _text(helper, "salt", salt)
    position = _choice(helper, "salt_position", salt_position, _SALT_POSITIONS)
    form = _choice(helper, "encoding", encoding, _ENCODINGS)
    data = salt_bytes + pw if position == "prefix" else pw + salt_bytes if position == "suffix" else pw
    if name == "plain":
        return hmac.compare_digest(data, _text(helper, "hashed", hashed))
    h = hashlib.new(_DIGESTS[name], data)
    expected = _stored_digest(helper, hashed, form)
    if len(expected) != h.digest_size:
        raise ValueError(f"{helper}: hashed is {len(expected)} bytes but a {name} digest is {h.digest_size} "
                         "(check algorithm and encoding)")
    return hmac.compare_digest(h.digest(), expected)


# -- MQTT topics --------------------------------------------------------------------------------

#: EMQX 5's ${username} and ${clientid}, EMQX 4's and mosquitto's %u and %c; one pass, so a value
#: that itself holds "%c" is never substituted again
_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}|%([uc])")
_PLACEHOLDER_NAMES = {"username": "username", "clientid": "client_id", "u": "username", "c": "client_id"}


def topic_words(topic: str) -> tuple[str, ...]:
    """The topic's levels: "a//b/" is ("a", "", "b", "")."""
    text = _str("topic_words", "topic", topic)
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
    text = _str("topic_fill", "pattern", pattern)
    values = {"username": _str("topic_fill", "username", username),
              "client_id": _str("topic_fill", "client_id", client_id)}
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
        _fits("topic_fill", length)
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
    source = _str(helper, "pattern", pattern)
    if isinstance(text, bytes):
        raise TypeError(f"{helper}: text must be a string, not bytes (decode a payload first: payload.decode())")
    subject = _str(helper, "text", text)
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
    raw = _text("b64encode", "data", data)
    _fits("b64encode", (len(raw) + 2) // 3 * 4)
    return base64.b64encode(raw).decode("ascii")


def b64decode(text: str | bytes) -> bytes:
    """The bytes of standard base64 `text`, strictly: only the canonical encoding (padding required, no
    other characters or spaces, unused bits zero) decodes."""
    if isinstance(text, str):
        if not text.isascii():
            raise ValueError("b64decode: text is not base64 (it has non-ASCII characters)")
        raw = text.encode("ascii")
    else:
        raw = _text("b64decode", "text", text)
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
    _fits("json_encode", len(text))
    return text


def sha256(data: str | bytes) -> str:
    """Hex SHA-256 of `data` (a str as UTF-8)."""
    return hashlib.sha256(_text("sha256", "data", data)).hexdigest()


def hmac_sha256(key: str | bytes, message: str | bytes) -> str:
    """Hex HMAC-SHA256 of `message` under `key` (str as UTF-8)."""
    return hmac.new(_text("hmac_sha256", "key", key), _text("hmac_sha256", "message", message),
                    hashlib.sha256).hexdigest()


def hmac_equal(a: str | bytes, b: str | bytes) -> bool:
    """Whether `a` and `b` are equal, in time that does not depend on where they differ (str as UTF-8)."""
    return hmac.compare_digest(_text("hmac_equal", "a", a), _text("hmac_equal", "b", b))


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
}
