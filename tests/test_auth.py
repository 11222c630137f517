"""Tests for gateway.auth: token verification, key loading, the dev key and JWKS."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from twisted.internet import defer, task
from twisted.python.failure import Failure

from gateway import auth
from gateway.auth import (
    DEV_KID,
    AuthError,
    Identity,
    TokenVerifier,
    build_verifier,
    default_dev_key_path,
    ensure_dev_key,
    load_keys,
    mint_token,
)
from gateway.config import AuthConfig, Config, ConfigError, KeyConfig

SECRET = b"s" * 16 + os.urandom(16).hex().encode()  # 48 bytes: enough for HS256 and HS384
SECRET64 = os.urandom(32).hex().encode()  # 64 bytes: enough for HS512


# --------------------------------------------------------------------------- helpers


def sync_to_thread(f, *args):
    """Run "in a thread" synchronously, so tests need no reactor."""
    return defer.maybeDeferred(f, *args)


def result_of(d: defer.Deferred) -> Any:
    """The result of an already-fired Deferred (successResultOf without trial)."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def failure_of(d: defer.Deferred) -> AuthError:
    """The AuthError of an already-failed Deferred."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "Deferred has not fired"
    assert isinstance(results[0], Failure), f"expected a failure, got {results[0]!r}"
    results[0].trap(AuthError)
    return results[0].value


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"sub": "alice", "iat": now, "exp": now + 600}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def make_verifier(
    keys: dict[str, tuple[str, Any]] | None = None, clock: task.Clock | None = None, **cfg: Any
) -> TokenVerifier:
    return TokenVerifier(
        AuthConfig(**cfg),
        keys=keys if keys is not None else {"k1": ("HS256", SECRET)},
        clock=clock or task.Clock(),
        fetch_jwks=lambda url: pytest.fail("unexpected JWKS fetch"),
        to_thread=sync_to_thread,
    )


def reason(verifier: TokenVerifier, token: Any) -> str:
    """Reason of a refusal, checked through both entry points and for token leaks."""
    with pytest.raises(AuthError) as info:
        verifier.verify_sync(token)
    exc = info.value
    deferred_exc = failure_of(verifier.verify(token))
    assert deferred_exc.reason == exc.reason
    if isinstance(token, str) and token:
        for e in (exc, deferred_exc):
            assert token not in str(e)
            assert token not in repr(e)
            assert e.__cause__ is None
    return exc.reason


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_signed_hs256(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    """Sign like an attacker would, bypassing PyJWT's refusal to use a PEM as HMAC key."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def pem_public(private: Any) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def pem_private(private: Any) -> bytes:
    return private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_keys() -> dict[str, ec.EllipticCurvePrivateKey]:
    return {
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "ES384": ec.generate_private_key(ec.SECP384R1()),
        "ES512": ec.generate_private_key(ec.SECP521R1()),
    }


# --------------------------------------------------------------------------- AuthError, Identity


def test_auth_error_reason_is_closed_vocabulary() -> None:
    assert AuthError("expired").reason == "expired"
    with pytest.raises(ValueError):
        AuthError("some free text")


def test_identity_fields_and_read_only_claims() -> None:
    verifier = make_verifier()
    c = claims(room="lobby")
    identity = verifier.verify_sync(mint_token(SECRET, "HS256", "k1", c))
    assert identity.player_id == "alice"
    assert identity.expires_at == float(c["exp"])
    assert identity.claims["room"] == "lobby"
    with pytest.raises(TypeError):
        identity.claims["sub"] = "mallory"  # type: ignore[index]
    assert hash(identity) == hash(identity)
    assert isinstance(identity, Identity)


def test_verify_fast_path_fires_synchronously() -> None:
    verifier = make_verifier()
    identity = result_of(verifier.verify(mint_token(SECRET, "HS256", "k1", claims())))
    assert identity.player_id == "alice"


# --------------------------------------------------------------------------- bad tokens


def test_missing_token() -> None:
    assert reason(make_verifier(), "") == "missing"


