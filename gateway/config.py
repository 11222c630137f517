"""Typed, frozen configuration.

One frozen dataclass per section, loaded from TOML and then from command-line
overrides (``--set section.key=value`` and the dedicated flags).  A wrong value
is a :class:`ConfigError` whose message starts with the dotted key, so that an
operator reading a failed ``systemctl status`` knows which line to fix.

Secrets never live in the file: fields ending in ``_env`` name an environment
variable that holds the secret, read when the service is built.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "AdminConfig",
    "AuthConfig",
    "BackendConfig",
    "CompressionConfig",
    "Config",
    "ConfigError",
    "HeartbeatConfig",
    "KeyConfig",
    "LimitsConfig",
    "ManholeConfig",
    "PluginsConfig",
    "RecordingConfig",
    "ServerConfig",
    "SessionConfig",
    "ShutdownConfig",
    "TickConfig",
    "load",
]


class ConfigError(ValueError):
    """A configuration value is missing or wrong; ``key`` is its dotted name."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


Check = Callable[[Any], str | None]


def _opt(default: Any, check: Check | None = None) -> Any:
    """A field with a default and an optional check returning an error text."""
    if isinstance(default, list | dict):
        raise TypeError("use tuples for sequence defaults")
    return field(default=default, metadata={"check": check} if check else {})


def positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be 0 or greater"


def at_least(minimum: float) -> Check:
    def check(value: float) -> str | None:
        return None if value >= minimum else f"must be at least {minimum}"

    return check


def one_of(*choices: str) -> Check:
    def check(value: str) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def subset_of(*choices: str) -> Check:
    def check(values: tuple[str, ...]) -> str | None:
        bad = [v for v in values if v not in choices]
        return f"unknown value(s) {bad}; allowed: {', '.join(choices)}" if bad else None

    return check


def required_endpoint(value: str) -> str | None:
    return "must not be empty" if value == "" else endpoint(value)


def endpoint(value: str) -> str | None:
    """An endpoint string must at least name a known scheme (full parse happens at start)."""
    if value == "":
        return None
    scheme = value.split(":", 1)[0]
    # haproxy: wraps another endpoint with the PROXY protocol (real client addresses
    # behind a load balancer).
    known = {"tcp", "tcp6", "ssl", "unix", "systemd", "tls", "haproxy"}
    return None if scheme in known else f"unknown endpoint type {scheme!r} in {value!r}"


# --------------------------------------------------------------------------- sections

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS = ("ES256", "ES384", "ES512")
OKP_ALGORITHMS = ("EdDSA",)
ALL_ALGORITHMS = HMAC_ALGORITHMS + RSA_ALGORITHMS + EC_ALGORITHMS + OKP_ALGORITHMS


@dataclass(frozen=True)
class ServerConfig:
    listen: str = _opt("tcp:8080:interface=127.0.0.1", required_endpoint)
    path: str = _opt("/ws", lambda v: None if v.startswith("/") else "must start with /")
    instance_id: str = _opt("")
    # Browser Origins allowed to connect; empty allows any (non-browser clients send none).
    allowed_origins: tuple[str, ...] = _opt(())


@dataclass(frozen=True)
class AdminConfig:
    listen: str = _opt("tcp:8081:interface=127.0.0.1", endpoint)
    # Environment variable holding a bearer token required by /admin/* and /debug/*.
    token_env: str = _opt("")


@dataclass(frozen=True)
class KeyConfig:
    kid: str = _opt("")
    algorithm: str = _opt("HS256", one_of(*ALL_ALGORITHMS))
    secret_env: str = _opt("")
    secret_file: str = _opt("")
    public_key_file: str = _opt("")


@dataclass(frozen=True)
class AuthConfig:
    keys: tuple[KeyConfig, ...] = _opt(())
    jwks_url: str = _opt("")
    jwks_cache_seconds: float = _opt(3600.0, positive)
    jwks_refresh_cooldown: float = _opt(30.0, non_negative)
    algorithms: tuple[str, ...] = _opt(ALL_ALGORITHMS, subset_of(*ALL_ALGORITHMS))
    audience: str = _opt("")
    issuer: str = _opt("")
    leeway: float = _opt(30.0, lambda v: None if 0 <= v <= 300 else "must be between 0 and 300")
    required_claims: tuple[str, ...] = _opt(("sub", "exp", "iat"))
    min_hmac_key_bytes: int = _opt(32, at_least(32))
    # Allow upgrades without a token, authenticated by the token in system.hello.
    allow_in_band: bool = _opt(False)
    # Where development mode keeps its generated signing key ("" = default path).
    dev_key_file: str = _opt("")


