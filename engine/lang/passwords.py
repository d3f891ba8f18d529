"""Password checks as EMQX stores hashes: bcrypt, PBKDF2 and its simple salted digests.

They are the slow helpers: a hash cannot be interrupted once started and runs on the server's event
loop, so each is bounded three ways: a cost cap (bcrypt cost, PBKDF2 iterations x blocks), a cache of
recent results (keyed by an HMAC, so no plaintext password is kept), and a refusal before starting a
hash whose calibrated estimate does not fit in what is left of the run's budget (RunBudget).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import secrets
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import bcrypt

from .compiler import frame_position
from .helperargs import choice_arg, str_arg, text_arg, whole_arg

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
        names = frame.f_locals
        node = names.get("node")
        compiled = frame_position(names) if node is None else None
        if compiled is not None:  # a compiled rule's frame (lang/compiler): its statement
            node = compiled[1]
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
                from .functions import RuleAbort  # here: interp imports this module

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
    text = str_arg(helper, "hashed", hashed)
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
    pw = text_arg("bcrypt_check", "password", password)[:BCRYPT_MAX_PASSWORD]
    stored = text_arg("bcrypt_check", "hashed", hashed)
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
    pw = text_arg(helper, "password", password)
    salt_bytes = text_arg(helper, "salt", salt)
    rounds = whole_arg(helper, "iterations", iterations, 1, MAX_PBKDF2_ITERATIONS)
    digest = _DIGESTS[choice_arg(helper, "algorithm", algorithm, _DIGESTS)]
    size = _digest_size(helper, digest)
    length = size if dk_length is None else whole_arg(helper, "dk_length", dk_length, 1, MAX_PBKDF2_DK_LENGTH)
    blocks = -(-length // size)
    if rounds * blocks > MAX_PBKDF2_WORK:
        raise ValueError(f"{helper}: {rounds} iterations x {blocks} blocks of {digest} is over the limit of "
                         f"{MAX_PBKDF2_WORK} (a shorter dk_length, or fewer iterations)")
    expected = _stored_digest(helper, hashed, choice_arg(helper, "encoding", encoding, _ENCODINGS))
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
    pw = text_arg(helper, "password", password)
    name = choice_arg(helper, "algorithm", algorithm, _SIMPLE_HASHES)
    salt_bytes = text_arg(helper, "salt", salt)
    position = choice_arg(helper, "salt_position", salt_position, _SALT_POSITIONS)
    form = choice_arg(helper, "encoding", encoding, _ENCODINGS)
    data = salt_bytes + pw if position == "prefix" else pw + salt_bytes if position == "suffix" else pw
    if name == "plain":
        return hmac.compare_digest(data, text_arg(helper, "hashed", hashed))
    h = hashlib.new(_DIGESTS[name], data)
    expected = _stored_digest(helper, hashed, form)
    if len(expected) != h.digest_size:
        raise ValueError(f"{helper}: hashed is {len(expected)} bytes but a {name} digest is {h.digest_size} "
                         "(check algorithm and encoding)")
    return hmac.compare_digest(h.digest(), expected)
