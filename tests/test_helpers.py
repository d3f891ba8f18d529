"""The authentication and ACL helpers of lang/helpers: password checks, topic templates, bounded
regular expressions, base64, JSON text and HMAC.

Each is called directly and from a compiled rule, the way a rule author uses it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from types import MappingProxyType
from typing import Any

import bcrypt
import pytest

from hookrules.decisions import ALLOW, Deny, Rewrite
from hookrules.engine import Engine
from hookrules.events import Client, Event, Message, frozen_map
from hookrules.hooks import HOOKS
from hookrules.lang import helpers, passwords
from hookrules.lang.builtins import HELPERS, json_decode, provided_names, topic_match
from hookrules.lang.guards import MAX_ITEMS, MAX_TEXT, TooBig
from hookrules.lang.helpers import (
    MAX_REGEX_EXPANSION, MAX_REGEX_PATTERN, MAX_REGEX_TEXT, b64decode, b64encode, hmac_equal, hmac_sha256,
    json_encode, regex_expansion, regex_match, regex_search, sha256, topic_fill, topic_words,
)
from hookrules.lang.passwords import (
    MAX_BCRYPT_COST, MAX_PBKDF2_ITERATIONS, bcrypt_check, hash_check, pbkdf2_check,
)
from hookrules.ruleset import CompiledRule, RuleRuntimeError, RuleSet, compile_rule

AUTHN = "client.authenticate"
AUTHZ = "client.authorize"
PUBLISH = "message.publish"

NEW_HELPERS = ("bcrypt_check", "pbkdf2_check", "hash_check", "topic_words", "topic_fill", "regex_match",
               "regex_search", "b64encode", "b64decode", "json_encode", "sha256", "hmac_sha256", "hmac_equal",
               "jwt_decode")


def compile_src(src: str, hook: str) -> CompiledRule:
    return compile_rule(f"rules/{hook}.star", src.encode(), HOOKS[hook])


def authn(username: str, password: str, client_id: str = "c1") -> Event:
    return Event(AUTHN, "emqx", Client(id=client_id, username=username, password=password),
                 frozen_map({"result": False}))


def authz(topic: str, username: str = "bob", client_id: str = "c1", action: str = "publish") -> Event:
    return Event(AUTHZ, "emqx", Client(id=client_id, username=username),
                 frozen_map({"action": action, "topic": topic, "result": False}))


def publish(payload: bytes, topic: str = "t/a", user_properties: dict[str, str] | None = None) -> Event:
    msg = Message(id="m1", from_="pub", topic=topic, payload=payload, user_properties=frozen_map(user_properties))
    return Event(PUBLISH, "emqx", Client(id="pub"), frozen_map({"message": msg}))


def runtime_error(rule: CompiledRule, event: Event) -> str:
    with pytest.raises(RuleRuntimeError) as info:
        rule.run(event)
    assert info.value.error.code == "runtime_error"
    return info.value.error.message


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    passwords.clear_check_cache()
    yield
    passwords.clear_check_cache()


REAL_HASHPW = bcrypt.hashpw


@pytest.fixture
def hashpw_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Counts the real bcrypt hashes computed (the cache must skip them)."""
    calls: list[bytes] = []

    def counting(password: bytes, salt: bytes) -> bytes:
        calls.append(salt)
        return REAL_HASHPW(password, salt)

    monkeypatch.setattr(passwords.bcrypt, "hashpw", counting)
    return calls


def bcrypt_hash(password: bytes, prefix: bytes = b"2b") -> str:
    return REAL_HASHPW(password, bcrypt.gensalt(rounds=4, prefix=prefix)).decode()


# -- registration -------------------------------------------------------------------------------


def test_every_helper_is_registered_for_rules() -> None:
    for name in NEW_HELPERS:
        assert HELPERS[name] is helpers.HELPERS[name]
        assert name in provided_names()
    assert set(helpers.HELPERS) == set(NEW_HELPERS)
    assert HELPERS["topic_match"] is topic_match  # the existing ones are still there


def test_a_rule_cannot_assign_to_a_helper_name() -> None:
    from hookrules.errors import RuleLoadError

    with pytest.raises(RuleLoadError) as info:
        compile_src("sha256 = 1\nallow()\n", AUTHN)
    assert "sha256" in str(info.value)


# -- bcrypt_check -------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", [b"2a", b"2b"])
def test_bcrypt_check(prefix: bytes) -> None:
    hashed = bcrypt_hash(b"s3cret", prefix)
    assert hashed.startswith("$" + prefix.decode() + "$04$")
    assert bcrypt_check("s3cret", hashed) is True
    assert bcrypt_check(b"s3cret", hashed.encode()) is True
    assert bcrypt_check("s3cret!", hashed) is False
    assert bcrypt_check("", hashed) is False


def test_bcrypt_check_accepts_2y_hashes() -> None:
    """PHP writes $2y$; it is the same algorithm as $2b$, so the same hash under that prefix checks."""
    hashed = "$2y$" + bcrypt_hash(b"pw")[4:]
    assert bcrypt_check("pw", hashed) is True
    assert bcrypt_check("pW", hashed) is False