@dataclass(frozen=True)
class LimitsConfig:
    max_message_size: int = _opt(65536, at_least(1024))
    max_frame_size: int = _opt(65536, at_least(1024))
    max_events_per_frame: int = _opt(64, at_least(1))
    messages_per_second: float = _opt(60.0, positive)
    messages_burst: int = _opt(120, at_least(1))
    max_connections: int = _opt(10000, at_least(1))
    max_connections_per_ip: int = _opt(100, at_least(1))
    handshake_timeout: int = _opt(5, at_least(2))
    outbound_soft_bytes: int = _opt(256 * 1024, at_least(4096))
    outbound_hard_bytes: int = _opt(1024 * 1024, at_least(8192))
    # A transport that stays paused (peer not reading) this long is disconnected.
    stalled_seconds: float = _opt(10.0, positive)


@dataclass(frozen=True)
class HeartbeatConfig:
    # Whole seconds: Autobahn's timers are batched per second (see STACK.md).
    interval: int = _opt(10, at_least(2))
    timeout: int = _opt(10, at_least(2))


@dataclass(frozen=True)
class TickConfig:
    critical_hz: int = _opt(60, lambda v: None if 1 <= v <= 240 else "must be 1..240")
    normal_hz: int = _opt(10, lambda v: None if 1 <= v <= 240 else "must be 1..240")


@dataclass(frozen=True)
class CompressionConfig:
    # Server preference; the first one the client also accepts is used.
    algorithms: tuple[str, ...] = _opt(("lz4", "zlib"), subset_of("lz4", "zlib"))
    threshold: int = _opt(512, at_least(64))
    zlib_level: int = _opt(6, lambda v: None if 1 <= v <= 9 else "must be 1..9")


@dataclass(frozen=True)
class ShutdownConfig:
    grace_seconds: float = _opt(5.0, non_negative)
    # Clients are told to spread their reconnects over this window.
    reconnect_spread_ms: int = _opt(3000, non_negative)
    reconnect_url: str = _opt("")


@dataclass(frozen=True)
class BackendConfig:
    type: str = _opt("memory", one_of("memory", "redis"))
    redis_url: str = _opt("redis://127.0.0.1:6379/0")
    redis_password_env: str = _opt("")
    sentinels: tuple[str, ...] = _opt(())
    sentinel_master: str = _opt("")
    command_timeout: float = _opt(2.0, positive)
    key_prefix: str = _opt("rtgw:")
    bus_heartbeat_seconds: float = _opt(2.0, positive)


@dataclass(frozen=True)
class SessionConfig:
    timeout_seconds: float = _opt(86400.0, positive)
    max_replay_events: int = _opt(1024, at_least(1))
    # Capped log per topic of reliable events, so resumed sessions catch up.
    topic_log_len: int = _opt(1024, at_least(16))
    topic_log_seconds: float = _opt(3600.0, positive)


@dataclass(frozen=True)
class ManholeConfig:
    listen: str = _opt("", endpoint)
    authorized_keys: str = _opt("")
    host_key: str = _opt("")


@dataclass(frozen=True)
class RecordingConfig:
    directory: str = _opt("recordings")
    # Player ids recorded from start-up; "*" records everyone.
    players: tuple[str, ...] = _opt(())
    max_bytes: int = _opt(64 * 1024 * 1024, at_least(4096))


