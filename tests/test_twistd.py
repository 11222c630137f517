"""The real daemon, ``twistd -n rtgateway``, as a subprocess.

Everything else in the suite builds the service tree in-process; these tests
check what only the real command line shows: the twistd plugin is found, the
options reach the configuration, a bad option stops start-up with a message
naming the key, development mode works with the token tool, and SIGTERM
drains and exits.

The daemon runs with ``sys.executable`` (``twisted.scripts.twistd.run``, the
same function the ``twistd`` console script calls; note that
``python -m twisted`` is the different ``twist`` runner).  The repository root
is put first on ``PYTHONPATH`` so that the working tree's ``gateway`` and its
``twisted/plugins`` dropin are used whether or not the package is installed.
Every listener is on 127.0.0.1 port 0 (``--listen``/``--admin``: command-line
overrides, no configuration file), and the port is read from the log line
``websocket listening on ...``, so parallel runs never collide on 8080.
Every wait is bounded, and every process is killed at the end of its test.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from protocol import events_pb2

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = REPO / "conf" / "rtgateway.toml"
SUBPROTOCOL = "rtgateway.v1"
LOOPBACK_0 = "tcp:0:interface=127.0.0.1"

# argv[0] is set so that usage errors read "twistd: ..." as they do from the console script.
TWISTD = [
    sys.executable,
    "-c",
    "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()",
]

START_TIMEOUT = 30.0  # a cold interpreter importing Twisted, Autobahn, protobuf; busy CI
EXIT_TIMEOUT = 30.0
WS_TIMEOUT = 5.0
GRACE = 1.0
AFTER_GRACE = 8.0  # SIGTERM to exit: the grace, the close handshakes, the shutdown

LISTENING = re.compile(r"websocket listening on .*port=(\d+)")
READY = re.compile(r"rtgateway instance \S+ ready")


# --------------------------------------------------------------------------- the daemon


class Daemon:
    """One ``twistd -n rtgateway`` process; stdout and stderr are read as one stream."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.argv = [*TWISTD, "--nodaemon", "--pidfile=", "rtgateway", *args]
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            text=True,
            bufsize=1,
        )
        self.lines: list[str] = []
        self._eof = False
        self._changed = threading.Condition()  # an RLock: ``output`` may be read while held
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, pattern: re.Pattern[str], timeout: float = START_TIMEOUT) -> re.Match[str]:
        """The first output line matching ``pattern``; fails on timeout or process exit."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    match = pattern.search(line)
                    if match:
                        return match
                seen = len(self.lines)
                if self._eof:
                    pytest.fail(f"twistd exited before {pattern.pattern!r}:\n{self.output}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(f"no {pattern.pattern!r} within {timeout}s:\n{self.output}")
                self._changed.wait(remaining)

    def started(self) -> int:
        """Wait until ready; return the WebSocket port."""
        port = int(self.wait_for(LISTENING).group(1))
        self.wait_for(READY)
        return port

    def wait_exit(self, timeout: float = EXIT_TIMEOUT) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"twistd still running after {timeout}s:\n{self.output}")
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover - the kernel did not reap it
                pass
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The environment of the daemon and the token tool: test-local dev key, no stray secrets."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("RTGATEWAY_") and k not in ("PYTHONPATH", "XDG_STATE_HOME")
    }
    clean["PYTHONPATH"] = str(REPO)
    clean["RTGATEWAY_DEV_KEY_FILE"] = str(tmp_path / "state" / "dev-signing.key")
    clean["XDG_STATE_HOME"] = str(tmp_path / "state")  # nothing may land in the real home
    clean["PYTHONUNBUFFERED"] = "1"
    return clean


@pytest.fixture
def daemon(tmp_path: Path, env: dict[str, str]) -> Iterator[Callable[..., Daemon]]:
    """daemon(*args, env_=None) -> a started (not yet ready) Daemon, killed after the test."""
    started: list[Daemon] = []

    def start(*args: str, env_: dict[str, str] | None = None) -> Daemon:
        d = Daemon(list(args), env_ if env_ is not None else env, tmp_path)
        started.append(d)
        return d

    try:
        yield start
    finally:
        for d in started:
            d.kill()


def run_tool(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=env,
        cwd=cwd,
        text=True,
        timeout=30,
        check=False,
    )


def mint(env: dict[str, str], cwd: Path, *extra: str) -> str:
    result = run_tool(["-m", "gateway.tools.token", "--sub", "alice", *extra], env, cwd)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert token.count(".") == 2 and "\n" not in token, result.stdout  # only the JWT on stdout
    return token


# --------------------------------------------------------------------------- a wire client


def hello_frame() -> bytes:
    hello = events_pb2.Hello(client_name="test_twistd")  # no compression offered
    env = events_pb2.Envelope(type="system.hello", payload=hello.SerializeToString())
    return events_pb2.Frame(envelopes=[env]).SerializeToString()


def envelopes(data: Any) -> list[events_pb2.Envelope]:
    assert isinstance(data, bytes), "the protocol is binary only"
    frame = events_pb2.Frame.FromString(data)
    assert frame.compression == events_pb2.COMPRESSION_NONE
    return list(frame.envelopes)


@contextmanager
def session(port: int, token: str) -> Iterator[tuple[ClientConnection, events_pb2.Welcome]]:
    """Upgrade with the token in the Authorization header, say hello, yield the Welcome."""
    with connect(
        f"ws://127.0.0.1:{port}/ws",
        subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
        additional_headers={"Authorization": f"Bearer {token}"},
        open_timeout=WS_TIMEOUT,
        close_timeout=WS_TIMEOUT,
        ping_interval=None,
        compression=None,
        proxy=None,  # loopback: never through a proxy named in the environment
    ) as ws:
        assert ws.subprotocol == SUBPROTOCOL
        ws.send(hello_frame())
        deadline = time.monotonic() + WS_TIMEOUT
        while True:
            data = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
            welcome = [e for e in envelopes(data) if e.type == "system.welcome"]
            if welcome:
                break
        yield ws, events_pb2.Welcome.FromString(welcome[0].payload)


# --------------------------------------------------------------------------- (a) dev mode


def test_no_config_runs_in_development_mode_and_accepts_the_tools_token(
    daemon: Callable[..., Daemon], env: dict[str, str], tmp_path: Path
) -> None:
    d = daemon("--listen", LOOPBACK_0, "--admin", LOOPBACK_0)
    d.wait_for(re.compile("DEVELOPMENT MODE"))
    port = d.started()

    key = Path(env["RTGATEWAY_DEV_KEY_FILE"])
    assert key.stat().st_mode & 0o777 == 0o600

    token = mint(env, tmp_path)
    with session(port, token) as (_ws, welcome):
        assert welcome.player_id == "alice"
        assert welcome.session_id
        assert welcome.heartbeat_interval_s == 10
        assert welcome.limits.max_message_size == 65536

    # A token from another key is refused before the upgrade.
    other = dict(env, RTGATEWAY_DEV_KEY_FILE=str(tmp_path / "other.key"))
    with pytest.raises(InvalidStatus) as refused, session(port, mint(other, tmp_path)):
        pass
    assert refused.value.response.status_code == 401
    assert token not in d.output  # tokens are never logged


# --------------------------------------------------------------------------- (b) SIGTERM


def test_sigterm_drains_closes_1001_and_exits(
    daemon: Callable[..., Daemon], env: dict[str, str], tmp_path: Path
) -> None:
    d = daemon("--listen", LOOPBACK_0, "--admin", LOOPBACK_0,
               "--set", f"shutdown.grace_seconds={GRACE}")
    port = d.started()
    seen: list[events_pb2.Envelope] = []
    with session(port, mint(env, tmp_path)) as (ws, _welcome):
        started = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as closed:
            deadline = started + GRACE + WS_TIMEOUT
            while time.monotonic() < deadline:
                seen.extend(envelopes(ws.recv(timeout=max(0.1, deadline - time.monotonic()))))
    types = [e.type for e in seen]  # plugins' own events (world.time, ...) may come too
    assert types.count("server.draining") == 1, types
    draining = events_pb2.Draining.FromString(
        next(e for e in seen if e.type == "server.draining").payload
    )
    assert draining.grace_ms == int(GRACE * 1000)
    assert closed.value.rcvd is not None, "the server dropped TCP without a close frame"
    assert closed.value.rcvd.code == 1001
    assert time.monotonic() - started >= GRACE - 0.5  # the grace period was honoured

    code = d.wait_exit(GRACE + AFTER_GRACE)
    # twistd re-raises SIGTERM on itself after a clean shutdown (twisted.application.app
    # _exitWithSignal), so a clean stop is 0 or "killed by SIGTERM"; systemd counts
    # both as success. Anything else (1, a traceback) is a failed shutdown.
    assert code == 0, d.output  # graceful SIGTERM shutdown exits 0
    assert "Traceback" not in d.output
    assert "Server Shut Down." in d.output
    assert time.monotonic() - started < GRACE + AFTER_GRACE


# --------------------------------------------------------------------------- (c) bad options


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["--set", "limits.max_message_size=abc"], "limits.max_message_size"),
        (["--config", "{bad_toml}"], "limits.bogus"),
        (["--listen", "tcp:0:interface=0.0.0.0"], "auth.keys"),
        (["--set", "nosuchsection.x=1"], "nosuchsection"),
    ],
    ids=["set-not-an-integer", "unknown-key-in-file", "non-loopback-without-keys",
         "unknown-section"],
)
def test_bad_option_stops_start_up_naming_the_key(
    daemon: Callable[..., Daemon], tmp_path: Path, args: list[str], key: str
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[limits]\nbogus = 1\n")
    d = daemon(*(a.format(bad_toml=bad) for a in args))
    code = d.wait_exit()
    assert code != 0, d.output
    assert f"{key}:" in d.output, d.output
    assert not LISTENING.search(d.output)
    assert "Traceback" not in d.output


# --------------------------------------------------------------------------- (d) example config


def test_example_config_without_its_secret_exits_naming_it(
    daemon: Callable[..., Daemon],
) -> None:
    d = daemon("--config", str(EXAMPLE_CONFIG), "--listen", LOOPBACK_0, "--admin", LOOPBACK_0)
    code = d.wait_exit()
    assert code != 0, d.output
    assert "auth.keys[0].secret_env" in d.output, d.output
    assert "RTGATEWAY_JWT_SECRET" in d.output
    assert not LISTENING.search(d.output)


def test_example_config_with_its_secrets_starts(
    daemon: Callable[..., Daemon], env: dict[str, str], tmp_path: Path
) -> None:
    secret_env = dict(
        env,
        RTGATEWAY_JWT_SECRET="s" * 40,
        RTGATEWAY_ADMIN_TOKEN="admin-token-for-the-test",  # admin.token_env in the example
    )
    d = daemon("--config", str(EXAMPLE_CONFIG), "--listen", LOOPBACK_0, "--admin", LOOPBACK_0,
               "--set", "shutdown.grace_seconds=0", env_=secret_env)
    port = d.started()
    assert "DEVELOPMENT MODE" not in d.output

    # The token tool signs with the configured key exactly as a game backend would.
    token = mint(secret_env, tmp_path, "--config", str(EXAMPLE_CONFIG))
    with session(port, token) as (_ws, welcome):
        assert welcome.player_id == "alice"

    d.proc.send_signal(signal.SIGTERM)
    assert d.wait_exit() == 0, d.output