def test_bcrypt_check_reads_the_first_72_bytes_like_every_bcrypt() -> None:
    long = b"x" * 72
    hashed = bcrypt_hash(long)
    assert bcrypt_check(long + b"ignored", hashed) is True
    assert bcrypt_check(long[:71], hashed) is False


def test_bcrypt_check_of_non_ascii_passwords_uses_utf8() -> None:
    hashed = bcrypt_hash("pässwörd".encode())
    assert bcrypt_check("pässwörd", hashed) is True
    assert bcrypt_check("passwort", hashed) is False


@pytest.mark.parametrize("bad", [
    "",
    "plaintext",
    "$2b$04$short",
    "$1$abcdefgh$" + "x" * 22,  # md5-crypt
    "$2x$04$" + "a" * 53,  # the buggy-crypt_blowfish marker is not accepted
    "$2b$4$" + "a" * 53,  # one-digit cost
    "$2b$04$" + "a" * 52 + "!",
    "$2b$04$" + "a" * 54,
    "$2b$04$" + "a" * 53,  # the right shape, but the salt's last character carries bits it has no room for
])
def test_bcrypt_check_refuses_a_malformed_hash(bad: str) -> None:
    with pytest.raises(ValueError, match="bcrypt_check: hashed is not a bcrypt hash"):
        bcrypt_check("pw", bad)


@pytest.mark.parametrize("cost", [3, MAX_BCRYPT_COST + 1, 31])
def test_bcrypt_check_refuses_a_cost_outside_the_cap(cost: int, hashpw_calls: list[bytes]) -> None:
    with pytest.raises(ValueError, match=f"cost {cost} is outside 4..{MAX_BCRYPT_COST}"):
        bcrypt_check("pw", f"$2b${cost:02d}$" + "a" * 53)
    assert hashpw_calls == []  # refused before any hashing


def test_bcrypt_check_caches_successes_and_failures(hashpw_calls: list[bytes]) -> None:
    hashed = bcrypt_hash(b"right")
    assert [bcrypt_check("right", hashed) for _ in range(3)] == [True, True, True]
    assert len(hashpw_calls) == 1
    assert [bcrypt_check("wrong", hashed) for _ in range(3)] == [False, False, False]
    assert len(hashpw_calls) == 2
    # a new hash for the same user (password changed) is checked afresh, not answered from the cache
    assert bcrypt_check("right", bcrypt_hash(b"other")) is False
    assert len(hashpw_calls) == 3


def test_the_check_cache_keeps_no_password() -> None:
    hashed = bcrypt_hash(b"correct horse")
    assert bcrypt_check("correct horse", hashed)
    assert not pbkdf2_check("correct horse", "00" * 32, "salt")
    entries = passwords._CHECKS._entries
    assert len(entries) == 2
    for key, result in entries.items():
        assert isinstance(key, bytes) and len(key) == 32
        assert b"correct horse" not in key and b"horse" not in key
        assert isinstance(result, bool)


def test_the_check_cache_is_bounded_and_keyed_per_process() -> None:
    cache = passwords._CheckCache(3)
    keys = [cache.key(b"bcrypt", str(i).encode()) for i in range(5)]
    for i, key in enumerate(keys):
        cache.put(key, i % 2 == 0)
    assert len(cache) == 3
    assert cache.get(keys[0]) is None and cache.get(keys[1]) is None  # the oldest went first
    assert cache.get(keys[4]) is True
    # same parts, same key; another cache (another process) derives another key
    assert cache.key(b"a", b"bc") == cache.key(b"a", b"bc")
    assert cache.key(b"a", b"bc") != cache.key(b"ab", b"c")
    assert passwords._CheckCache(3).key(b"a", b"bc") != cache.key(b"a", b"bc")


