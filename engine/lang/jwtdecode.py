"""jwt_decode: a JSON Web Token as the password, checked with PyJWT (HS*, RS*, ES*).

After password hashes, a JWT in the password field is the most common MQTT authentication (EMQX's JWT
authenticator, mosquitto-go-auth's jwt backend). The rule names the algorithms it accepts (a token never
chooses its own: that is how `alg: none` and HS256-signed-with-the-public-key attacks work), and gets back

    claims, why = jwt_decode(client.password, data.jwt_keys["hs"], algorithms=["HS256"], audience="mqtt")

`claims` is a read-only dict (None when the token is refused) and `why` is None or a reason a rule can log
or deny with: rules have no try, and a refused token is an answer, not a rule error. Wrong arguments (a
key that is no key, an unknown algorithm) are rule errors, as with every helper: they are the author's.

Bounds, since this runs on the event loop: the token and key sizes are capped; parsed keys are cached (a
PEM or JWK is parsed once, not per CONNECT); RSA keys over 8192 bits are refused (verification cost grows
with the modulus). exp and nbf are checked against the server's clock with `leeway` seconds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..events import json_view
from .helperargs import str_arg

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
RSA_ALGORITHMS = ("RS256", "RS384", "RS512")
EC_ALGORITHMS = ("ES256", "ES384", "ES512")
ALGORITHMS = HMAC_ALGORITHMS + RSA_ALGORITHMS + EC_ALGORITHMS
MAX_TOKEN = 16 * 1024  # characters: an MQTT password may be 64 KiB, no honest token is near this
MAX_KEY = 64 * 1024  # characters of a PEM, a secret or a JWK set's JSON
MAX_RSA_BITS = 8192
MAX_LEEWAY = 86_400  # seconds
MAX_KEYS_CACHED = 64
MAX_CLAIMS_DEPTH = 32  # a token's claims are shallow; the event's own JSON has the same kind of bound
MIN_RSA_BITS = 2048  # RFC 7518 3.3
_HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
#: id -> (read-only JWK mapping, its JSON): a key set from a data file is serialized once, not per CONNECT
_JWK_OBJECTS: dict[int, tuple[Any, str]] = {}
_FAMILIES = {**{a: "HS" for a in HMAC_ALGORITHMS}, **{a: "RS" for a in RSA_ALGORITHMS},
             **{a: "ES" for a in EC_ALGORITHMS}}


def jwt_decode(token: object, key: object, algorithms: object = None, audience: object = None, issuer: object = None,
               leeway: object = 0, require: object = ()) -> tuple[Any, str | None]:
    """(claims, None) for a token signed with `key` by one of `algorithms` whose exp, nbf, aud and iss
    (as asked) hold; (None, reason) otherwise."""
    algs = _algorithms(algorithms)
    keys = _keys(key, algs)
    options = _options(audience, issuer, leeway, require)
    if not isinstance(token, (str, bytes)):
        raise TypeError(f"jwt_decode: token must be a string, not {type(token).__name__}")
    if isinstance(token, bytes):
        try:
            token = token.decode("ascii")
        except UnicodeDecodeError:
            return None, "jwt: the token is not text"
    if len(token) > MAX_TOKEN:
        return None, f"jwt: the token is over {MAX_TOKEN} characters"
    try:
        header = jwt.get_unverified_header(token)
    except (jwt.InvalidTokenError, ValueError, RecursionError):
        return None, "jwt: not a JSON Web Token"
    alg = header.get("alg")
    if alg not in algs:
        return None, f"jwt: the token's algorithm {str(alg)[:20]!r} is not one of {', '.join(algs)}"
    chosen = keys.get(alg, keys.get("HS")) if isinstance(keys, dict) else _by_kid(keys, header.get("kid"), alg)
    if chosen is None:
        return None, f"jwt: no key for a {alg} token" + (f" with kid {str(header.get('kid'))[:40]!r}"
                                                          if not isinstance(keys, dict) else "")
    try:
        claims = jwt.decode(token, chosen, algorithms=[alg], **options)
    except jwt.ExpiredSignatureError:
        return None, "jwt: the token has expired"
    except jwt.ImmatureSignatureError:
        return None, "jwt: the token is not valid yet (nbf or iat in the future)"
    except jwt.InvalidAudienceError:
        return None, "jwt: the token is not for this audience"
    except jwt.InvalidIssuerError:
        return None, "jwt: the token is from another issuer"
    except jwt.MissingRequiredClaimError as exc:
        return None, f"jwt: the token has no {str(exc.claim)[:40]!r} claim"
    except jwt.InvalidSignatureError:
        return None, "jwt: the signature does not match"
    except (jwt.PyJWTError, ValueError, TypeError, RecursionError) as exc:
        return None, f"jwt: the token is refused ({type(exc).__name__})"
    if not isinstance(claims, dict):
        return None, "jwt: the claims are not a JSON object"
    if _deeper_than(claims, MAX_CLAIMS_DEPTH):
        return None, f"jwt: the claims are nested more than {MAX_CLAIMS_DEPTH} levels deep"
    return json_view(claims), None


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether parsed JSON nests past `limit` (walked without recursion: the claims are the client's)."""
    stack = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(v, dict):
            stack.extend((x, depth + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, depth + 1) for x in v)
    return False


