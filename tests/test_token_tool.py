"""Tests for the rtgateway-token console script (gateway.tools.token)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.internet import task

from gateway import config as config_module
from gateway.auth import DEV_KID, AuthError, build_verifier
from gateway.config import Config
from gateway.tools.token import main

ROOT = Path(__file__).resolve().parents[1]
SECRET = os.urandom(24).hex()  # 48 characters
OTHER_SECRET = os.urandom(24).hex()


@pytest.fixture(autouse=True)
def private_dev_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Never touch the real ~/.local/state key from a test."""
    path = tmp_path / "state" / "dev-signing.key"
    monkeypatch.setenv("RTGATEWAY_DEV_KEY_FILE", str(path))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("RTGW_TOKEN_SECRET", SECRET)
    monkeypatch.setenv("RTGW_OTHER_SECRET", OTHER_SECRET)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def mint(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    status, out, err = run(capsys, *argv)
    assert status == 0, err
    lines = out.splitlines()
    assert len(lines) == 1, out
    assert lines[0].count(".") == 2
    return lines[0]


def verify(config: Config, token: str) -> Any:
    return build_verifier(config, clock=task.Clock()).verify_sync(token)


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def pem_public(private: Any) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def write_private(path: Path, private: Any) -> Path:
    path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


# --------------------------------------------------------------------------- dev mode


def test_dev_mode_token_verifies_with_daemon_defaults(
    capsys: pytest.CaptureFixture[str], private_dev_key: Path
) -> None:
    status, out, err = run(capsys, "--sub", "alice")
    assert status == 0
    assert "created development signing key" in err
    assert private_dev_key.exists()
    token = out.strip()
    assert jwt.get_unverified_header(token)["kid"] == DEV_KID
    identity = verify(Config(), token)
    assert identity.player_id == "alice"
    assert identity.expires_at - identity.claims["iat"] == 3600


def test_dev_mode_reuses_the_key(capsys: pytest.CaptureFixture[str]) -> None:
    first = mint(capsys, "--sub", "alice")
    status, out, err = run(capsys, "--sub", "bob")
    assert status == 0
    assert err == ""  # no "created" note the second time
    verifier = build_verifier(Config(), clock=task.Clock())
    assert verifier.verify_sync(first).player_id == "alice"
    assert verifier.verify_sync(out.strip()).player_id == "bob"


def test_dev_mode_honours_config_dev_key_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, private_dev_key: Path
) -> None:
    chosen = tmp_path / "chosen.key"
    path = write_config(tmp_path, f'[auth]\ndev_key_file = "{chosen}"\n')
    token = mint(capsys, "--sub", "alice", "--config", str(path))
    assert chosen.exists()
    assert not private_dev_key.exists()
    assert verify(config_module.load(path), token).player_id == "alice"
    with pytest.raises(AuthError):
        verify(Config(), token)  # a different dev key


def test_dev_mode_refuses_kid_and_key_file(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "--sub", "alice", "--kid", "main")
    assert (status, out) == (2, "")
    assert "development mode" in err
    status, out, _ = run(capsys, "--sub", "alice", "--key-file", "/nonexistent")
    assert (status, out) == (2, "")


def test_dev_mode_refuses_a_world_readable_key(
    capsys: pytest.CaptureFixture[str], private_dev_key: Path
) -> None:
    private_dev_key.parent.mkdir(parents=True)
    private_dev_key.write_text("k" * 64)
    private_dev_key.chmod(0o644)
    status, out, err = run(capsys, "--sub", "alice")
    assert (status, out) == (2, "")
    assert "auth.dev_key_file" in err


# --------------------------------------------------------------------------- claims


def test_ttl_and_extra_claims(capsys: pytest.CaptureFixture[str]) -> None:
    token = mint(
        capsys,
        "--sub",
        "alice",
        "--ttl",
        "60",
        "--claim",
        "room=7",
        "--claim",
        'tags=["a", "b"]',
        "--claim",
        "name=bob smith",
        "--claim",
        "admin=true",
        "--claim",
        "expr=a=b",
    )
    claims = verify(Config(), token).claims
    assert claims["exp"] - claims["iat"] == 60
    assert claims["room"] == 7
    assert claims["tags"] == ["a", "b"]
    assert claims["name"] == "bob smith"
    assert claims["admin"] is True
    assert claims["expr"] == "a=b"


