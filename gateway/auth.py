"""JWT authentication of players.

The gateway never issues tokens in production: a game backend or identity
provider signs them, and the gateway only checks them.  Three rules shape this
module:

* Every key is bound to exactly one algorithm, chosen by the operator (or by
  the JWK's ``alg``), and that single algorithm is what PyJWT is allowed to
  use.  The token's own header never widens the choice, which is what defeats
  ``alg=none`` and the "RSA public key used as an HMAC secret" confusion.
* Fetching a JWKS is blocking network I/O: it runs in a thread, is cached, is
  shared between concurrent verifications, and is rate limited so that a flood
  of tokens with invented ``kid`` values cannot turn the gateway into a
  denial-of-service amplifier against the identity provider.
* A token is a bearer credential: it never appears in a log line or in an
  exception message.  :class:`AuthError` carries a short, stable ``reason`` for
  metrics instead.

Development mode (no keys, no JWKS URL) signs with a random local HS256 key
kept in a 0600 file, so that ``rtgateway-token`` and a daemon started without
any configuration agree on a key without the operator inventing a secret.
"""

from __future__ import annotations

import binascii
import json
import os
import secrets
import types
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_pem_public_key,
)
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.config import (
    ALL_ALGORITHMS,
    HMAC_ALGORITHMS,
    AuthConfig,
    Config,
    ConfigError,
    KeyConfig,
    read_secret,
)

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

__all__ = [
    "DEV_ALGORITHM",
    "DEV_KID",
    "AuthError",
    "Identity",
    "TokenVerifier",
    "build_verifier",
    "check_public_key",
    "default_dev_key_path",
    "dev_key_path",
    "ensure_dev_key",
    "load_key",
    "load_keys",
    "mint_token",
]

log = Logger()

DEV_KID = "dev"
DEV_ALGORITHM = "HS256"

# Anything longer is refused before any parsing: base64 and JSON decoding of an
# attacker-sized blob would otherwise be free CPU for the attacker.
MAX_TOKEN_LENGTH = 8192
MAX_SUBJECT_LENGTH = 128
# A JWKS document is a few KiB; the cap keeps a hostile endpoint from filling memory.
MAX_JWKS_BYTES = 1024 * 1024
JWKS_FETCH_TIMEOUT = 5.0
# 64 random bytes, stored hex-encoded; the hex text itself is the HMAC secret,
# exactly as ``secret_file`` would read it.
DEV_KEY_RANDOM_BYTES = 64
MIN_DEV_KEY_BYTES = 32

_HMAC_DIGEST_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
_EC_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "ES256": ec.SECP256R1,
    "ES384": ec.SECP384R1,
    "ES512": ec.SECP521R1,
}

REASONS = frozenset(
    {
        "missing",
        "malformed",
        "expired",
        "not_yet_valid",
        "bad_signature",
        "bad_algorithm",
        "unknown_kid",
        "missing_claim",
        "bad_audience",
        "bad_issuer",
        "bad_subject",
        "jwks_unavailable",
    }
)

_MESSAGES = {
    "missing": "no token was presented",
    "malformed": "the token is not a well-formed JWT",
    "expired": "the token has expired",
    "not_yet_valid": "the token is not valid yet",
    "bad_signature": "the token signature does not verify",
    "bad_algorithm": "the token algorithm is not the one bound to its key",
    "unknown_kid": "the token names no known signing key",
    "missing_claim": "the token lacks a required claim",
    "bad_audience": "the token is meant for another audience",
    "bad_issuer": "the token comes from another issuer",
    "bad_subject": "the token subject (sub) is not a usable player id",
    "jwks_unavailable": "the signing keys could not be fetched",
}


class AuthError(Exception):
    """A token was refused.

    ``reason`` is a closed vocabulary so that it can be a Prometheus label
    without unbounded cardinality; ``str(exc)`` is for humans and is built only
    from fixed text and operator-controlled names, never from the token.
    """

    def __init__(self, reason: str, message: str | None = None) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown AuthError reason {reason!r}")
        super().__init__(message or _MESSAGES[reason])
        self.reason = reason


