"""jwt_decode (issue 13): a JWT as the MQTT password, HS*/RS*/ES*, keys from data files, exp/nbf with a
leeway, audience and issuer; refused tokens are an answer (None, why), wrong arguments a rule error.

Tokens are signed here with PyJWT and keys made with cryptography, so every check meets a real signature."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from hookrules.engine import Engine
from hookrules.events import Client, Event, JSONObject, frozen_map, json_view
from hookrules.lang.jwtdecode import MAX_CLAIMS_DEPTH, MAX_TOKEN, jwt_decode
from hookrules.ruleset import RuleSet, scan

from . import broker_calls as call
from .support import ROOT, ServerProcess, Stubs

EXAMPLES = ROOT / "examples"

SECRET = "s3cret-" + "0123456789abcdef" * 4  # 71 bytes: long enough for HS512 (RFC 7518 3.2)


def _pem_pair(private: Any) -> tuple[Any, str]:
    public = private.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


RSA_KEY, RSA_PUBLIC = _pem_pair(rsa.generate_private_key(public_exponent=65537, key_size=2048))
EC_KEY, EC_PUBLIC = _pem_pair(ec.generate_private_key(ec.SECP256R1()))
EC384_KEY, EC384_PUBLIC = _pem_pair(ec.generate_private_key(ec.SECP384R1()))


def token(claims: dict[str, Any] | None = None, alg: str = "HS256", key: Any = SECRET, **headers: Any) -> str:
    body = {"sub": "alice", "aud": "mqtt", "iss": "https://idp.example", "exp": int(time.time()) + 600,
            **(claims or {})}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=alg, headers=headers or None)


@pytest.mark.parametrize(("alg", "signing", "verifying"), [
    ("HS256", SECRET, SECRET), ("HS384", SECRET, SECRET), ("HS512", SECRET, SECRET),
    ("RS256", RSA_KEY, RSA_PUBLIC), ("RS384", RSA_KEY, RSA_PUBLIC), ("RS512", RSA_KEY, RSA_PUBLIC),
    ("ES256", EC_KEY, EC_PUBLIC), ("ES384", EC384_KEY, EC384_PUBLIC),
])
def test_every_algorithm_family_accepts_its_token_and_refuses_a_forged_one(alg: str, signing: Any, verifying: str) -> None:
    claims, why = jwt_decode(token(alg=alg, key=signing), verifying, [alg], audience="mqtt", issuer="https://idp.example")
    assert why is None and isinstance(claims, JSONObject) and claims["sub"] == "alice"
    good = token(alg=alg, key=signing)
    head, body, sig = good.split(".")
    forged_body = jwt.utils.base64url_encode(json.dumps({"sub": "root", "aud": "mqtt"}).encode()).decode()
    assert jwt_decode(f"{head}.{forged_body}.{sig}", verifying, [alg]) == (None, "jwt: the signature does not match")


@pytest.mark.parametrize(("tok", "kwargs", "why"), [
    (lambda: token({"exp": int(time.time()) - 60}), {}, "jwt: the token has expired"),
    (lambda: token({"nbf": int(time.time()) + 600}), {}, "jwt: the token is not valid yet (nbf or iat in the future)"),
    (lambda: token(), {"audience": "other"}, "jwt: the token is not for this audience"),
    (lambda: token(), {"issuer": "https://evil.example"}, "jwt: the token is from another issuer"),
    (lambda: token({"exp": None}), {"require": ["exp"]}, "jwt: the token has no 'exp' claim"),
    (lambda: token(alg="HS512"), {}, "jwt: the token's algorithm 'HS512' is not one of HS256"),
    (lambda: "not.a.token", {}, "jwt: not a JSON Web Token"),
    (lambda: "", {}, "jwt: not a JSON Web Token"),
    (lambda: "x" * (MAX_TOKEN + 1), {}, f"jwt: the token is over {MAX_TOKEN} characters"),
    (lambda: jwt.encode({"sub": "a"}, None, algorithm="none"), {}, "jwt: the token's algorithm 'none' is not one of HS256"),
])
def test_a_refused_token_is_an_answer_with_a_reason(tok: Callable[[], str], kwargs: dict[str, Any], why: str) -> None:
    assert jwt_decode(tok(), SECRET, ["HS256"], **kwargs) == (None, why)


def test_leeway_admits_a_token_just_expired() -> None:
    just = token({"exp": int(time.time()) - 5})
    assert jwt_decode(just, SECRET, ["HS256"])[1] == "jwt: the token has expired"
    assert jwt_decode(just, SECRET, ["HS256"], leeway=30)[1] is None


def test_algorithm_confusion_is_refused_at_the_arguments() -> None:
    """The classic attacks: a token signed HS256 with the RSA public key as the secret, and alg none."""
    with pytest.raises(ValueError, match="a PEM key cannot check HS"):
        jwt_decode(token(), RSA_PUBLIC, ["RS256", "HS256"])
    with pytest.raises(ValueError, match="name the algorithms"):
        jwt_decode(token(), SECRET)
    with pytest.raises(ValueError, match="not one of"):
        jwt_decode(token(), SECRET, ["none"])
    with pytest.raises(ValueError, match="need a PEM public key"):
        jwt_decode(token(), SECRET, ["RS256"])
    private_pem = RSA_KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()).decode()
    with pytest.raises(ValueError, match="PUBLIC key"):
        jwt_decode(token(alg="RS256", key=RSA_KEY), private_pem, ["RS256"])
    with pytest.raises(ValueError, match="cannot be read as an ES256 key"):
        jwt_decode(token(alg="ES256", key=EC_KEY), RSA_PUBLIC, ["ES256"])
    for bad in (1, None, ["x"], b"\xff"):
        with pytest.raises((TypeError, ValueError)):
            jwt_decode(token(), bad, ["HS256"])
    for short, algs in (("", ["HS256"]), ("x" * 31, ["HS256"]), ("x" * 63, ["HS256", "HS512"])):
        with pytest.raises(ValueError, match="needs at least"):
            jwt_decode(token(), short, algs)
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ValueError, match="RSA keys of 2048"):
        jwt_decode(token(alg="RS256", key=RSA_KEY), _pem_pair(small)[1], ["RS256"])


def test_a_jwk_set_from_a_data_file_picks_the_key_by_kid() -> None:
    public_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY.public_key()))
    ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(EC_KEY.public_key()))
    jwks = json_view({"keys": [{**public_jwk, "kid": "r1"}, {**ec_jwk, "kid": "e1"}]})  # as data.<file> holds it
    assert jwt_decode(token(alg="RS256", key=RSA_KEY, kid="r1"), jwks, ["RS256", "ES256"])[1] is None
    assert jwt_decode(token(alg="ES256", key=EC_KEY, kid="e1"), jwks, ["RS256", "ES256"])[1] is None
    assert jwt_decode(token(alg="RS256", key=RSA_KEY, kid="zz"), jwks, ["RS256"]) == \
        (None, "jwt: no key for a RS256 token with kid 'zz'")
    assert jwt_decode(token(alg="ES256", key=EC_KEY, kid="r1"), jwks, ["ES256"])[0] is None  # kid of another family


def test_claims_are_read_only_and_bounded() -> None:
    claims, _ = jwt_decode(token({"groups": ["a", "b"], "ext": {"room": 7}}), SECRET, ["HS256"])
    assert isinstance(claims, JSONObject) and list(claims["groups"]) == ["a", "b"]
    with pytest.raises(TypeError):
        claims["sub"] = "root"  # type: ignore[index]
    nested: Any = 1
    for _ in range(MAX_CLAIMS_DEPTH + 2):
        nested = [nested]
    assert jwt_decode(token({"deep": nested}), SECRET, ["HS256"]) == \
        (None, f"jwt: the claims are nested more than {MAX_CLAIMS_DEPTH} levels deep")
    very_deep = "[" * 5000 + "]" * 5000  # the JSON decoder's own recursion bound, not a crash
    raw = jwt.api_jws.PyJWS().encode(('{"a": ' + very_deep + "}").encode(), SECRET, algorithm="HS256")
    assert jwt_decode(raw, SECRET, ["HS256"])[0] is None


RULE = '''\
claims, why = jwt_decode(client.password, data.jwt_keys["hs"], algorithms=["HS256"], audience="mqtt")
if claims == None:
    deny(why)
if claims["sub"] != client.username:
    deny("the token is someone else's")
allow()
'''


def test_a_rule_authenticates_with_a_jwt_and_a_key_from_a_data_file(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    (rules / "data").mkdir(parents=True)
    (rules / "data" / "jwt_keys.json").write_text(json.dumps({"hs": SECRET}))
    (rules / "client.authenticate.star").write_text(RULE)
    ruleset, outcomes = scan(rules, RuleSet())
    assert not [o for o in outcomes if o.errors]
    engine = Engine(ruleset)

    def decide(username: str, password: str) -> Any:
        event = Event("client.authenticate", "emqx", Client(id="c", username=username, password=password),
                      frozen_map({"result": False}))
        return engine.decide(event).decision

    assert decide("alice", token()).kind == "allow"
    bob = decide("bob", token())
    assert bob.kind == "deny" and bob.reason == "the token is someone else's"
    expired = decide("alice", token({"exp": int(time.time()) - 60}))
    assert expired.kind == "deny" and expired.reason == "jwt: the token has expired"
    assert decide("alice", "plain-password").reason == "jwt: not a JSON Web Token"


def test_the_jwt_example_pack_answers_emqx_and_vernemq_from_a_real_server(
        start_server: Callable[..., ServerProcess], stubs: dict[str, Stubs], tmp_path: Path) -> None:
    """examples/jwt-auth served for real: EMQX over gRPC and VerneMQ over its webhook, with the pack's own tokens."""
    import shutil

    import yaml

    pack = tmp_path / "jwt-auth"
    shutil.copytree(EXAMPLES / "jwt-auth", pack)
    cases = yaml.safe_load((pack / "tests" / "connect.yaml").read_text())
    good = next(c["event"]["client"]["password"] for c in cases if c["name"].endswith("a device with its token"))
    expired = next(c["event"]["client"]["password"] for c in cases if c["name"].endswith("an expired token"))
    server = start_server(pack)
    v3 = stubs["v3"]
    assert call.emqx_authenticate(server, v3, "sensor-1", "sensor-1", good) is True
    assert call.emqx_authenticate(server, v3, "sensor-1", "sensor-1", expired) is False
    assert call.emqx_authenticate(server, v3, "sensor-2", "sensor-2", good) is False  # another user's token
    assert call.vernemq_register(server, "sensor-1", "sensor-1", good) == {"result": "ok"}
    assert call.vernemq_register(server, "sensor-1", "sensor-1", expired) == {"result": {"error": "jwt: the token has expired"}}


def test_a_key_set_from_a_data_file_is_serialized_once_and_a_rules_own_dict_every_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit: a JWK set (up to 64 KiB) was turned into JSON on every CONNECT before the cache lookup.
    A read-only data-file value cannot change, so once is enough; a dict a rule built may, so it is not kept."""
    from hookrules.lang import jwtdecode

    public_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY.public_key()))
    frozen = json_view({"keys": [{**public_jwk, "kid": "r1"}]})
    plain = {"keys": [{**public_jwk, "kid": "r1"}]}
    calls: list[int] = []
    real = jwtdecode._plain

    def counting(value: Any, depth: int) -> Any:
        if depth == 0:
            calls.append(1)
        return real(value, depth)

    tok = token(alg="RS256", key=RSA_KEY, kid="r1")
    monkeypatch.setattr(jwtdecode, "_plain", counting)
    for _ in range(3):
        assert jwt_decode(tok, frozen, ["RS256"])[1] is None
    assert len(calls) == 1
    for _ in range(2):
        assert jwt_decode(tok, plain, ["RS256"])[1] is None
    assert len(calls) == 3