def _algorithms(value: object) -> tuple[str, ...]:
    if value is None:
        raise ValueError("jwt_decode: name the algorithms you accept, e.g. algorithms=[\"HS256\"]: a token must "
                         "never choose its own")
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise TypeError("jwt_decode: algorithms must be a non-empty list of names, e.g. [\"RS256\"]")
    out = []
    for name in value:
        if name not in _FAMILIES:
            raise ValueError(f"jwt_decode: algorithm {str(name)[:20]!r} is not one of {', '.join(ALGORITHMS)}")
        out.append(str(name))
    return tuple(dict.fromkeys(out))


def _options(audience: object, issuer: object, leeway: object, require: object) -> dict[str, Any]:
    options: dict[str, Any] = {"options": {"require": _names("require", require), "verify_aud": audience is not None,
                                           "enforce_minimum_key_length": True}}
    if audience is not None:
        if isinstance(audience, str):
            options["audience"] = audience
        elif isinstance(audience, Sequence) and all(isinstance(a, str) for a in audience):
            options["audience"] = list(audience)
        else:
            raise TypeError("jwt_decode: audience must be a string or a list of strings")
    if issuer is not None:
        options["issuer"] = str_arg("jwt_decode", "issuer", issuer)
    if type(leeway) not in (int, float) or not 0 <= leeway <= MAX_LEEWAY:  # type: ignore[operator]
        raise ValueError(f"jwt_decode: leeway must be a number of seconds from 0 to {MAX_LEEWAY}")
    options["leeway"] = leeway
    return options


def _names(arg: str, value: object) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"jwt_decode: {arg} must be a list of claim names, e.g. [\"exp\"]")
    return [str(v) for v in value]


def _keys(key: object, algs: tuple[str, ...]) -> dict[str, Any] | tuple[tuple[str | None, str, Any], ...]:
    """alg -> prepared key for a PEM ("HS" -> the secret); (kid, family, key) entries for a JWK or JWK set."""
    if isinstance(key, Mapping):
        known = _JWK_OBJECTS.get(id(key))
        if known is not None and known[0] is key:  # the same read-only data-file value: serialized once
            return _jwks(known[1])
        try:
            text = json.dumps(_plain(key, 0), sort_keys=True)
        except (TypeError, ValueError):
            raise TypeError("jwt_decode: a JWK must be a JSON object (from a data file)") from None
        if len(text) > MAX_KEY:
            raise ValueError(f"jwt_decode: the key is over {MAX_KEY} characters")
        if not isinstance(key, dict):  # a rule's own dict may change between calls; a data file's value cannot
            if len(_JWK_OBJECTS) >= MAX_KEYS_CACHED:
                _JWK_OBJECTS.pop(next(iter(_JWK_OBJECTS)))
            _JWK_OBJECTS[id(key)] = (key, text)  # holding the object keeps its id from being reused
        return _jwks(text)
    if isinstance(key, bytes):
        try:
            key = key.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("jwt_decode: a bytes key must be UTF-8 (a PEM or a secret)") from None
    if not isinstance(key, str):
        raise TypeError(f"jwt_decode: key must be a string (a secret or a PEM public key) or a JWK, not "
                        f"{type(key).__name__}")
    if len(key) > MAX_KEY:
        raise ValueError(f"jwt_decode: the key is over {MAX_KEY} characters")
    families = {_FAMILIES[a] for a in algs}
    if key.lstrip().startswith("-----BEGIN"):
        if "HS" in families:  # a public key used as an HMAC secret: the classic algorithm confusion
            raise ValueError("jwt_decode: a PEM key cannot check HS* tokens; list only RS*/ES* algorithms")
        prepared = {alg: _pem(key, alg) for alg in algs}
        usable = {alg: k for alg, k in prepared.items() if not isinstance(k, str)}
        if not usable:  # every algorithm refused it: say why (the first one's reason)
            raise ValueError(next(iter(prepared.values())))
        return usable
    if families - {"HS"}:
        raise ValueError("jwt_decode: RS* and ES* tokens need a PEM public key (-----BEGIN PUBLIC KEY-----)")
    need = max(_HMAC_MIN_BYTES[a] for a in algs)
    if len(key.encode("utf-8")) < need:  # RFC 7518 3.2: a shorter secret weakens the MAC (PyJWT warns per call)
        raise ValueError(f"jwt_decode: an HMAC secret for {', '.join(algs)} needs at least {need} bytes "
                         "(RFC 7518 section 3.2); use a longer random secret")
    return {"HS": key}