@dataclass(frozen=True)
class Identity:
    """Who a verified token speaks for; ``claims`` is for plugins needing more than the id."""

    player_id: str
    # A read-only view, excluded from the hash so that an Identity stays hashable.
    claims: Mapping[str, Any] = field(hash=False)
    expires_at: float


# --------------------------------------------------------------------------- keys


def _hmac_minimum(config: AuthConfig, algorithm: str) -> int:
    """RFC 7518 s3.2 wants a key at least as long as the hash; the operator may ask for more."""
    return max(config.min_hmac_key_bytes, _HMAC_DIGEST_BYTES[algorithm])


def check_public_key(where: str, algorithm: str, key: Any) -> Any:
    """Refuse a key of the wrong family or curve now, rather than on every token later."""
    if algorithm.startswith(("RS", "PS")):
        if not isinstance(key, rsa.RSAPublicKey):
            raise ConfigError(where, f"{algorithm} needs an RSA key")
        if key.key_size < 2048:
            raise ConfigError(where, f"RSA key is {key.key_size} bits; at least 2048 are needed")
    elif algorithm in _EC_CURVES:
        curve = _EC_CURVES[algorithm]
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, curve):
            raise ConfigError(where, f"{algorithm} needs an EC key on {curve.name}")
    elif algorithm == "EdDSA":
        if not isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            raise ConfigError(where, "EdDSA needs an Ed25519 or Ed448 key")
    else:  # pragma: no cover - config validation keeps other names out
        raise ConfigError(where, f"unsupported algorithm {algorithm}")
    return key


def _load_public_pem(where: str, algorithm: str, path: str) -> Any:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(where, f"cannot read {path}: {exc.strerror}")
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError):
        # Say so plainly when the private key was deployed to the gateway by mistake:
        # it must not live on a machine that only verifies.
        try:
            load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise ConfigError(where, f"{path} does not hold a PEM public key")
        raise ConfigError(where, f"{path} holds a private key; give the public key only")
    return check_public_key(where, algorithm, key)


def load_key(config: AuthConfig, index: int) -> tuple[str, Any]:
    """Load one key, so that a tool can sign without access to the other keys' files."""
    key: KeyConfig = config.keys[index]
    where = f"auth.keys[{index}]"
    if not key.kid:
        raise ConfigError(f"{where}.kid", "every key needs a kid")
    if key.algorithm not in ALL_ALGORITHMS or key.algorithm not in config.algorithms:
        raise ConfigError(f"{where}.algorithm", "not in auth.algorithms")
    if key.algorithm in HMAC_ALGORITHMS:
        if key.public_key_file:
            raise ConfigError(
                f"{where}.public_key_file", "HMAC keys take secret_env or secret_file"
            )
        source = "secret_env" if key.secret_env else "secret_file"
        secret = read_secret(f"{where}.{source}", env=key.secret_env, file=key.secret_file)
        minimum = _hmac_minimum(config, key.algorithm)
        if len(secret) < minimum:
            raise ConfigError(
                f"{where}.{source}",
                f"{key.algorithm} secret is {len(secret)} bytes; at least {minimum} are needed",
            )
        try:
            # PyJWT refuses PEM/SSH material as an HMAC secret; surface that at start-up.
            jwt.get_algorithm_by_name(key.algorithm).prepare_key(secret)
        except jwt.InvalidKeyError:
            raise ConfigError(
                f"{where}.{source}", "looks like an asymmetric key, not an HMAC secret"
            )
        return key.algorithm, secret
    if not key.public_key_file:
        raise ConfigError(f"{where}.public_key_file", f"{key.algorithm} needs a public key")
    public = _load_public_pem(f"{where}.public_key_file", key.algorithm, key.public_key_file)
    return key.algorithm, public