@pytest.mark.parametrize(
    "token",
    ["not-a-jwt", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.!!!.x", "x" * 8193, None, b"bytes.are.not.str"],
)
def test_malformed_tokens(token: Any) -> None:
    assert reason(make_verifier(), token) == "malformed"


def test_overlong_token_is_refused_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(token: str) -> None:
        raise AssertionError("parsed an over-long token")

    monkeypatch.setattr(auth.jwt, "get_unverified_header", boom)
    token = mint_token(SECRET, "HS256", "k1", claims(pad="p" * 9000))
    assert reason(make_verifier(), token) == "malformed"


@pytest.mark.parametrize("kid", [7, "", ["k1"]])
def test_unusable_kid_is_malformed(kid: Any) -> None:
    token = hand_signed_hs256({"alg": "HS256", "typ": "JWT", "kid": kid}, claims(), SECRET)
    assert reason(make_verifier(), token) == "malformed"


def test_expired_and_leeway() -> None:
    now = int(time.time())
    verifier = make_verifier(leeway=30)
    expired = mint_token(SECRET, "HS256", "k1", claims(iat=now - 1000, exp=now - 100))
    assert reason(verifier, expired) == "expired"
    within_leeway = mint_token(SECRET, "HS256", "k1", claims(iat=now - 1000, exp=now - 10))
    assert verifier.verify_sync(within_leeway).player_id == "alice"


def test_not_yet_valid() -> None:
    now = int(time.time())
    verifier = make_verifier(leeway=30)
    nbf = mint_token(SECRET, "HS256", "k1", claims(nbf=now + 300))
    assert reason(verifier, nbf) == "not_yet_valid"
    future_iat = mint_token(SECRET, "HS256", "k1", claims(iat=now + 300))
    assert reason(verifier, future_iat) == "not_yet_valid"


def test_bad_signature() -> None:
    other = os.urandom(32).hex().encode()
    assert reason(make_verifier(), mint_token(other, "HS256", "k1", claims())) == "bad_signature"


@pytest.mark.parametrize("claim", ["sub", "exp", "iat"])
def test_missing_default_required_claims(claim: str) -> None:
    token = mint_token(SECRET, "HS256", "k1", claims(**{claim: None}))
    assert reason(make_verifier(), token) == "missing_claim"


def test_missing_claim_message_names_the_claim() -> None:
    token = mint_token(SECRET, "HS256", "k1", claims(exp=None))
    with pytest.raises(AuthError, match="'exp'"):
        make_verifier().verify_sync(token)


def test_extra_required_claims_are_enforced() -> None:
    verifier = make_verifier(required_claims=("sub", "exp", "iat", "jti"))
    assert reason(verifier, mint_token(SECRET, "HS256", "k1", claims())) == "missing_claim"
    assert verifier.verify_sync(mint_token(SECRET, "HS256", "k1", claims(jti="j1")))


def test_audience() -> None:
    verifier = make_verifier(audience="game")
    assert verifier.verify_sync(mint_token(SECRET, "HS256", "k1", claims(aud="game")))
    assert verifier.verify_sync(mint_token(SECRET, "HS256", "k1", claims(aud=["x", "game"])))
    assert reason(verifier, mint_token(SECRET, "HS256", "k1", claims(aud="other"))) == (
        "bad_audience"
    )
    assert reason(verifier, mint_token(SECRET, "HS256", "k1", claims())) == "missing_claim"


def test_issuer() -> None:
    verifier = make_verifier(issuer="backend")
    assert verifier.verify_sync(mint_token(SECRET, "HS256", "k1", claims(iss="backend")))
    assert reason(verifier, mint_token(SECRET, "HS256", "k1", claims(iss="evil"))) == "bad_issuer"
    assert reason(verifier, mint_token(SECRET, "HS256", "k1", claims())) == "missing_claim"


@pytest.mark.parametrize("sub", ["", 123, ["alice"], "x" * 129])
def test_bad_subject(sub: Any) -> None:
    assert reason(make_verifier(), mint_token(SECRET, "HS256", "k1", claims(sub=sub))) == (
        "bad_subject"
    )


def test_subject_of_128_chars_is_accepted() -> None:
    sub = "p" * 128
    assert make_verifier().verify_sync(mint_token(SECRET, "HS256", "k1", claims(sub=sub)))


def test_subject_required_even_if_not_in_required_claims() -> None:
    verifier = make_verifier(required_claims=("exp",))
    assert reason(verifier, mint_token(SECRET, "HS256", "k1", claims(sub=None))) == "bad_subject"


def test_without_required_exp_identity_never_expires() -> None:
    verifier = make_verifier(required_claims=("sub",))
    identity = verifier.verify_sync(mint_token(SECRET, "HS256", "k1", claims(exp=None)))
    assert identity.expires_at == float("inf")


# --------------------------------------------------------------------------- algorithms


def test_alg_none_is_rejected() -> None:
    token = jwt.encode(claims(), None, algorithm="none", headers={"kid": "k1"})
    assert reason(make_verifier(), token) == "bad_algorithm"
    # Even when it is the only key and the token names no kid.
    kidless = jwt.encode(claims(), None, algorithm="none")
    assert reason(make_verifier(), kidless) == "bad_algorithm"


def test_header_alg_other_than_the_keys_is_rejected() -> None:
    # Same secret, another HMAC algorithm: still refused, the key is bound to HS256.
    token = mint_token(SECRET, "HS384", "k1", claims())
    assert reason(make_verifier(), token) == "bad_algorithm"


def test_rsa_public_key_as_hmac_secret_is_rejected(rsa_key: rsa.RSAPrivateKey) -> None:
    public_pem = pem_public(rsa_key)
    verifier = make_verifier(keys={"rsa": ("RS256", rsa_key.public_key())})
    forged = hand_signed_hs256({"alg": "HS256", "typ": "JWT", "kid": "rsa"}, claims(), public_pem)
    assert reason(verifier, forged) == "bad_algorithm"
    # The same forgery against a verifier whose key material is the PEM text itself.
    verifier = make_verifier(keys={"rsa": ("RS256", public_pem)})
    assert reason(verifier, forged) == "bad_algorithm"


def test_pem_configured_as_hmac_secret_is_never_used(rsa_key: rsa.RSAPrivateKey) -> None:
    public_pem = pem_public(rsa_key)
    verifier = make_verifier(keys={"k": ("HS256", public_pem)})
    forged = hand_signed_hs256({"alg": "HS256", "typ": "JWT", "kid": "k"}, claims(), public_pem)
    assert reason(verifier, forged) == "bad_algorithm"


def test_rs_key_with_ps_token_is_rejected(rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = make_verifier(keys={"rsa": ("RS256", rsa_key.public_key())})
    token = mint_token(rsa_key, "PS256", "rsa", claims())
    assert reason(verifier, token) == "bad_algorithm"


def test_algorithm_outside_config_algorithms_is_rejected() -> None:
    verifier = make_verifier(algorithms=("RS256",))
    assert reason(verifier, mint_token(SECRET, "HS256", "k1", claims())) == "bad_algorithm"


@pytest.mark.parametrize("algorithm", ["HS256", "HS384", "HS512"])
def test_hmac_algorithms_accept_good_tokens(algorithm: str) -> None:
    verifier = make_verifier(keys={"h": (algorithm, SECRET64)})
    token = mint_token(SECRET64, algorithm, "h", claims())
    assert verifier.verify_sync(token).player_id == "alice"


@pytest.mark.parametrize("algorithm", ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"])
def test_rsa_algorithms_accept_good_tokens(rsa_key: rsa.RSAPrivateKey, algorithm: str) -> None:
    verifier = make_verifier(keys={"r": (algorithm, rsa_key.public_key())})
    assert verifier.verify_sync(mint_token(rsa_key, algorithm, "r", claims())).player_id == "alice"


@pytest.mark.parametrize("algorithm", ["ES256", "ES384", "ES512"])
def test_ec_algorithms_accept_good_tokens(ec_keys: dict[str, Any], algorithm: str) -> None:
    private = ec_keys[algorithm]
    verifier = make_verifier(keys={"e": (algorithm, private.public_key())})
    assert verifier.verify_sync(mint_token(private, algorithm, "e", claims())).player_id == "alice"


@pytest.mark.parametrize(
    "generate", [ed25519.Ed25519PrivateKey.generate, ed448.Ed448PrivateKey.generate]
)
def test_eddsa_accepts_good_tokens(generate: Any) -> None:
    private = generate()
    verifier = make_verifier(keys={"ed": ("EdDSA", private.public_key())})
    assert verifier.verify_sync(mint_token(private, "EdDSA", "ed", claims())).player_id == "alice"


def test_asymmetric_bad_signature(rsa_key: rsa.RSAPrivateKey) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    verifier = make_verifier(keys={"r": ("RS256", rsa_key.public_key())})
    assert reason(verifier, mint_token(other, "RS256", "r", claims())) == "bad_signature"


# --------------------------------------------------------------------------- kid handling


def test_unknown_kid() -> None:
    assert reason(make_verifier(), mint_token(SECRET, "HS256", "nope", claims())) == "unknown_kid"


def test_kidless_token_accepted_with_exactly_one_static_key() -> None:
    token = mint_token(SECRET, "HS256", "", claims())
    assert "kid" not in jwt.get_unverified_header(token)
    assert make_verifier().verify_sync(token).player_id == "alice"


def test_kidless_token_refused_with_several_keys() -> None:
    verifier = make_verifier(keys={"a": ("HS256", SECRET), "b": ("HS256", SECRET64)})
    assert reason(verifier, mint_token(SECRET, "HS256", "", claims())) == "unknown_kid"
    assert verifier.verify_sync(mint_token(SECRET64, "HS256", "b", claims()))


def test_kid_selects_the_key() -> None:
    verifier = make_verifier(keys={"a": ("HS256", SECRET), "b": ("HS256", SECRET64)})
    assert reason(verifier, mint_token(SECRET, "HS256", "b", claims())) == "bad_signature"
    assert verifier.verify_sync(mint_token(SECRET, "HS256", "a", claims()))


# --------------------------------------------------------------------------- load_keys


def key_config(**kw: Any) -> AuthConfig:
    return AuthConfig(keys=(KeyConfig(**kw),))


def test_load_keys_reads_secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTGW_TEST_SECRET", SECRET.decode())
    keys = load_keys(key_config(kid="main", secret_env="RTGW_TEST_SECRET"))
    assert keys == {"main": ("HS256", SECRET)}


def test_load_keys_reads_secret_file(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(SECRET + b"\n")
    assert load_keys(key_config(kid="f", secret_file=str(path))) == {"f": ("HS256", SECRET)}


def test_verifier_built_from_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTGW_TEST_SECRET", SECRET.decode())
    verifier = TokenVerifier(
        AuthConfig(keys=(KeyConfig(kid="main", secret_env="RTGW_TEST_SECRET"),)),
        clock=task.Clock(),
    )
    assert verifier.verify_sync(mint_token(SECRET, "HS256", "main", claims()))
    assert not verifier.is_dev


def test_missing_secret_env_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RTGW_TEST_SECRET", raising=False)
    with pytest.raises(ConfigError) as info:
        load_keys(key_config(kid="main", secret_env="RTGW_TEST_SECRET"))
    assert info.value.key == "auth.keys[0].secret_env"


@pytest.mark.parametrize(
    ("algorithm", "length", "minimum"),
    [("HS256", 31, 32), ("HS384", 47, 32), ("HS512", 63, 32), ("HS256", 47, 48)],
)
def test_min_hmac_key_length(
    monkeypatch: pytest.MonkeyPatch, algorithm: str, length: int, minimum: int
) -> None:
    monkeypatch.setenv("RTGW_TEST_SECRET", "x" * length)
    config = AuthConfig(
        keys=(KeyConfig(kid="k", algorithm=algorithm, secret_env="RTGW_TEST_SECRET"),),
        min_hmac_key_bytes=minimum,
    )
    with pytest.raises(ConfigError) as info:
        load_keys(config)
    assert info.value.key == "auth.keys[0].secret_env"
    monkeypatch.setenv("RTGW_TEST_SECRET", "x" * (length + 1))
    assert load_keys(config)["k"][0] == algorithm


def test_short_secret_file_names_secret_file(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"short")
    with pytest.raises(ConfigError) as info:
        load_keys(AuthConfig(keys=(KeyConfig(kid="a"), KeyConfig(kid="b", secret_file=str(path)))))
    # The first key has no source at all; it is reported first.
    assert info.value.key.startswith("auth.keys[0]")
    with pytest.raises(ConfigError) as info:
        load_keys(key_config(kid="b", secret_file=str(path)))
    assert info.value.key == "auth.keys[0].secret_file"


def test_pem_as_hmac_secret_is_a_config_error(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = tmp_path / "oops.pem"
    path.write_bytes(pem_public(rsa_key))
    with pytest.raises(ConfigError) as info:
        load_keys(key_config(kid="k", secret_file=str(path)))
    assert info.value.key == "auth.keys[0].secret_file"


def test_load_public_keys(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_keys: dict[str, Any]
) -> None:
    ed = ed25519.Ed25519PrivateKey.generate()
    files = {}
    for name, private in [("rsa", rsa_key), ("ec", ec_keys["ES384"]), ("ed", ed)]:
        files[name] = tmp_path / f"{name}.pem"
        files[name].write_bytes(pem_public(private))
    config = AuthConfig(
        keys=(
            KeyConfig(kid="r", algorithm="PS256", public_key_file=str(files["rsa"])),
            KeyConfig(kid="e", algorithm="ES384", public_key_file=str(files["ec"])),
            KeyConfig(kid="d", algorithm="EdDSA", public_key_file=str(files["ed"])),
        )
    )
    verifier = TokenVerifier(config, clock=task.Clock())
    for kid, alg, private in [
        ("r", "PS256", rsa_key),
        ("e", "ES384", ec_keys["ES384"]),
        ("d", "EdDSA", ed),
    ]:
        assert verifier.verify_sync(mint_token(private, alg, kid, claims())).player_id == "alice"


@pytest.mark.parametrize(
    ("algorithm", "make_key", "fragment"),
    [
        ("RS256", lambda: ec.generate_private_key(ec.SECP256R1()), "RSA"),
        ("ES384", lambda: ec.generate_private_key(ec.SECP256R1()), "secp384r1"),
        ("EdDSA", lambda: ec.generate_private_key(ec.SECP256R1()), "Ed25519"),
        ("RS256", lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024), "2048"),
    ],
)
def test_public_key_of_wrong_family_or_size(
    tmp_path: Path, algorithm: str, make_key: Any, fragment: str
) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(pem_public(make_key()))
    with pytest.raises(ConfigError, match=fragment) as info:
        load_keys(key_config(kid="k", algorithm=algorithm, public_key_file=str(path)))
    assert info.value.key == "auth.keys[0].public_key_file"


def test_private_key_in_public_key_file_is_refused(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    path = tmp_path / "private.pem"
    path.write_bytes(pem_private(rsa_key))
    with pytest.raises(ConfigError, match="private key") as info:
        load_keys(key_config(kid="k", algorithm="RS256", public_key_file=str(path)))
    assert info.value.key == "auth.keys[0].public_key_file"


def test_unreadable_or_garbage_public_key_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_keys(key_config(kid="k", algorithm="RS256", public_key_file=str(tmp_path / "nope")))
    assert info.value.key == "auth.keys[0].public_key_file"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello")
    with pytest.raises(ConfigError, match="PEM public key"):
        load_keys(key_config(kid="k", algorithm="RS256", public_key_file=str(garbage)))


def test_key_algorithm_must_be_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTGW_TEST_SECRET", SECRET.decode())
    config = AuthConfig(
        keys=(KeyConfig(kid="k", secret_env="RTGW_TEST_SECRET"),), algorithms=("RS256",)
    )
    with pytest.raises(ConfigError) as info:
        load_keys(config)
    assert info.value.key == "auth.keys[0].algorithm"


# --------------------------------------------------------------------------- dev key


def test_default_dev_key_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RTGATEWAY_DEV_KEY_FILE", str(tmp_path / "explicit.key"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_dev_key_path() == tmp_path / "explicit.key"
    monkeypatch.delenv("RTGATEWAY_DEV_KEY_FILE")
    assert default_dev_key_path() == tmp_path / "state" / "rtgateway" / "dev-signing.key"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = tmp_path / "home" / ".local" / "state" / "rtgateway" / "dev-signing.key"
    assert default_dev_key_path() == expected


def test_dev_key_created_once_with_private_modes(tmp_path: Path) -> None:
    path = tmp_path / "state" / "rtgateway" / "dev-signing.key"
    secret, created = ensure_dev_key(path)
    assert created
    assert len(secret) == 128
    bytes.fromhex(secret.decode())  # 64 random bytes, hex-encoded
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_bytes().strip() == secret
    again, created_again = ensure_dev_key(path)
    assert (again, created_again) == (secret, False)
    assert [p.name for p in path.parent.iterdir()] == ["dev-signing.key"]  # no temp left over


def test_dev_keys_differ_between_files(tmp_path: Path) -> None:
    assert ensure_dev_key(tmp_path / "a")[0] != ensure_dev_key(tmp_path / "b")[0]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_dev_key_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "dev.key"
    path.write_bytes(b"a" * 64)
    path.chmod(mode)
    with pytest.raises(ConfigError) as info:
        ensure_dev_key(path)
    assert info.value.key == "auth.dev_key_file"
    assert path.read_bytes() == b"a" * 64  # left alone, not replaced


def test_existing_private_dev_key_is_reused(tmp_path: Path) -> None:
    path = tmp_path / "dev.key"
    path.write_bytes(b"b" * 40 + b"\n")
    path.chmod(0o600)
    assert ensure_dev_key(path) == (b"b" * 40, False)


def test_short_dev_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dev.key"
    path.write_bytes(b"short")
    path.chmod(0o600)
    with pytest.raises(ConfigError) as info:
        ensure_dev_key(path)
    assert info.value.key == "auth.dev_key_file"


def test_dev_key_lost_race_reads_the_winner(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "dev.key"
    real_link = os.link

    def link_after_rival(src: str, dst: str) -> None:
        rival = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(rival, b"r" * 64)
        os.close(rival)
        real_link(src, dst)

    monkeypatch.setattr(auth.os, "link", link_after_rival)
    assert ensure_dev_key(path) == (b"r" * 64, False)
    assert [p.name for p in tmp_path.iterdir()] == ["dev.key"]


# --------------------------------------------------------------------------- build_verifier


def test_build_verifier_dev_mode(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RTGATEWAY_DEV_KEY_FILE", str(tmp_path / "dev.key"))
    verifier = build_verifier(Config(), clock=task.Clock())
    assert verifier.is_dev
    secret, created = ensure_dev_key(tmp_path / "dev.key")
    assert not created
    token = mint_token(secret, "HS256", DEV_KID, claims())
    assert verifier.verify_sync(token).player_id == "alice"
    assert verifier.verify_sync(mint_token(secret, "HS256", "", claims()))  # the only key
    # A second start reuses the key: tokens survive a daemon restart.
    assert build_verifier(Config(), clock=task.Clock()).verify_sync(token)


def test_build_verifier_dev_key_file_option(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RTGATEWAY_DEV_KEY_FILE", str(tmp_path / "ignored.key"))
    config = Config(auth=AuthConfig(dev_key_file=str(tmp_path / "chosen.key")))
    verifier = build_verifier(config, clock=task.Clock())
    assert (tmp_path / "chosen.key").exists()
    assert not (tmp_path / "ignored.key").exists()
    secret = (tmp_path / "chosen.key").read_bytes().strip()
    assert verifier.verify_sync(mint_token(secret, "HS256", DEV_KID, claims()))


def test_build_verifier_dev_mode_needs_hs256(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RTGATEWAY_DEV_KEY_FILE", str(tmp_path / "dev.key"))
    with pytest.raises(ConfigError) as info:
        build_verifier(Config(auth=AuthConfig(algorithms=("RS256",))), clock=task.Clock())
    assert info.value.key == "auth.algorithms"


def test_build_verifier_with_keys_is_not_dev(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RTGATEWAY_DEV_KEY_FILE", str(tmp_path / "dev.key"))
    monkeypatch.setenv("RTGW_TEST_SECRET", SECRET.decode())
    config = Config(auth=AuthConfig(keys=(KeyConfig(kid="m", secret_env="RTGW_TEST_SECRET"),)))
    verifier = build_verifier(config, clock=task.Clock())
    assert not verifier.is_dev
    assert not (tmp_path / "dev.key").exists()
    assert reason(verifier, mint_token(SECRET, "HS256", DEV_KID, claims())) == "unknown_kid"


# --------------------------------------------------------------------------- JWKS


def jwk_for(private: Any, kid: str, alg: str | None) -> dict[str, Any]:
    if isinstance(private, rsa.RSAPrivateKey):
        data = jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    elif isinstance(private, ec.EllipticCurvePrivateKey):
        data = jwt.algorithms.ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    else:
        data = jwt.algorithms.OKPAlgorithm.to_jwk(private.public_key(), as_dict=True)
    data["kid"] = kid
    if alg is not None:
        data["alg"] = alg
    return data


class FakeJWKS:
    """A JWKS endpoint: counts fetches, can be changed or made to fail."""

    def __init__(self, *jwks: dict[str, Any]) -> None:
        self.keys = list(jwks)
        self.calls: list[str] = []
        self.error: Exception | None = None

    def __call__(self, url: str) -> dict[str, Any]:
        self.calls.append(url)
        if self.error is not None:
            raise self.error
        return {"keys": list(self.keys)}


URL = "https://idp.example/.well-known/jwks.json"


def jwks_verifier(
    fetch: FakeJWKS, clock: task.Clock, to_thread: Any = sync_to_thread, **cfg: Any
) -> TokenVerifier:
    cfg.setdefault("jwks_cache_seconds", 300.0)
    cfg.setdefault("jwks_refresh_cooldown", 30.0)
    return TokenVerifier(
        AuthConfig(jwks_url=URL, **cfg), clock=clock, fetch_jwks=fetch, to_thread=to_thread
    )


@pytest.fixture()
def ec_a() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture()
def ec_b() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_jwks_fetch_runs_through_to_thread(ec_a: Any) -> None:
    fetch = FakeJWKS(jwk_for(ec_a, "a", "ES256"))
    threaded: list[Any] = []

    def to_thread(f, *args):
        threaded.append(f)
        return sync_to_thread(f, *args)

    verifier = jwks_verifier(fetch, task.Clock(), to_thread=to_thread)
    token = mint_token(ec_a, "ES256", "a", claims())
    assert result_of(verifier.verify(token)).player_id == "alice"
    assert fetch.calls == [URL]
    assert len(threaded) == 1


def test_jwks_cache(ec_a: Any) -> None:
    fetch = FakeJWKS(jwk_for(ec_a, "a", "ES256"))
    clock = task.Clock()
    verifier = jwks_verifier(fetch, clock)
    token = mint_token(ec_a, "ES256", "a", claims())
    with pytest.raises(AuthError) as info:
        verifier.verify_sync(token)  # nothing cached yet
    assert info.value.reason == "unknown_kid"
    assert fetch.calls == []
    result_of(verifier.verify(token))
    clock.advance(299)
    result_of(verifier.verify(token))
    assert verifier.verify_sync(token).player_id == "alice"  # served from the cache
    assert len(fetch.calls) == 1
    clock.advance(2)  # cache expired
    with pytest.raises(AuthError):
        verifier.verify_sync(token)
    result_of(verifier.verify(token))
    assert len(fetch.calls) == 2


def test_jwks_rotation_drops_removed_keys(ec_a: Any, ec_b: Any) -> None:
    fetch = FakeJWKS(jwk_for(ec_a, "a", "ES256"))
    clock = task.Clock()
    verifier = jwks_verifier(fetch, clock)
    token_a = mint_token(ec_a, "ES256", "a", claims())
    result_of(verifier.verify(token_a))
    fetch.keys = [jwk_for(ec_b, "b", "ES256")]
    clock.advance(301)
    result_of(verifier.verify(mint_token(ec_b, "ES256", "b", claims())))
    assert failure_of(verifier.verify(token_a)).reason == "unknown_kid"


def test_unknown_kid_refreshes_then_cooldown(ec_a: Any, ec_b: Any) -> None:
    fetch = FakeJWKS(jwk_for(ec_a, "a", "ES256"))
    clock = task.Clock()
    verifier = jwks_verifier(fetch, clock, jwks_refresh_cooldown=30.0)
    result_of(verifier.verify(mint_token(ec_a, "ES256", "a", claims())))
    assert len(fetch.calls) == 1

    # A kid we have never seen, within the cooldown: no fetch, refused.
    token_b = mint_token(ec_b, "ES256", "b", claims())
    clock.advance(10)
    fetch.keys.append(jwk_for(ec_b, "b", "ES256"))
    assert failure_of(verifier.verify(token_b)).reason == "unknown_kid"
    assert len(fetch.calls) == 1

    # After the cooldown the unknown kid triggers a refresh and is found.
    clock.advance(20)
    assert result_of(verifier.verify(token_b)).player_id == "alice"
    assert len(fetch.calls) == 2

    # Invented kids cannot make us fetch more than once per cooldown.
    for i in range(5):
        clock.advance(5)
        bogus = mint_token(ec_b, "ES256", f"bogus{i}", claims())
        assert failure_of(verifier.verify(bogus)).reason == "unknown_kid"
    assert len(fetch.calls) == 2
    clock.advance(5)
    assert failure_of(verifier.verify(mint_token(ec_b, "ES256", "x", claims()))).reason == (
        "unknown_kid"
    )
    assert len(fetch.calls) == 3


def test_concurrent_verifications_share_one_fetch(ec_a: Any) -> None:
    fetch = FakeJWKS(jwk_for(ec_a, "a", "ES256"))
    pending: list[tuple[defer.Deferred, Any]] = []

    def to_thread(f, *args):
        d: defer.Deferred = defer.Deferred()
        pending.append((d, f))
        return d

    verifier = jwks_verifier(fetch, task.Clock(), to_thread=to_thread)
    token = mint_token(ec_a, "ES256", "a", claims())
    bad = mint_token(ec_a, "ES256", "zzz", claims())
    results: list[Any] = []
    for t in (token, token, bad):
        verifier.verify(t).addBoth(results.append)
    assert len(pending) == 1
    assert results == []
    d, f = pending[0]
    d.callback(f())
    assert [r.player_id for r in results[:2]] == ["alice", "alice"]
    assert isinstance(results[2], Failure)
    assert results[2].value.reason == "unknown_kid"
    assert len(fetch.calls) == 1


def test_jwks_failure_without_cache(ec_a: Any) -> None:
    fetch = FakeJWKS(jwk_for(ec_a, "a", "ES256"))
    fetch.error = OSError("connection refused")
    clock = task.Clock()
    verifier = jwks_verifier(fetch, clock)
    token = mint_token(ec_a, "ES256", "a", claims())
    assert failure_of(verifier.verify(token)).reason == "jwks_unavailable"
    # Within the cooldown: no new attempt, still unavailable (not "unknown_kid").
    assert failure_of(verifier.verify(token)).reason == "jwks_unavailable"
    assert len(fetch.calls) == 1
    fetch.error = None
    clock.advance(30)
    assert result_of(verifier.verify(token)).player_id == "alice"
    assert len(fetch.calls) == 2


def test_jwks_failure_keeps_serving_cached_keys(ec_a: Any, ec_b: Any) -> None:
    fetch = FakeJWKS(jwk_for(ec_a, "a", "ES256"))
    clock = task.Clock()
    verifier = jwks_verifier(fetch, clock)
    token = mint_token(ec_a, "ES256", "a", claims())
    result_of(verifier.verify(token))
    clock.advance(301)  # cache expired
    fetch.error = TimeoutError("timed out")
    assert result_of(verifier.verify(token)).player_id == "alice"
    assert len(fetch.calls) == 2
    unknown = mint_token(ec_b, "ES256", "b", claims())
    assert failure_of(verifier.verify(unknown)).reason == "jwks_unavailable"
    clock.advance(10)  # in cooldown: the stale key is used without a new attempt
    assert result_of(verifier.verify(token)).player_id == "alice"
    assert len(fetch.calls) == 2


def test_to_thread_raising_is_jwks_unavailable(ec_a: Any) -> None:
    def to_thread(f, *args):
        raise RuntimeError("thread pool stopped")

    verifier = jwks_verifier(FakeJWKS(), task.Clock(), to_thread=to_thread)
    token = mint_token(ec_a, "ES256", "a", claims())
    assert failure_of(verifier.verify(token)).reason == "jwks_unavailable"


@pytest.mark.parametrize(
    "document",
    [{}, {"keys": "nope"}, {"keys": []}, ["not", "a", "dict"]],
)
def test_unusable_jwks_document_is_a_failure(ec_a: Any, document: Any) -> None:
    verifier = jwks_verifier(lambda url: document, task.Clock())  # type: ignore[arg-type]
    token = mint_token(ec_a, "ES256", "a", claims())
    assert failure_of(verifier.verify(token)).reason == "jwks_unavailable"


def test_jwk_without_alg_is_ignored(ec_a: Any, ec_b: Any) -> None:
    fetch = FakeJWKS(jwk_for(ec_a, "a", None), jwk_for(ec_b, "b", "ES256"))
    verifier = jwks_verifier(fetch, task.Clock())
    assert result_of(verifier.verify(mint_token(ec_b, "ES256", "b", claims())))
    token_a = mint_token(ec_a, "ES256", "a", claims())
    assert failure_of(verifier.verify(token_a)).reason == "unknown_kid"


def test_jwk_alg_must_be_allowed_and_match_the_key(
    ec_a: Any, ec_b: Any, rsa_key: rsa.RSAPrivateKey
) -> None:
    fetch = FakeJWKS(
        jwk_for(ec_a, "a", "ES256"),
        jwk_for(ec_b, "wrong-family", "RS256"),  # an EC key claiming to be RSA
        jwk_for(rsa_key, "not-allowed", "RS512"),
        jwk_for(rsa_key, "enc", "RS256") | {"use": "enc"},
    )
    verifier = jwks_verifier(fetch, task.Clock(), algorithms=("ES256", "RS256"))
    assert result_of(verifier.verify(mint_token(ec_a, "ES256", "a", claims())))
    for kid, private, alg in [
        ("wrong-family", ec_b, "ES256"),
        ("not-allowed", rsa_key, "RS512"),
        ("enc", rsa_key, "RS256"),
    ]:
        token = mint_token(private, alg, kid, claims())
        assert failure_of(verifier.verify(token)).reason == "unknown_kid"


def test_jwk_header_alg_must_match_jwk_alg(rsa_key: rsa.RSAPrivateKey) -> None:
    fetch = FakeJWKS(jwk_for(rsa_key, "r", "RS256"))
    verifier = jwks_verifier(fetch, task.Clock())
    token = mint_token(rsa_key, "PS256", "r", claims())
    assert failure_of(verifier.verify(token)).reason == "bad_algorithm"
    public_pem = pem_public(rsa_key)
    forged = hand_signed_hs256({"alg": "HS256", "typ": "JWT", "kid": "r"}, claims(), public_pem)
    assert failure_of(verifier.verify(forged)).reason == "bad_algorithm"


def test_kidless_token_never_triggers_a_jwks_fetch(ec_a: Any) -> None:
    fetch = FakeJWKS(jwk_for(ec_a, "a", "ES256"))
    verifier = jwks_verifier(fetch, task.Clock())
    token = mint_token(ec_a, "ES256", "", claims())
    assert failure_of(verifier.verify(token)).reason == "unknown_kid"
    assert fetch.calls == []


def test_static_keys_and_jwks_together(ec_a: Any) -> None:
    fetch = FakeJWKS(jwk_for(ec_a, "a", "ES256"))
    verifier = TokenVerifier(
        AuthConfig(jwks_url=URL),
        keys={"k1": ("HS256", SECRET)},
        clock=task.Clock(),
        fetch_jwks=fetch,
        to_thread=sync_to_thread,
    )
    assert result_of(verifier.verify(mint_token(SECRET, "HS256", "k1", claims())))
    assert fetch.calls == []
    assert result_of(verifier.verify(mint_token(ec_a, "ES256", "a", claims())))
    assert len(fetch.calls) == 1


def test_bad_tokens_do_not_trigger_fetches() -> None:
    fetch = FakeJWKS()
    verifier = jwks_verifier(fetch, task.Clock())
    for token in ["", "garbage", "x" * 9000]:
        failure_of(verifier.verify(token))
    assert fetch.calls == []


def test_default_fetcher_refuses_non_http_urls() -> None:
    with pytest.raises(ValueError, match="http"):
        auth._fetch_jwks_urllib("file:///etc/passwd")


# --------------------------------------------------------------------------- mint_token


def test_mint_token_header() -> None:
    token = mint_token(SECRET, "HS256", "k1", claims())
    header = jwt.get_unverified_header(token)
    assert header["kid"] == "k1"
    assert header["alg"] == "HS256"