def _plain(value: Any, depth: int) -> Any:
    if depth > 10:
        raise ValueError("too deep")
    if isinstance(value, Mapping):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or value.__class__.__name__ == "JSONArray":
        return [_plain(v, depth + 1) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(type(value).__name__)


@lru_cache(maxsize=MAX_KEYS_CACHED)
def _pem(text: str, alg: str) -> Any:
    """The key prepared for `alg` (an ES384 key is no ES256 key: the curve is part of the algorithm), or a
    str saying why it cannot be."""
    family = _FAMILIES[alg]
    try:
        return _checked(jwt.get_algorithm_by_name(alg).prepare_key(text), family)
    except (jwt.InvalidKeyError, ValueError, TypeError) as exc:
        if str(exc).startswith("jwt_decode:"):
            return str(exc)
        return f"jwt_decode: the PEM key cannot be read as an {alg} key ({type(exc).__name__})"


def _checked(prepared: Any, family: str) -> Any:
    if isinstance(prepared, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise ValueError("jwt_decode: give the PUBLIC key; a private key does not belong in the rules")
    if family == "RS" and not isinstance(prepared, rsa.RSAPublicKey):
        raise ValueError("jwt_decode: RS* tokens need an RSA public key")
    if family == "ES" and not isinstance(prepared, ec.EllipticCurvePublicKey):
        raise ValueError("jwt_decode: ES* tokens need an EC public key")
    if family == "RS" and not MIN_RSA_BITS <= prepared.key_size <= MAX_RSA_BITS:
        raise ValueError(f"jwt_decode: RSA keys of {MIN_RSA_BITS} to {MAX_RSA_BITS} bits are accepted, not "
                         f"{prepared.key_size} (RFC 7518 3.3; a bigger one makes each check slow)")
    return prepared


@lru_cache(maxsize=MAX_KEYS_CACHED)
def _jwks(text: str) -> tuple[tuple[str | None, str, Any], ...]:
    """A JWK ({"kty": ...}) or a JWK set ({"keys": [...]}), as published by an identity provider."""
    raw = json.loads(text)
    entries = raw.get("keys") if isinstance(raw.get("keys"), list) else [raw]
    out = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise ValueError("jwt_decode: each JWK is a JSON object")
        family = {"oct": "HS", "RSA": "RS", "EC": "ES"}.get(str(entry.get("kty")))
        if family is None:
            raise ValueError(f"jwt_decode: a JWK's kty {str(entry.get('kty'))[:10]!r} is not oct, RSA or EC")
        try:
            prepared = jwt.PyJWK(entry, entry.get("alg")).key  # no alg: PyJWK infers it (kty, crv)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"jwt_decode: a JWK cannot be read ({type(exc).__name__})") from None
        if family != "HS":
            prepared = _checked(prepared, family)
        elif len(prepared) < _HMAC_MIN_BYTES["HS256"]:
            raise ValueError("jwt_decode: an oct JWK needs at least 32 bytes (RFC 7518 section 3.2)")
        kid = entry.get("kid")
        out.append((kid if isinstance(kid, str) else None, family, prepared))
    if not out:
        raise ValueError("jwt_decode: the JWK set has no keys")
    return tuple(out)


def _by_kid(keys: tuple[tuple[str | None, str, Any], ...], kid: object, alg: str) -> Any:
    family = _FAMILIES[alg]
    fitting = [k for k in keys if k[1] == family]
    if kid is not None:
        fitting = [k for k in fitting if k[0] == kid]
    elif len(fitting) > 1:  # a token without kid against a set of keys: which is meant is unknowable
        return None
    return fitting[0][2] if fitting else None