def load_keys(config: AuthConfig) -> dict[str, tuple[str, Any]]:
    """Load every configured key at start-up, so a bad key stops the daemon instead of players."""
    keys: dict[str, tuple[str, Any]] = {}
    for i, key in enumerate(config.keys):
        if key.kid in keys:
            raise ConfigError(f"auth.keys[{i}].kid", f"duplicate kid {key.kid!r}")
        keys[key.kid] = load_key(config, i)
    return keys


# --------------------------------------------------------------------------- dev key


def default_dev_key_path() -> Path:
    """Follow the XDG state directory convention: the key is machine state, not configuration."""
    explicit = os.environ.get("RTGATEWAY_DEV_KEY_FILE")
    if explicit:
        return Path(explicit)
    state = os.environ.get("XDG_STATE_HOME")
    base = Path(state) if state else Path.home() / ".local" / "state"
    return base / "rtgateway" / "dev-signing.key"


def _read_dev_key(path: Path) -> bytes:
    where = "auth.dev_key_file"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise ConfigError(where, f"cannot read {path}: {exc.strerror}")
    with os.fdopen(fd, "rb") as fh:
        # fstat on the open descriptor: the mode we judge is the mode of what we read.
        mode = os.fstat(fh.fileno()).st_mode
        if mode & 0o077:
            raise ConfigError(
                where,
                f"{path} is accessible by group or others (mode {mode & 0o777:04o}); "
                "run chmod 600 on it",
            )
        secret = fh.read().strip()
    if len(secret) < MIN_DEV_KEY_BYTES:
        raise ConfigError(where, f"{path} holds fewer than {MIN_DEV_KEY_BYTES} bytes")
    return secret


def ensure_dev_key(path: Path) -> tuple[bytes, bool]:
    """Return the development key at ``path``, creating it the first time.

    The file is written under a temporary name and hard-linked into place, so a
    daemon and ``rtgateway-token`` starting together never read a half-written
    key and never overwrite each other's: whoever links first wins.
    """
    path = Path(path)
    try:
        return _read_dev_key(path), False
    except ConfigError:
        if path.exists() or path.is_symlink():
            raise
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError("auth.dev_key_file", f"cannot create {path.parent}: {exc.strerror}")
    secret = binascii.hexlify(secrets.token_bytes(DEV_KEY_RANDOM_BYTES))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secret + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return _read_dev_key(path), False
        except OSError:
            # Filesystems without hard links: fall back to an exclusive create in place.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, secret + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
    except FileExistsError:
        return _read_dev_key(path), False
    except OSError as exc:
        raise ConfigError("auth.dev_key_file", f"cannot create {path}: {exc.strerror}")
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    return secret, True


# --------------------------------------------------------------------------- JWKS


def _fetch_jwks_urllib(url: str) -> dict[str, Any]:
    """Blocking; only ever called in a thread."""
    if urllib.parse.urlsplit(url).scheme not in ("https", "http"):
        raise ValueError("auth.jwks_url must be an http(s) URL")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=JWKS_FETCH_TIMEOUT) as response:  # noqa: S310
        body = response.read(MAX_JWKS_BYTES + 1)
    if len(body) > MAX_JWKS_BYTES:
        raise ValueError(f"JWKS document larger than {MAX_JWKS_BYTES} bytes")
    document = json.loads(body)
    if not isinstance(document, dict):
        raise ValueError("JWKS document is not a JSON object")
    return document


