"""``rtgateway-token``: mint a player token for testing and development.

Production tokens come from the game backend or identity provider.  This tool
exists so that a developer can connect to a local daemon at once: with no keys
configured it signs with the same development key the daemon creates, so
``rtgateway-token --sub alice`` works against a daemon started with no
configuration at all.  With keys configured it signs exactly as a backend
would, which makes it useful for smoke tests against a staging gateway.

Only the token goes to stdout, so ``TOKEN=$(rtgateway-token --sub alice)``
works; notes and errors go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

from gateway import config as config_module
from gateway.auth import (
    DEV_ALGORITHM,
    DEV_KID,
    check_public_key,
    dev_key_path,
    ensure_dev_key,
    load_key,
    mint_token,
)
from gateway.config import HMAC_ALGORITHMS, Config, ConfigError

__all__ = ["main"]

PROG = "rtgateway-token"
EXIT_ERROR = 2


class ToolError(Exception):
    """A problem the user can fix from the command line; printed without a traceback."""


def _claim(text: str) -> tuple[str, Any]:
    """Parse ``k=v``; ``v`` is JSON when it parses, so numbers and booleans keep their type."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return key, value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of seconds, got {text!r}")
    if value <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Print a signed player token (JWT) accepted by an rtgateway daemon.",
        epilog=(
            "Without auth.keys in the config (development mode) the token is signed with the "
            "local development key the daemon uses, created on first use."
        ),
    )
    parser.add_argument("--sub", required=True, help="player id (the sub claim)")
    parser.add_argument("--config", metavar="PATH", help="the daemon's TOML config file")
    parser.add_argument(
        "--ttl", type=_positive_int, default=3600, metavar="SECONDS", help="lifetime (default 3600)"
    )
    parser.add_argument(
        "--claim",
        type=_claim,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra claim, repeatable; VALUE is JSON if it parses, else a string; "
        "overrides sub/iat/exp/aud/iss",
    )
    parser.add_argument("--kid", help="kid of the configured key to sign with")
    parser.add_argument(
        "--key-file",
        metavar="PATH",
        help="PEM private key, needed for RS*/PS*/ES*/EdDSA keys",
    )
    return parser


def _public_der(key: Any) -> bytes:
    der: bytes = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return der


def _load_private_key(path: str) -> Any:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ToolError(f"--key-file: cannot read {path}: {exc.strerror}")
    try:
        return load_pem_private_key(data, password=None)
    except TypeError:
        raise ToolError(f"--key-file: {path} is encrypted; give an unencrypted PEM private key")
    except ValueError:
        raise ToolError(f"--key-file: {path} does not hold a PEM private key")


def _configured_public_key(config: Config, index: int) -> Any | None:
    """The configured public key, or None when this machine cannot read it."""
    try:
        return load_key(config.auth, index)[1]
    except ConfigError:
        return None


def _select_key(config: Config, kid: str | None, key_file: str | None) -> tuple[str, Any, str]:
    """Return (algorithm, signing key, kid) following the daemon's own key configuration."""
    auth = config.auth
    if config.dev_mode:
        if key_file or (kid is not None and kid != DEV_KID):
            raise ToolError(
                "no auth.keys in the config (development mode): tokens are signed with the "
                "development key; drop --kid/--key-file or pass --config"
            )
        path = dev_key_path(config)
        secret, created = ensure_dev_key(path)
        if created:
            print(f"{PROG}: created development signing key {path}", file=sys.stderr)
        return DEV_ALGORITHM, secret, DEV_KID
    if not auth.keys:
        raise ToolError(
            "the config has auth.jwks_url but no auth.keys: tokens come from your identity "
            "provider, not from this tool"
        )
    private = _load_private_key(key_file) if key_file else None
    kids = [k.kid for k in auth.keys]
    if kid is not None:
        if kid not in kids:
            raise ToolError(f"--kid: no key {kid!r} in auth.keys (known: {', '.join(kids)})")
        index = kids.index(kid)
    elif private is not None:
        wanted = _public_der(private.public_key())
        matches = [
            i
            for i, k in enumerate(auth.keys)
            if k.algorithm not in HMAC_ALGORITHMS
            and (public := _configured_public_key(config, i)) is not None
            and _public_der(public) == wanted
        ]
        if len(matches) != 1:
            raise ToolError("--key-file matches no readable configured public key; pass --kid")
        index = matches[0]
    else:
        hmac = [i for i, k in enumerate(auth.keys) if k.algorithm in HMAC_ALGORITHMS]
        if len(hmac) != 1:
            raise ToolError(
                f"{len(hmac)} HMAC keys in auth.keys: pick one with --kid "
                "(asymmetric keys also need --key-file with the PEM private key)"
            )
        index = hmac[0]
    chosen = auth.keys[index]
    if chosen.algorithm in HMAC_ALGORITHMS:
        if private is not None:
            raise ToolError(
                f"key {chosen.kid!r} is {chosen.algorithm}: its secret comes from the config "
                "(secret_env/secret_file); drop --key-file"
            )
        algorithm, secret = load_key(auth, index)
        return algorithm, secret, chosen.kid
    if private is None:
        raise ToolError(
            f"key {chosen.kid!r} is {chosen.algorithm}: pass --key-file with its PEM private key"
        )
    check_public_key("--key-file", chosen.algorithm, private.public_key())
    public = _configured_public_key(config, index)
    if public is not None and _public_der(public) != _public_der(private.public_key()):
        raise ToolError(f"--key-file does not match the public key of {chosen.kid!r}")
    return chosen.algorithm, private, chosen.kid


def build_claims(
    config: Config, sub: str, ttl: int, extra: list[tuple[str, Any]], now: int
) -> dict[str, Any]:
    """The claims the daemon requires by default, then the user's extras on top."""
    claims: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + ttl}
    if config.auth.audience:
        claims["aud"] = config.auth.audience
    if config.auth.issuer:
        claims["iss"] = config.auth.issuer
    claims.update(extra)
    return claims


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``rtgateway-token``; returns the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    try:
        config = config_module.load(args.config)
        algorithm, key, kid = _select_key(config, args.kid, args.key_file)
        claims = build_claims(config, args.sub, args.ttl, args.claim, int(time.time()))
        token = mint_token(key, algorithm, kid, claims)
    except (ConfigError, ToolError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(token)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