@pytest.mark.parametrize(("args", "message"), [
    ((1, "$2b$"), "bcrypt_check: password must be str or bytes, not int"),
    (("pw", None), "bcrypt_check: hashed must be str or bytes, not NoneType"),
])
def test_bcrypt_check_argument_types(args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        bcrypt_check(*args)


def test_a_bcrypt_user_table_in_an_authenticate_rule() -> None:
    users = {"alice": bcrypt_hash(b"alice-pw"), "bob": bcrypt_hash(b"bob-pw", b"2a")}
    rule = compile_src(f"""
USERS = {users!r}
hashed = USERS.get(client.username)
if hashed == None:
    deny("unknown user")
if bcrypt_check(client.password, hashed):
    allow()
deny("bad password")
""", AUTHN)
    assert rule.run(authn("alice", "alice-pw")) == ALLOW
    assert rule.run(authn("bob", "bob-pw")) == ALLOW
    assert rule.run(authn("alice", "bob-pw")) == Deny("bad password")
    assert rule.run(authn("carol", "x")) == Deny("unknown user")


def test_a_malformed_hash_in_a_rule_is_a_runtime_error_that_says_so() -> None:
    rule = compile_src('if bcrypt_check(client.password, "$2b$10$oops"):\n    allow()\ndeny()\n', AUTHN)
    assert "ValueError: bcrypt_check: hashed is not a bcrypt hash" in runtime_error(rule, authn("a", "b"))


# -- pbkdf2_check -------------------------------------------------------------------------------


@pytest.mark.parametrize(("iterations", "hex_key"), [
    (1, "0c60c80f961f0e71f3a9b524af6012062fe037a6"),  # RFC 6070, test 1
    (2, "ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957"),  # RFC 6070, test 2
])
def test_pbkdf2_check_rfc_6070_vectors(iterations: int, hex_key: str) -> None:
    assert pbkdf2_check("password", hex_key, "salt", iterations, "sha") is True
    assert pbkdf2_check("password", hex_key, "salt", iterations, "sha1") is True
    assert pbkdf2_check("passw0rd", hex_key, "salt", iterations, "sha1") is False
    assert pbkdf2_check("password", hex_key, "pepper", iterations, "sha1") is False


@pytest.mark.parametrize("algorithm", ["md5", "sha", "sha224", "sha256", "sha384", "sha512"])
def test_pbkdf2_check_algorithms(algorithm: str) -> None:
    name = "sha1" if algorithm == "sha" else algorithm
    key = hashlib.pbkdf2_hmac(name, b"secret", b"NaCl", 4096)
    assert pbkdf2_check("secret", key.hex(), "NaCl", algorithm=algorithm) is True
    assert pbkdf2_check("secret", key.hex(), "NaCl", iterations=4095, algorithm=algorithm) is False


def test_pbkdf2_check_defaults_are_emqx_s() -> None:
    """EMQX's defaults: sha256, 4096 iterations, the digest's length, hex (compared in either case)."""
    key = hashlib.pbkdf2_hmac("sha256", b"secret", b"salt", 4096)
    assert pbkdf2_check("secret", key.hex(), "salt") is True
    assert pbkdf2_check("secret", key.hex().upper(), b"salt") is True
    assert pbkdf2_check(b"secret", key.hex().encode(), "salt") is True
    assert pbkdf2_check("Secret", key.hex(), "salt") is False


def test_pbkdf2_check_base64_and_dk_length() -> None:
    key = hashlib.pbkdf2_hmac("sha512", b"pw", b"s", 1000, dklen=20)
    stored = base64.b64encode(key).decode()
    assert pbkdf2_check("pw", stored, "s", 1000, "sha512", dk_length=20, encoding="base64") is True
    assert pbkdf2_check("px", stored, "s", 1000, "sha512", dk_length=20, encoding="base64") is False
    with pytest.raises(ValueError, match=r"hashed is 20 bytes but the derived key is 64: pass dk_length=20"):
        pbkdf2_check("pw", stored, "s", 1000, "sha512", encoding="base64")


def test_pbkdf2_check_caches_results(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = hashlib.pbkdf2_hmac

    def counting(name: str, password: bytes, salt: bytes, iterations: int, dklen: int | None = None) -> bytes:
        calls.append(iterations)
        return real(name, password, salt, iterations, dklen)

    monkeypatch.setattr(passwords.hashlib, "pbkdf2_hmac", counting)
    key = real("sha256", b"pw", b"s", 10).hex()
    assert [pbkdf2_check("pw", key, "s", 10) for _ in range(3)] == [True] * 3
    assert [pbkdf2_check("px", key, "s", 10) for _ in range(3)] == [False] * 3
    assert calls == [10, 10]
    assert pbkdf2_check("pw", key, "other salt", 10) is False  # other parameters, another entry
    assert calls == [10, 10, 10]


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"iterations": MAX_PBKDF2_ITERATIONS + 1}, ValueError, "iterations=1000001 is outside 1..1000000"),
    ({"iterations": 0}, ValueError, "iterations=0 is outside"),
    ({"iterations": True}, TypeError, "pbkdf2_check: iterations must be a whole number, not bool"),
    ({"iterations": "4096"}, TypeError, "iterations must be a whole number, not str"),
    ({"algorithm": "whirlpool"}, ValueError, "pbkdf2_check: algorithm='whirlpool' is not one of"),
    ({"algorithm": 256}, TypeError, "pbkdf2_check: algorithm must be a string, not int"),
    ({"dk_length": 0}, ValueError, "dk_length=0 is outside 1..256"),
    ({"dk_length": 10_000}, ValueError, "dk_length=10000 is outside"),
    ({"encoding": "base32"}, ValueError, "encoding='base32' is not one of 'hex', 'base64'"),
    ({"salt": 5}, TypeError, "pbkdf2_check: salt must be str or bytes, not int"),
    ({"hashed": "zz" * 32}, ValueError, "pbkdf2_check: hashed is not valid hex"),
    ({"hashed": "ab" * 31}, ValueError, "hashed is 31 bytes but the derived key is 32"),
    ({"hashed": "ab" * 32, "encoding": "base64"}, ValueError, "hashed is 48 bytes"),
    ({"hashed": "not base64!", "encoding": "base64"}, ValueError, "hashed is not valid base64"),
])
def test_pbkdf2_check_refuses_bad_arguments(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    args: dict[str, Any] = {"password": "pw", "hashed": "ab" * 32, "salt": "s", **kwargs}
    with pytest.raises(error, match=message):
        pbkdf2_check(**args)


def test_a_pbkdf2_user_table_in_an_authenticate_rule() -> None:
    salt = "f00d"
    stored = hashlib.pbkdf2_hmac("sha512", b"dev-pw", salt.encode(), 2000).hex()
    rule = compile_src(f"""
USERS = {{"dev1": {{"hash": "{stored}", "salt": "{salt}"}}}}
user = USERS.get(client.username)
if user and pbkdf2_check(client.password, user["hash"], user["salt"], iterations=2000, algorithm="sha512"):
    allow()
deny("bad credentials")
""", AUTHN)
    assert rule.run(authn("dev1", "dev-pw")) == ALLOW
    assert rule.run(authn("dev1", "dev-pW")) == Deny("bad credentials")
    assert rule.run(authn("dev2", "dev-pw")) == Deny("bad credentials")


# -- hash_check ---------------------------------------------------------------------------------


def test_hash_check_emqx_documentation_vectors() -> None:
    """The two Redis examples of EMQX's authentication docs."""
    # user123, password "secret", salt "salt" as a prefix, sha256
    assert hash_check("secret", "bede90386d450cea8b77b822f8887065e4e5abf132c2f9dccfcc7fbd4cba5e35",
                      "sha256", "salt", "prefix") is True
    # emqx_u, password "public", salt "slat_foo123" as a suffix, sha256
    assert hash_check("public", "44edc2d57cde8d79c98145003e105b90a14f1460b79186ea9cfe83942fc5abb5",
                      "sha256", "slat_foo123", "suffix") is True
    assert hash_check("public", "44edc2d57cde8d79c98145003e105b90a14f1460b79186ea9cfe83942fc5abb5",
                      "sha256", "slat_foo123", "prefix") is False


@pytest.mark.parametrize("algorithm", ["md5", "sha", "sha1", "sha256", "sha512"])
@pytest.mark.parametrize(("position", "data"), [("prefix", b"NaClpw"), ("suffix", b"pwNaCl"), ("disable", b"pw")])
def test_hash_check_salting(algorithm: str, position: str, data: bytes) -> None:
    digest = hashlib.new("sha1" if algorithm == "sha" else algorithm, data).digest()
    assert hash_check("pw", digest.hex(), algorithm, "NaCl", position) is True
    assert hash_check("pw", digest.hex().upper(), algorithm, b"NaCl", position) is True
    assert hash_check("pw", base64.b64encode(digest), algorithm, "NaCl", position, "base64") is True
    assert hash_check("px", digest.hex(), algorithm, "NaCl", position) is False
    if position != "disable":
        assert hash_check("pw", digest.hex(), algorithm, "KCl", position) is False


def test_hash_check_plain_compares_the_salted_password_itself() -> None:
    assert hash_check("pw", "pw", "plain", salt_position="disable") is True
    assert hash_check("pw", "PW", "plain", salt_position="disable") is False
    assert hash_check("pw", "s-pw", "plain", "s-") is True
    assert hash_check("pw", "pw", "plain", "s-") is False


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"algorithm": "bcrypt"}, ValueError, "hash_check: algorithm='bcrypt' is not one of"),
    ({"salt_position": "middle"}, ValueError, "salt_position='middle' is not one of 'prefix', 'suffix', 'disable'"),
    ({"hashed": "ab" * 20}, ValueError, "hash_check: hashed is 20 bytes but a sha256 digest is 32"),
    ({"hashed": "xyz"}, ValueError, "hash_check: hashed is not valid hex"),
    ({"hashed": 12}, TypeError, "hash_check: hashed must be a string, not int"),
    ({"password": ["pw"]}, TypeError, "hash_check: password must be str or bytes, not list"),
    ({"salt": None}, TypeError, "hash_check: salt must be str or bytes, not NoneType"),
])
def test_hash_check_refuses_bad_arguments(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    args: dict[str, Any] = {"password": "pw", "hashed": "ab" * 32, **kwargs}
    with pytest.raises(error, match=message):
        hash_check(**args)


def test_a_salted_sha256_user_table_in_an_authenticate_rule() -> None:
    digest = hashlib.sha256(b"pw-of-eve" + b"pepper").hexdigest()
    rule = compile_src(f"""
USERS = {{"eve": ("{digest}", "pepper")}}
if client.username in USERS:
    stored, salt = USERS[client.username]
    if hash_check(client.password, stored, "sha256", salt, "suffix"):
        allow()
deny("no")
""", AUTHN)
    assert rule.run(authn("eve", "pw-of-eve")) == ALLOW
    assert rule.run(authn("eve", "pepperpw-of-eve")) == Deny("no")


# -- topic_words, topic_fill --------------------------------------------------------------------


@pytest.mark.parametrize(("topic", "words"), [
    ("a/b/c", ("a", "b", "c")),
    ("a//b/", ("a", "", "b", "")),
    ("/", ("", "")),
    ("", ("",)),
    ("$SYS/+/#", ("$SYS", "+", "#")),
])
def test_topic_words(topic: str, words: tuple[str, ...]) -> None:
    assert topic_words(topic) == words


def test_topic_words_limits() -> None:
    with pytest.raises(TypeError, match="topic_words: topic must be a string, not bytes"):
        topic_words(b"a/b")  # type: ignore[arg-type]
    assert len(topic_words("/" * (MAX_ITEMS - 1))) == MAX_ITEMS
    with pytest.raises(TooBig, match="topic_words"):
        topic_words("/" * MAX_ITEMS)


@pytest.mark.parametrize(("pattern", "filled"), [
    ("users/${username}/#", "users/bob/#"),
    ("users/%u/#", "users/bob/#"),
    ("devices/${clientid}/cmd", "devices/dev-1/cmd"),
    ("devices/%c/cmd", "devices/dev-1/cmd"),
    ("%u/%c/${username}${clientid}", "bob/dev-1/bobdev-1"),
    ("rate/100%/%d", "rate/100%/%d"),  # other % sequences stay
    ("${username", "${username"),  # not a placeholder
    ("fixed/topic", "fixed/topic"),
])
def test_topic_fill(pattern: str, filled: str) -> None:
    assert topic_fill(pattern, "bob", "dev-1") == filled
    assert topic_fill(pattern, username="bob", client_id="dev-1") == filled


def test_topic_fill_substitutes_once() -> None:
    """A username that holds a placeholder is data, not a template."""
    assert topic_fill("a/%u/%c", "x%c", "y") == "a/x%c/y"
    assert topic_fill("a/${username}/${clientid}", "${clientid}", "y") == "a/${clientid}/y"


def test_topic_fill_needs_only_the_values_the_pattern_uses() -> None:
    assert topic_fill("public/#") == "public/#"
    assert topic_fill("users/%u/#", "bob") == "users/bob/#"  # no client id needed


@pytest.mark.parametrize(("pattern", "username", "client_id", "message"), [
    ("users/%u/#", "", "c", "%u needs a username, and username is empty"),
    ("users/${username}/#", "", "c", r"\$\{username\} needs a username, and username is empty"),
    ("devices/%c/#", "u", "", "%c needs a client_id, and client_id is empty"),
    ("users/%u/#", "+", "c", r"username '\+' would widen the filter"),
    ("users/%u/#", "a#", "c", "username 'a#' would widen the filter"),
    ("users/%u/#", "a/b", "c", "without /: username 'a/b' would widen"),
    ("devices/${clientid}", "u", "x/+/#", r"without # \+ /: client_id 'x/\+/#'"),
    ("%u/#", "$SYS", "c", r"username '\$SYS' would reach \$-topics"),
    ("${clientid}/#", "u", "$share", r"client_id '\$share' would reach"),
    ("users/${peerhost}", "u", "c", r"unknown placeholder '\$\{peerhost\}'"),
    ("users/${}", "u", "c", "unknown placeholder"),
])
def test_topic_fill_refuses_values_that_would_widen_the_filter(pattern: str, username: str, client_id: str,
                                                                message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        topic_fill(pattern, username, client_id)
    assert str(info.value).startswith("topic_fill: ")


def test_topic_fill_allows_a_dollar_inside_the_pattern() -> None:
    assert topic_fill("users/%u", "$bob") == "users/$bob"


@pytest.mark.parametrize(("args", "message"), [
    ((b"users/%u",), "topic_fill: pattern must be a string, not bytes"),
    (("users/%u", 7), "topic_fill: username must be a string, not int"),
    (("users/%u", "u", None), "topic_fill: client_id must be a string, not NoneType"),
])
def test_topic_fill_argument_types(args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        topic_fill(*args)


def test_topic_fill_result_size_is_bounded() -> None:
    with pytest.raises(TooBig, match="topic_fill"):
        topic_fill("%u" * 1000, "u" * 1000)


AUTHZ_RULE = """
if topic_match(topic_fill("users/%u/#", client.username), topic):
    allow()
if action == "subscribe" and topic_words(topic)[0] == "public":
    allow()
deny("not yours")
"""


def test_topic_fill_in_an_authorize_rule() -> None:
    rule = compile_src(AUTHZ_RULE, AUTHZ)
    assert rule.run(authz("users/bob/x", "bob")) == ALLOW
    assert rule.run(authz("users/bob", "bob")) == ALLOW
    assert rule.run(authz("users/alice/x", "bob")) == Deny("not yours")
    assert rule.run(authz("public/news", "bob", action="subscribe")) == ALLOW
    assert rule.run(authz("public/news", "bob", action="publish")) == Deny("not yours")


@pytest.mark.parametrize("username", ["+", "#", "a/b", ""])
def test_an_unsafe_username_in_an_authorize_rule_is_denied_by_the_failure_policy(username: str) -> None:
    """The rule errors instead of matching users/+/#, and client.authorize's failure policy is deny.

    Result: no client gets the wider filter.
    """
    rule = compile_src(AUTHZ_RULE, AUTHZ)
    assert "ValueError: topic_fill:" in runtime_error(rule, authz("users/alice/x", username))
    outcome = Engine(RuleSet(MappingProxyType({AUTHZ: rule}))).decide(authz("users/alice/x", username))
    assert isinstance(outcome.decision, Deny)
    assert outcome.error is not None and "topic_fill" in outcome.error.message


# -- regex_match, regex_search ------------------------------------------------------------------


@pytest.mark.parametrize(("pattern", "text", "matches"), [
    (r"dev-\d+", "dev-42", True),
    (r"dev-\d+", "dev-42x", False),  # the whole text
    (r"dev-\d+", "xdev-42", False),
    (r"(?i)DEV-\d+", "dev-7", True),
    (r"[a-z0-9_]{3,16}", "alice_1", True),
    (r"[a-z0-9_]{3,16}", "al", False),
    (r"", "", True),
])
def test_regex_match_is_a_full_match(pattern: str, text: str, matches: bool) -> None:
    assert regex_match(pattern, text) is matches


@pytest.mark.parametrize(("pattern", "text", "found"), [
    (r"\d+", "ab 123 45", "123"),
    (r"\d+", "abc", None),
    (r"^sensor/(\w+)", "sensor/t1/x", "sensor/t1"),
    (r"é+", "caféé!", "éé"),
])
def test_regex_search_returns_the_first_match_text(pattern: str, text: str, found: str | None) -> None:
    assert regex_search(pattern, text) == found


def test_a_catastrophic_pattern_raises_instead_of_hanging() -> None:
    with pytest.raises(ValueError, match="regex_match: regex took too long"):
        regex_match(r"(x+x+)+y", "x" * 5000)
    with pytest.raises(ValueError, match="regex_search: regex took too long"):
        regex_search(r"(x+x+)+y", "x" * 5000)


def test_the_classic_nested_repeat_finishes() -> None:
    """(a+)+$ hangs Python's re; the regex package sees through it and answers at once.

    Result: a plain False, no hang and no error.
    """
    assert regex_match(r"(a+)+$", "a" * 40 + "b") is False
    assert regex_search(r"(a+)+$", "a" * 40 + "b") is None


@pytest.mark.parametrize(("pattern", "text", "message"), [
    ("a" * (MAX_REGEX_PATTERN + 1), "a", f"a pattern of 1001 characters is over the limit of {MAX_REGEX_PATTERN}"),
    ("a", "a" * (MAX_REGEX_TEXT + 1), f"a text of {MAX_REGEX_TEXT + 1} characters is over the limit"),
    ("(", "a", "invalid pattern '\\(': missing \\)"),
    ("a{3,2}", "a", "invalid pattern"),
    (r"(a{1000}){1000}", "a", "expand to about 1000000 items, over the limit of 10000"),
    (r"a{4000000000}", "a", "expand to about 4000000000 items"),
    (r"(?x)a b", "ab", "the inline flags x \\(verbose\\) and V1 are not allowed"),
    (r"(?V1)[[a]--[b]]", "a", "inline flags x"),
])
def test_regex_limits(pattern: str, text: str, message: str) -> None:
    for helper in (regex_match, regex_search):
        with pytest.raises(ValueError, match=message) as info:
            helper(pattern, text)
        assert str(info.value).startswith(helper.__name__ + ": ")


def test_regex_at_its_limits_still_works() -> None:
    assert regex_match("a" * MAX_REGEX_PATTERN, "a" * MAX_REGEX_PATTERN) is True
    assert regex_search("b", "a" * (MAX_REGEX_TEXT - 1) + "b") == "b"
    assert regex_match(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                       "123e4567-e89b-12d3-a456-426614174000") is True
    assert regex_match(r"a{1,100000}", "aaa") is True  # a range is not copied, so it is not counted


@pytest.mark.parametrize(("pattern", "at_least"), [
    (r"a{10000}", 10_000),
    (r"(a{100}){100}", 10_000),
    (r"(?:ab){5000}c", 10_001),
    (r"(a|bc){10}", 20),
    (r"a{50,}", 50),
    # escapes, sets and comments cannot hide a group from the estimate
    (r"(a{1000}\(){1000}", 1_000_000),
    (r"(a{1000}[(]){1000}", 1_000_000),
    (r"(a{1000}[]()]){1000}", 1_000_000),
    (r"(a{1000}[^]()]){1000}", 1_000_000),
    (r"(a{1000}[[:alpha:](]){1000}", 1_000_000),
    (r"(?#(){1000}(a{1000}){1000}", 1_000_000),
])
def test_regex_expansion_estimate_never_misses_a_copy(pattern: str, at_least: int) -> None:
    assert regex_expansion(pattern) >= at_least
    assert regex_expansion(pattern) > MAX_REGEX_EXPANSION or at_least <= MAX_REGEX_EXPANSION


def test_regex_patterns_are_compiled_once() -> None:
    helpers._compile.cache_clear()
    for _ in range(5):
        assert regex_match(r"id-\d{4}", "id-1234")
    info = helpers._compile.cache_info()
    assert (info.misses, info.hits) == (1, 4)


@pytest.mark.parametrize(("args", "error", "message"), [
    ((b"a", "a"), TypeError, "regex_match: pattern must be a string, not bytes"),
    (("a", b"a"), TypeError, r"regex_match: text must be a string, not bytes \(decode a payload first"),
    (("a", None), TypeError, "regex_match: text must be a string, not NoneType"),
])
def test_regex_argument_types(args: tuple[Any, ...], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        regex_match(*args)


def test_regex_in_rules() -> None:
    rule = compile_src(r"""
if not regex_match("[a-z][a-z0-9_]{2,31}", client.username):
    deny("bad username")
site = regex_search("^site-[0-9]+", client.id)
if site == None:
    deny("client id has no site")
allow()
""", AUTHN)
    assert rule.run(authn("alice", "pw", "site-12-dev")) == ALLOW
    assert rule.run(authn("Alice", "pw", "site-12-dev")) == Deny("bad username")
    assert rule.run(authn("alice", "pw", "dev")) == Deny("client id has no site")


def test_a_catastrophic_pattern_in_a_rule_is_a_runtime_error() -> None:
    rule = compile_src('if regex_match("(x+x+)+y", client.username):\n    allow()\ndeny()\n', AUTHN)
    assert "ValueError: regex_match: regex took too long" in runtime_error(rule, authn("x" * 5000, "pw"))


# -- base64, JSON, digests ----------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"\x00\xffbinary", "text", "é€😀", b"a" * 1000])
def test_base64_round_trip(data: str | bytes) -> None:
    raw = data.encode() if isinstance(data, str) else data
    encoded = b64encode(data)
    assert isinstance(encoded, str)
    assert encoded == base64.b64encode(raw).decode()
    assert b64decode(encoded) == raw
    assert b64decode(encoded.encode()) == raw


@pytest.mark.parametrize("bad", ["YWJj\n", "YWJ", "YW=j", "YWJj!", "YWJj ", "Y", "ÿÿÿÿ", "YWJj===", "YWJjZA=", "YR=="])
def test_b64decode_is_strict(bad: str) -> None:
    with pytest.raises(ValueError, match="b64decode: text is not"):
        b64decode(bad)


def test_base64_limits_and_types() -> None:
    with pytest.raises(TooBig, match="b64encode"):
        b64encode(b"x" * MAX_TEXT)
    assert len(b64encode(b"x" * (MAX_TEXT // 4 * 3))) == MAX_TEXT
    with pytest.raises(TooBig, match="b64decode"):
        b64decode("QUFB" * (MAX_TEXT // 3 + 1))
    with pytest.raises(TypeError, match="b64encode: data must be str or bytes, not int"):
        b64encode(1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="b64decode: text must be str or bytes, not list"):
        b64decode([])  # type: ignore[arg-type]


def test_json_encode() -> None:
    value = {"b": [1, 2.5, None, True, False], "a": ("x", "é"), "n": {"deep": {}}}
    text = json_encode(value)
    assert text == '{"b":[1,2.5,null,true,false],"a":["x","é"],"n":{"deep":{}}}'  # compact, in order
    assert json_decode(text) == {"b": [1, 2.5, None, True, False], "a": ["x", "é"], "n": {"deep": {}}}
    assert json_encode("a\"b\n") == '"a\\"b\\n"'
    assert json_encode(None) == "null"


def test_json_encode_of_read_only_event_and_data_values() -> None:
    frozen = MappingProxyType({"k": (1, MappingProxyType({"x": "y"}))})
    assert json_encode(frozen) == '{"k":[1,{"x":"y"}]}'


@pytest.mark.parametrize(("value", "error", "message"), [
    (b"payload", TypeError, r"bytes have no JSON form; decode them \(payload.decode\(\)\) or b64encode\(\) them"),
    ({"p": b"x"}, TypeError, "bytes have no JSON form"),
    ({1, 2}, TypeError, "a set has no JSON form"),
    (frozenset(), TypeError, "a set has no JSON form"),
    ({(1, 2): 3}, TypeError, "a dict key must be a string or a number, not tuple"),
    (float("nan"), ValueError, "nan has no JSON form"),
    ([float("inf")], ValueError, "inf has no JSON form"),
    (Client(), TypeError, "a Client has no JSON form"),
    (len, TypeError, "has no JSON form"),
])
def test_json_encode_refuses(value: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message) as info:
        json_encode(value)
    assert str(info.value).startswith("json_encode: ")


def test_json_encode_refuses_a_value_that_holds_itself() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="nested deeper than 100 levels"):
        json_encode(loop)


def test_json_encode_output_is_bounded_before_it_is_built() -> None:
    big = "a" * 200_000
    with pytest.raises(TooBig, match=f"over the limit of {MAX_TEXT} characters"):
        json_encode([big] * MAX_ITEMS)  # would be 20 GB of text
    with pytest.raises(TooBig):
        json_encode({str(i): "x" * 100 for i in range(5000)})
    assert len(json_encode("a" * (MAX_TEXT - 2))) == MAX_TEXT


def test_sha256_and_hmac_sha256_known_answers() -> None:
    assert sha256("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2
    assert sha256(b"abc") == sha256("abc")
    assert sha256("é") == hashlib.sha256("é".encode()).hexdigest()
    # RFC 4231, test case 2
    assert hmac_sha256("Jefe", "what do ya want for nothing?") == \
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    assert hmac_sha256(b"Jefe", b"what do ya want for nothing?") == hmac_sha256("Jefe", "what do ya want for nothing?")


def test_hmac_equal() -> None:
    assert hmac_equal("abc", "abc") is True
    assert hmac_equal("abc", "abd") is False
    assert hmac_equal("abc", "abcd") is False
    assert hmac_equal(b"abc", "abc") is True  # str is compared as UTF-8
    assert hmac_equal("é", "é".encode()) is True  # non-ASCII strings work (compare_digest alone refuses them)
    assert hmac_equal("", b"") is True


@pytest.mark.parametrize(("call", "message"), [
    (lambda: sha256(None), "sha256: data must be str or bytes, not NoneType"),
    (lambda: hmac_sha256(1, "m"), "hmac_sha256: key must be str or bytes, not int"),
    (lambda: hmac_sha256("k", 1.5), "hmac_sha256: message must be str or bytes, not float"),
    (lambda: hmac_equal("a", 1), "hmac_equal: b must be str or bytes, not int"),
    (lambda: hmac_equal([], "a"), "hmac_equal: a must be str or bytes, not list"),
])
def test_digest_argument_types(call: Callable[[], object], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        call()


def test_signed_json_payloads_in_a_publish_rule() -> None:
    """A device signs its JSON payload with a shared key; the rule checks the signature and re-publishes
    the body as JSON with the device and a base64 copy of the raw payload.

    Result: a good signature is rewritten, a bad one dropped.
    """
    rule = compile_src("""
sig = message.user_properties.get("sig", "")
if not hmac_equal(hmac_sha256("k3y", message.payload), sig):
    drop("bad signature")
body = json_decode(message.payload)
rewrite(payload=json_encode({"device": client.id, "body": body, "raw": b64encode(message.payload),
                             "digest": sha256(message.payload)}))
""", PUBLISH)
    payload = b'{"t":21.5}'
    good = hmac.new(b"k3y", payload, hashlib.sha256).hexdigest()
    decision = rule.run(publish(payload, user_properties={"sig": good}))
    assert isinstance(decision, Rewrite) and decision.payload is not None
    out = json.loads(decision.payload)
    assert out == {"device": "pub", "body": {"t": 21.5}, "raw": base64.b64encode(payload).decode(),
                   "digest": hashlib.sha256(payload).hexdigest()}
    assert b64decode(out["raw"]) == payload
    assert rule.run(publish(payload, user_properties={"sig": good[:-1] + "0"})).kind == "drop"  # type: ignore[union-attr]


def test_b64decode_and_json_errors_in_a_rule_are_runtime_errors() -> None:
    rule = compile_src('x = b64decode(client.username)\nallow()\n', AUTHN)
    assert "ValueError: b64decode: text is not valid base64" in runtime_error(rule, authn("not base64", "pw"))
    rule = compile_src('x = json_encode({"p": client})\nallow()\n', AUTHN)
    assert "TypeError: json_encode: a Client has no JSON form" in runtime_error(rule, authn("u", "pw"))


@pytest.mark.parametrize(("expr", "kind"), [
    ('bcrypt_check("pw", "' + REAL_HASHPW(b"x", bcrypt.gensalt(4)).decode() + '")', bool),
    ('hash_check("pw", "pw", "plain", salt_position="disable")', bool),
    ('topic_words("a/b")', tuple),
    ('topic_fill("u/%u", "x")', str),
    ('regex_search("a", "a")', str),
    ('b64decode("YQ==")', bytes),
    ('json_encode([1])', str),
    ('sha256("a")', str),
    ('hmac_equal("a", "a")', bool),
])
def test_helpers_return_plain_values_to_rules(expr: str, kind: type) -> None:
    rule = compile_src(f'if type({expr}) == "{kind.__name__}":\n    allow()\ndeny(type({expr}))\n', AUTHN)
    assert rule.run(authn("u", "pw")) == ALLOW


def test_pbkdf2_takes_every_mac_fun_emqx_offers() -> None:
    """EMQX's pbkdf2 mac_fun: md4, md5, ripemd160, sha, sha224, sha256, sha384, sha512. md4 and ripemd160
    depend on the OpenSSL build: where it has them they must check, where not the error must say why."""
    for algorithm in ("md4", "md5", "ripemd160", "sha", "sha224", "sha256", "sha384", "sha512"):
        name = "sha1" if algorithm == "sha" else algorithm
        try:
            stored = hashlib.pbkdf2_hmac(name, b"pw", b"salt", 100).hex()
        except ValueError:  # not in this OpenSSL
            with pytest.raises(ValueError, match="not available in this server's OpenSSL"):
                pbkdf2_check("pw", "00" * 16, "salt", 100, algorithm)
            continue
        assert pbkdf2_check("pw", stored, "salt", 100, algorithm) is True
        assert pbkdf2_check("pX", stored, "salt", 100, algorithm) is False