def _parse_jwks(config: AuthConfig, document: Mapping[str, Any]) -> dict[str, tuple[str, Any]]:
    """Keep only keys that say which algorithm they are for, and that we allow.

    A JWK without ``alg`` is ignored rather than guessed from its type: guessing
    is how one key ends up accepted under two algorithms.
    """
    entries = document.get("keys") if isinstance(document, Mapping) else None
    if not isinstance(entries, list):
        raise ValueError("JWKS document has no keys list")
    keys: dict[str, tuple[str, Any]] = {}
    for jwk_data in entries:
        if not isinstance(jwk_data, dict):
            continue
        kid = jwk_data.get("kid")
        alg = jwk_data.get("alg")
        if not isinstance(kid, str) or not kid or not isinstance(alg, str):
            continue
        if alg not in ALL_ALGORITHMS or alg not in config.algorithms:
            continue
        if jwk_data.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(jwk_data, algorithm=alg).key
            if alg in HMAC_ALGORITHMS:
                if len(key) < _hmac_minimum(config, alg):
                    raise ConfigError("auth.jwks_url", "HMAC key too short")
            else:
                check_public_key("auth.jwks_url", alg, key)
        except (jwt.PyJWTError, ConfigError, ValueError, TypeError, KeyError) as exc:
            log.warn("JWKS key {kid!r} ignored: {error}", kid=kid[:64], error=str(exc)[:200])
            continue
        keys[kid] = (alg, key)
    if not keys:
        raise ValueError("JWKS document holds no usable key")
    return keys


# --------------------------------------------------------------------------- verifier

_EXCEPTION_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid"),
    (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.InvalidAudienceError, "bad_audience"),
    (jwt.InvalidIssuerError, "bad_issuer"),
    (jwt.MissingRequiredClaimError, "missing_claim"),
    (jwt.InvalidAlgorithmError, "bad_algorithm"),
    (jwt.exceptions.InvalidSubjectError, "bad_subject"),
    # A key PyJWT will not use with the bound algorithm (wrong family, too short).
    (jwt.InvalidKeyError, "bad_algorithm"),
    (jwt.DecodeError, "malformed"),
    (jwt.PyJWTError, "malformed"),
)


def _reason_for(exc: Exception) -> str:
    for cls, reason in _EXCEPTION_REASONS:
        if isinstance(exc, cls):
            return reason
    return "malformed"


Key = tuple[str, Any]