def test_claim_overrides_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    token = mint(capsys, "--sub", "alice", "--claim", "exp=1000")
    with pytest.raises(AuthError) as info:
        verify(Config(), token)
    assert info.value.reason == "expired"


@pytest.mark.parametrize(
    "argv",
    [
        [],  # --sub is required
        ["--sub", "a", "--ttl", "0"],
        ["--sub", "a", "--ttl", "soon"],
        ["--sub", "a", "--claim", "novalue"],
        ["--sub", "a", "--claim", "=v"],
    ],
)
def test_usage_errors(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    status, out, err = run(capsys, *argv)
    assert (status, out) == (2, "")
    assert "usage:" in err


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "--help")
    assert status == 0
    assert "--sub" in out


# --------------------------------------------------------------------------- configured keys

HMAC_CONFIG = """
[auth]
audience = "game"
issuer = "backend"

[[auth.keys]]
kid = "main"
secret_env = "RTGW_TOKEN_SECRET"
"""


def test_configured_hmac_key(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write_config(tmp_path, HMAC_CONFIG)
    token = mint(capsys, "--sub", "alice", "--config", str(path))
    assert jwt.get_unverified_header(token)["kid"] == "main"
    identity = verify(config_module.load(path), token)
    assert identity.player_id == "alice"
    assert identity.claims["aud"] == "game"
    assert identity.claims["iss"] == "backend"


def test_configured_key_with_missing_secret(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RTGW_TOKEN_SECRET")
    path = write_config(tmp_path, HMAC_CONFIG)
    status, out, err = run(capsys, "--sub", "alice", "--config", str(path))
    assert (status, out) == (2, "")
    assert "auth.keys[0].secret_env" in err


def test_short_configured_secret_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RTGW_TOKEN_SECRET", "too-short")
    path = write_config(tmp_path, HMAC_CONFIG)
    status, out, err = run(capsys, "--sub", "alice", "--config", str(path))
    assert (status, out) == (2, "")
    assert "at least 32" in err


TWO_HMAC_CONFIG = """
[[auth.keys]]
kid = "one"
secret_env = "RTGW_TOKEN_SECRET"

[[auth.keys]]
kid = "two"
algorithm = "HS384"
secret_env = "RTGW_OTHER_SECRET"
"""


def test_several_hmac_keys_need_kid(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write_config(tmp_path, TWO_HMAC_CONFIG)
    status, out, err = run(capsys, "--sub", "alice", "--config", str(path))
    assert (status, out) == (2, "")
    assert "--kid" in err
    token = mint(capsys, "--sub", "alice", "--config", str(path), "--kid", "two")
    assert jwt.get_unverified_header(token) == {"alg": "HS384", "kid": "two", "typ": "JWT"}
    assert verify(config_module.load(path), token).player_id == "alice"
    status, out, err = run(capsys, "--sub", "alice", "--config", str(path), "--kid", "three")
    assert (status, out) == (2, "")
    assert "one, two" in err


def test_hmac_key_refuses_key_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write_config(tmp_path, HMAC_CONFIG)
    key_file = write_private(tmp_path / "k.pem", ec.generate_private_key(ec.SECP256R1()))
    status, out, err = run(
        capsys, "--sub", "a", "--config", str(path), "--kid", "main", "--key-file", str(key_file)
    )
    assert (status, out) == (2, "")
    assert "drop --key-file" in err


def asymmetric_config(tmp_path: Path, private: Any, algorithm: str, kid: str = "asym") -> Path:
    public_file = tmp_path / f"{kid}.pub.pem"
    public_file.write_bytes(pem_public(private))
    return write_config(
        tmp_path,
        f"""
[[auth.keys]]
kid = "{kid}"
algorithm = "{algorithm}"
public_key_file = "{public_file}"

[[auth.keys]]
kid = "hmac"
secret_env = "RTGW_TOKEN_SECRET"
""",
    )


@pytest.mark.parametrize(
    ("algorithm", "generate"),
    [
        ("RS256", lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        ("PS384", lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        ("ES256", lambda: ec.generate_private_key(ec.SECP256R1())),
        ("EdDSA", ed25519.Ed25519PrivateKey.generate),
    ],
)
def test_asymmetric_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, algorithm: str, generate: Any
) -> None:
    private = generate()
    path = asymmetric_config(tmp_path, private, algorithm)
    key_file = write_private(tmp_path / "private.pem", private)
    config = config_module.load(path)

    # --kid alone picks the key but cannot sign without the private key.
    status, out, err = run(capsys, "--sub", "alice", "--config", str(path), "--kid", "asym")
    assert (status, out) == (2, "")
    assert "--key-file" in err

    with_kid = mint(
        capsys,
        "--sub",
        "alice",
        "--config",
        str(path),
        "--kid",
        "asym",
        "--key-file",
        str(key_file),
    )
    assert jwt.get_unverified_header(with_kid)["alg"] == algorithm
    assert verify(config, with_kid).player_id == "alice"

    # Without --kid the private key is matched against the configured public keys.
    matched = mint(capsys, "--sub", "alice", "--config", str(path), "--key-file", str(key_file))
    assert jwt.get_unverified_header(matched)["kid"] == "asym"
    assert verify(config, matched).player_id == "alice"

    # Without either, the only HMAC key is used.
    hmac_token = mint(capsys, "--sub", "alice", "--config", str(path))
    assert jwt.get_unverified_header(hmac_token)["kid"] == "hmac"
    assert verify(config, hmac_token).player_id == "alice"


def test_mismatched_private_key_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    configured = ec.generate_private_key(ec.SECP256R1())
    path = asymmetric_config(tmp_path, configured, "ES256")
    stranger = write_private(tmp_path / "stranger.pem", ec.generate_private_key(ec.SECP256R1()))
    status, out, err = run(
        capsys, "--sub", "a", "--config", str(path), "--kid", "asym", "--key-file", str(stranger)
    )
    assert (status, out) == (2, "")
    assert "does not match" in err
    status, out, err = run(capsys, "--sub", "a", "--config", str(path), "--key-file", str(stranger))
    assert (status, out) == (2, "")
    assert "matches no" in err


def test_private_key_of_wrong_family_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = asymmetric_config(tmp_path, ec.generate_private_key(ec.SECP256R1()), "ES256")
    wrong = write_private(tmp_path / "ed.pem", ed25519.Ed25519PrivateKey.generate())
    status, out, err = run(
        capsys, "--sub", "a", "--config", str(path), "--kid", "asym", "--key-file", str(wrong)
    )
    assert (status, out) == (2, "")
    assert "ES256" in err


def test_bad_key_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = asymmetric_config(tmp_path, ec.generate_private_key(ec.SECP256R1()), "ES256")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    for key_file, fragment in [
        (tmp_path / "missing.pem", "cannot read"),
        (garbage, "PEM private key"),
        (encrypted, "encrypted"),
    ]:
        status, out, err = run(
            capsys,
            "--sub",
            "a",
            "--config",
            str(path),
            "--kid",
            "asym",
            "--key-file",
            str(key_file),
        )
        assert (status, out) == (2, "")
        assert fragment in err


# --------------------------------------------------------------------------- config errors


def test_missing_config_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, out, err = run(capsys, "--sub", "a", "--config", str(tmp_path / "nope.toml"))
    assert (status, out) == (2, "")
    assert err.startswith("rtgateway-token: error: --config")


def test_invalid_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write_config(tmp_path, "[auth]\nleeway = 9999\n")
    status, out, err = run(capsys, "--sub", "a", "--config", str(path))
    assert (status, out) == (2, "")
    assert "auth.leeway" in err


def test_jwks_only_config_has_nothing_to_sign_with(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write_config(tmp_path, '[auth]\njwks_url = "https://idp.example/jwks.json"\n')
    status, out, err = run(capsys, "--sub", "a", "--config", str(path))
    assert (status, out) == (2, "")
    assert "identity provider" in err


def test_module_entry_point(tmp_path: Path, private_dev_key: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "gateway.tools.token", "--sub", "carol"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert verify(Config(), result.stdout.strip()).player_id == "carol"