@dataclass(frozen=True)
class PluginsConfig:
    paths: tuple[str, ...] = _opt(())
    disabled: tuple[str, ...] = _opt(())


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    heartbeat: HeartbeatConfig = field(default_factory=HeartbeatConfig)
    tick: TickConfig = field(default_factory=TickConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    shutdown: ShutdownConfig = field(default_factory=ShutdownConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    manhole: ManholeConfig = field(default_factory=ManholeConfig)
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    plugins: PluginsConfig = field(default_factory=PluginsConfig)
    # [plugin.<name>] tables, handed to each plugin to parse with its own dataclass.
    plugin: Mapping[str, Mapping[str, Any]] = field(
        default_factory=lambda: types.MappingProxyType({})
    )

    @property
    def dev_mode(self) -> bool:
        """No signing keys configured: tokens are signed with a generated local key."""
        return not self.auth.keys and not self.auth.jwks_url


# --------------------------------------------------------------------------- loading


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Convert a TOML value to ``tp``, or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(key, f"must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(key, f"must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(key, f"must be a string, got {value!r}")
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(key, f"must be a list, got {value!r}")
        return tuple(_coerce(f"{key}[{i}]", item_tp, v) for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"must be a table, got {value!r}")
        return _build(key, typing.cast(type, tp), value)
    raise TypeError(f"unsupported config type {tp!r} for {key}")  # pragma: no cover


def _build(prefix: str, cls: type, table: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    for key in table:
        if key not in names:
            known = ", ".join(sorted(names))
            raise ConfigError(f"{prefix}.{key}", f"unknown option (known: {known})")
    kwargs: dict[str, Any] = {}
    for name, f in names.items():
        if name not in table:
            continue
        dotted = f"{prefix}.{name}"
        value = _coerce(dotted, hints[name], table[name])
        check = f.metadata.get("check")
        if check is not None:
            problem = check(value)
            if problem:
                raise ConfigError(dotted, problem)
        kwargs[name] = value
    return cls(**kwargs)


def _parse_override(raw: str) -> Any:
    """Parse a command-line value as a TOML literal, falling back to a bare string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _field_type(parts: list[str]) -> Any:
    """The declared type of a dotted option, or None when it is not a known option."""
    cls: Any = Config
    tp: Any = None
    for part in parts:
        if not dataclasses.is_dataclass(cls):
            return None
        tp = typing.get_type_hints(cls).get(part)
        if tp is None:
            return None
        cls = tp
    return tp


def _merge_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    for dotted, raw in overrides.items():
        parts = dotted.split(".")
        if len(parts) < 2:
            raise ConfigError(dotted, "override keys look like section.key")
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(dotted, f"{part} is not a table")
            node = child
        if isinstance(raw, str) and _field_type(parts) is not str:
            raw = _parse_override(raw)
        node[parts[-1]] = raw


def _validate_cross(config: Config) -> None:
    """Rules that involve several options."""
    lim = config.limits
    if lim.outbound_hard_bytes <= lim.outbound_soft_bytes:
        raise ConfigError("limits.outbound_hard_bytes", "must be greater than outbound_soft_bytes")
    if lim.messages_burst < lim.max_events_per_frame:
        raise ConfigError(
            "limits.messages_burst",
            "must be at least limits.max_events_per_frame (one event costs one token, "
            "so a full frame could never pass)",
        )
    if config.tick.critical_hz % config.tick.normal_hz:
        raise ConfigError("tick.normal_hz", "must divide tick.critical_hz (one loop drives both)")
    for i, key in enumerate(config.auth.keys):
        where = f"auth.keys[{i}]"
        if not key.kid:
            raise ConfigError(f"{where}.kid", "every key needs a kid")
        sources = [s for s in (key.secret_env, key.secret_file, key.public_key_file) if s]
        if len(sources) != 1:
            raise ConfigError(where, "set exactly one of secret_env, secret_file, public_key_file")
        is_hmac = key.algorithm in HMAC_ALGORITHMS
        if is_hmac and key.public_key_file:
            raise ConfigError(
                f"{where}.public_key_file", "HMAC keys take secret_env or secret_file"
            )
        if not is_hmac and not key.public_key_file:
            raise ConfigError(f"{where}.public_key_file", f"{key.algorithm} needs a public key")
        if key.algorithm not in config.auth.algorithms:
            raise ConfigError(f"{where}.algorithm", "not in auth.algorithms")
    kids = [k.kid for k in config.auth.keys]
    if len(kids) != len(set(kids)):
        raise ConfigError("auth.keys", "kid values must be unique")
    if config.dev_mode and not _is_loopback_endpoint(config.server.listen):
        raise ConfigError(
            "auth.keys",
            "no signing keys configured (development mode) but server.listen is not loopback; "
            "configure auth.keys or auth.jwks_url before listening on other interfaces",
        )
    jwks = config.auth.jwks_url
    if jwks and not jwks.startswith("https://") and not _is_loopback_url(jwks):
        raise ConfigError("auth.jwks_url", "must use https (keys fetched over http can be forged)")
    if not config.auth.algorithms:
        raise ConfigError("auth.algorithms", "must allow at least one algorithm")
    if (
        config.admin.listen
        and not _is_loopback_endpoint(config.admin.listen)
        and not config.admin.token_env
    ):
        raise ConfigError(
            "admin.token_env", "required when admin.listen is not loopback (it exposes /debug)"
        )
    if config.manhole.listen and not config.manhole.authorized_keys:
        raise ConfigError("manhole.authorized_keys", "required when manhole.listen is set")
    if config.manhole.listen and not config.manhole.host_key:
        raise ConfigError("manhole.host_key", "required when manhole.listen is set")
    if config.backend.type == "redis" and not (
        config.backend.redis_url or config.backend.sentinels
    ):
        raise ConfigError("backend.redis_url", "required when backend.type is redis")
    if config.backend.sentinels and not config.backend.sentinel_master:
        raise ConfigError("backend.sentinel_master", "required with backend.sentinels")


def _split_endpoint(description: str) -> list[str]:
    """Split an endpoint string on unescaped colons (``\\:`` is a literal colon)."""
    parts, current, escaped = [], "", False
    for ch in description:
        if escaped:
            current += ch
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ":":
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return parts


def _is_loopback_url(url: str) -> bool:
    from urllib.parse import urlparse

    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_loopback_endpoint(description: str) -> bool:
    """True when an endpoint string can only be reached from this machine."""
    scheme, *args = _split_endpoint(description)
    if scheme == "unix":
        return True
    if scheme not in {"tcp", "tcp6", "ssl"}:
        return False
    interface = ""
    for part in args:
        if part.startswith("interface="):
            interface = part.split("=", 1)[1]
    if interface == "localhost":
        return True
    try:
        return bool(interface) and ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False


def load(
    path: str | os.PathLike[str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Config:
    """Read ``path`` (TOML, optional), apply dotted ``overrides``, validate everything."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            with p.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError("--config", f"file not found: {p}")
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("--config", f"{p} is not valid TOML: {exc}")
    _merge_overrides(data, dict(overrides or {}))
    plugin_tables = data.pop("plugin", {})
    if not isinstance(plugin_tables, dict) or not all(
        isinstance(v, dict) for v in plugin_tables.values()
    ):
        raise ConfigError("plugin", "must hold one table per plugin: [plugin.<name>]")
    hints = typing.get_type_hints(Config)
    sections: dict[str, Any] = {}
    for name, value in data.items():
        if name not in hints or name == "plugin":
            known = ", ".join(sorted(h for h in hints if h != "plugin"))
            raise ConfigError(name, f"unknown section (known: {known}, plugin.<name>)")
        sections[name] = _coerce(name, hints[name], value)
    config = Config(**sections, plugin=types.MappingProxyType(dict(plugin_tables)))
    _validate_cross(config)
    return config


def parse_section(prefix: str, cls: type[Any], table: Mapping[str, Any]) -> Any:
    """Build a plugin's own frozen dataclass from its ``[plugin.<name>]`` table."""
    return _build(prefix, cls, table)


def read_secret(key: str, env: str = "", file: str = "") -> bytes:
    """Read a secret named by an ``*_env`` or ``*_file`` option; errors name the key."""
    if env:
        value = os.environ.get(env)
        if not value:
            raise ConfigError(key, f"environment variable {env} is not set")
        return value.encode()
    if file:
        try:
            return Path(file).read_bytes().strip()
        except OSError as exc:
            raise ConfigError(key, f"cannot read {file}: {exc.strerror}")
    raise ConfigError(key, "no secret source configured")