class TokenVerifier:
    """Checks tokens against static keys and, optionally, a JWKS endpoint."""

    def __init__(
        self,
        config: AuthConfig,
        *,
        keys: Mapping[str, tuple[str, Any]] | None = None,
        clock: IReactorTime | None = None,
        fetch_jwks: Callable[[str], dict[str, Any]] | None = None,
        to_thread: Callable[..., Deferred[Any]] | None = None,
        dev: bool = False,
    ) -> None:
        self._config = config
        self._static: dict[str, Key] = dict(keys) if keys is not None else load_keys(config)
        if clock is None:
            # Imported here: importing the reactor at module level would break
            # `twistd --reactor=...` (see STACK.md).
            from twisted.internet import reactor

            clock = cast("IReactorTime", reactor)
        self._clock: IReactorTime = clock
        self._fetch_jwks = fetch_jwks or _fetch_jwks_urllib
        if to_thread is None:
            from twisted.internet.threads import deferToThread

            to_thread = deferToThread
        self._to_thread = to_thread
        self._dev = dev
        require = list(dict.fromkeys(config.required_claims))
        if config.audience and "aud" not in require:
            require.append("aud")
        if config.issuer and "iss" not in require:
            require.append("iss")
        self._require = require
        self._jwks: dict[str, Key] = {}
        self._jwks_fetched_at: float | None = None
        self._jwks_attempted_at: float | None = None
        self._jwks_last_failed = False
        self._waiters: list[Deferred[None]] | None = None

    @property
    def is_dev(self) -> bool:
        """Lets the server warn loudly, and refuse non-loopback listeners, in development mode."""
        return self._dev

    # -- public

    def verify(self, token: str) -> Deferred[Identity]:
        """Verify ``token``; fires with an Identity or fails with AuthError."""
        try:
            kid = self._kid_of(token)
            key = self._static_key(kid) or self._fresh_jwks_key(kid)
            if key is not None:
                return succeed(self._decode(token, key))
            if kid is None or not self._config.jwks_url:
                raise AuthError("unknown_kid")
            if not self._may_fetch():
                return succeed(self._decode(token, self._stale_key_or_raise(kid)))
        except AuthError as exc:
            return fail(exc)
        return self._refresh_jwks().addCallbacks(
            lambda _: self._decode(token, self._stale_key_or_raise(kid)),
            lambda failure: self._after_failed_fetch(token, kid, failure),
        )

    def verify_sync(self, token: str) -> Identity:
        """Verify with keys already in memory; AuthError("unknown_kid") if a fetch is needed.

        For callers that cannot wait (and for ``verify``'s fast path).
        """
        kid = self._kid_of(token)
        key = self._static_key(kid) or self._fresh_jwks_key(kid)
        if key is None:
            raise AuthError("unknown_kid")
        return self._decode(token, key)

    # -- key lookup

    def _kid_of(self, token: str) -> str | None:
        if not isinstance(token, str):
            raise AuthError("malformed")
        if not token:
            raise AuthError("missing")
        if len(token) > MAX_TOKEN_LENGTH:
            raise AuthError("malformed", f"the token is longer than {MAX_TOKEN_LENGTH} characters")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("malformed") from None
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or not kid):
            raise AuthError("malformed", "the token kid is not a non-empty string")
        return kid

    def _static_key(self, kid: str | None) -> Key | None:
        if kid is None:
            # Without a kid the choice of key would be a guess; with one key there is no choice.
            if len(self._static) == 1:
                return next(iter(self._static.values()))
            return None
        return self._static.get(kid)

    def _jwks_fresh(self) -> bool:
        fetched = self._jwks_fetched_at
        return (
            fetched is not None
            and self._clock.seconds() - fetched < self._config.jwks_cache_seconds
        )

    def _fresh_jwks_key(self, kid: str | None) -> Key | None:
        if kid is None or not self._jwks_fresh():
            return None
        return self._jwks.get(kid)

    def _stale_key_or_raise(self, kid: str | None) -> Key:
        key = self._jwks.get(kid) if kid is not None else None
        if key is not None:
            return key
        if self._jwks_last_failed:
            raise AuthError("jwks_unavailable")
        raise AuthError("unknown_kid")

    def _may_fetch(self) -> bool:
        """One fetch per cooldown, whatever triggered it: made-up kids must not hammer the IdP."""
        if self._waiters is not None:
            return True  # joining the fetch already in flight costs nothing
        attempted = self._jwks_attempted_at
        return (
            attempted is None
            or self._clock.seconds() - attempted >= self._config.jwks_refresh_cooldown
        )

    # -- JWKS fetching

    def _refresh_jwks(self) -> Deferred[None]:
        """Start a fetch, or join the one in flight; every caller gets its own Deferred."""
        waiter: Deferred[None] = Deferred()
        if self._waiters is not None:
            self._waiters.append(waiter)
            return waiter
        self._waiters = [waiter]
        self._jwks_attempted_at = self._clock.seconds()
        url = self._config.jwks_url
        config = self._config
        fetch = self._fetch_jwks

        def fetch_and_parse() -> dict[str, Key]:
            # Parsing builds RSA/EC key objects: keep that off the reactor thread too.
            return _parse_jwks(config, fetch(url))

        try:
            fetching = self._to_thread(fetch_and_parse)
        except Exception:
            fetching = fail()
        fetching.addBoth(self._fetch_done)
        return waiter

    def _fetch_done(self, result: dict[str, Key] | Failure) -> None:
        waiters, self._waiters = self._waiters or [], None
        if isinstance(result, Failure):
            self._jwks_last_failed = True
            log.warn(
                "JWKS fetch from {url} failed ({error}); {count} cached key(s) still in use",
                url=self._config.jwks_url,
                error=str(result.value)[:200] or type(result.value).__name__,
                count=len(self._jwks),
            )
            for waiter in waiters:
                waiter.errback(AuthError("jwks_unavailable"))
            return
        self._jwks = result
        self._jwks_fetched_at = self._clock.seconds()
        self._jwks_last_failed = False
        for waiter in waiters:
            waiter.callback(None)

    def _after_failed_fetch(self, token: str, kid: str | None, failure: Failure) -> Identity:
        """Keep serving the keys we had: an IdP outage must not log every player out.

        ``failure`` is always the AuthError("jwks_unavailable") that ``_fetch_done`` sends.
        """
        del failure
        key = self._jwks.get(kid) if kid is not None else None
        if key is None:
            raise AuthError("jwks_unavailable")
        return self._decode(token, key)

    # -- decoding

    def _decode(self, token: str, key: Key) -> Identity:
        algorithm, material = key
        config = self._config
        if algorithm not in config.algorithms or algorithm not in ALL_ALGORITHMS:
            raise AuthError("bad_algorithm")
        try:
            claims = jwt.decode(
                token,
                material,
                algorithms=[algorithm],
                options={"require": self._require, "enforce_minimum_key_length": True},
                audience=config.audience or None,
                issuer=config.issuer or None,
                leeway=config.leeway,
            )
        except jwt.PyJWTError as exc:
            reason = _reason_for(exc)
            if isinstance(exc, jwt.MissingRequiredClaimError):
                message = f"the token lacks the required claim {exc.claim!r}"
                raise AuthError(reason, message) from None
            raise AuthError(reason) from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > MAX_SUBJECT_LENGTH:
            raise AuthError("bad_subject")
        exp = claims.get("exp")
        # exp is only absent when the operator removed it from required_claims.
        expires_at = float(exp) if isinstance(exp, int | float) else float("inf")
        return Identity(
            player_id=subject,
            claims=types.MappingProxyType(dict(claims)),
            expires_at=expires_at,
        )


