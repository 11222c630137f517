"""``twistd rtgateway``: command-line options and the service tree.

Configuration problems are found in ``postOptions`` (file, overrides,
secrets), so that twistd reports them as a usage error naming the key and
exits non-zero before anything listens.
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from gateway.config import Config, ConfigError, load, read_secret

__all__ = ["Options", "makeService"]


class Options(usage.Options):
    synopsis = "[--config PATH] [--listen ENDPOINT] [--admin ENDPOINT] [--set section.key=value]"
    longdesc = (
        "Real-time gateway for multiplayer games. With no options it runs in development "
        "mode on 127.0.0.1:8080 (WebSocket at /ws) and 127.0.0.1:8081 (admin)."
    )
    optParameters = [
        ["config", "c", None, "TOML configuration file (see conf/rtgateway.toml)"],
        ["listen", "l", None, "WebSocket endpoint, e.g. tcp:8080:interface=0.0.0.0"],
        ["admin", "a", None, "admin HTTP endpoint, e.g. tcp:8081:interface=127.0.0.1"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self.overrides: dict[str, str] = {}
        self.gateway_config: Config | None = None

    def opt_set(self, assignment: str) -> None:
        """Override one option: --set limits.max_connections=20000 (repeatable)."""
        key, sep, value = assignment.partition("=")
        if not sep or not key.strip():
            raise usage.UsageError(f"--set expects section.key=value, got {assignment!r}")
        self.overrides[key.strip()] = value

    def postOptions(self) -> None:  # noqa: N802 - twisted.python.usage API
        overrides: dict[str, Any] = dict(self.overrides)
        if self["listen"]:
            overrides["server.listen"] = self["listen"]
        if self["admin"] is not None:
            overrides["admin.listen"] = self["admin"]
        try:
            config = load(self["config"], overrides)
            # Secrets and key files are read now so that a missing one stops start-up here.
            from gateway.auth import load_keys

            load_keys(config.auth)
            if config.admin.token_env:
                read_secret("admin.token_env", env=config.admin.token_env)
        except ConfigError as exc:
            raise usage.UsageError(f"configuration error: {exc}")
        self.gateway_config = config


def makeService(options: Options) -> Any:  # noqa: N802 - twistd API
    import sys

    from gateway.plugin import PluginError
    from gateway.service import build_service

    assert options.gateway_config is not None
    try:
        return build_service(options.gateway_config)
    except (ConfigError, PluginError) as exc:
        # A clean message and a non-zero exit, not a traceback.
        sys.stderr.write(f"rtgateway: {exc}\n")
        raise SystemExit(1)