# --------------------------------------------------------------------------- wiring


def dev_key_path(config: Config) -> Path:
    """The dev key file the daemon and ``rtgateway-token`` share for ``config``."""
    if config.auth.dev_key_file:
        return Path(config.auth.dev_key_file).expanduser()
    return default_dev_key_path()


def build_verifier(
    config: Config,
    *,
    clock: IReactorTime | None = None,
    fetch_jwks: Callable[[str], dict[str, Any]] | None = None,
    to_thread: Callable[..., Deferred[Any]] | None = None,
) -> TokenVerifier:
    """Build the daemon's verifier; in development mode, create or reuse the local key."""
    if not config.dev_mode:
        return TokenVerifier(config.auth, clock=clock, fetch_jwks=fetch_jwks, to_thread=to_thread)
    if DEV_ALGORITHM not in config.auth.algorithms:
        raise ConfigError(
            "auth.algorithms",
            f"development mode signs with {DEV_ALGORITHM}; allow it or configure keys",
        )
    path = dev_key_path(config)
    secret, created = ensure_dev_key(path)
    minimum = _hmac_minimum(config.auth, DEV_ALGORITHM)
    if len(secret) < minimum:
        raise ConfigError("auth.dev_key_file", f"{path} holds fewer than {minimum} bytes")
    log.warn(
        "development mode: no auth.keys or auth.jwks_url configured; tokens are signed with "
        "the {state} local key {path} (mint one with rtgateway-token)",
        state="new" if created else "existing",
        path=str(path),
    )
    return TokenVerifier(
        config.auth,
        keys={DEV_KID: (DEV_ALGORITHM, secret)},
        clock=clock,
        fetch_jwks=fetch_jwks,
        to_thread=to_thread,
        dev=True,
    )


def mint_token(secret_or_key: Any, algorithm: str, kid: str, claims: Mapping[str, Any]) -> str:
    """Sign ``claims``: for tests and ``rtgateway-token``; the gateway never issues tokens."""
    headers = {"kid": kid} if kid else None
    return jwt.encode(dict(claims), secret_or_key, algorithm=algorithm, headers=headers)
