"""The SSH manhole: key handling, config errors, and real SSH sessions over loopback.

The end-to-end tests start the real service on ``tcp:0:interface=127.0.0.1``
(the address comes from ``ManholeService.port``) and connect with an SSH
client built from twisted.conch: conch's ``SSHCommandClientEndpoint`` only
does ``exec``, and the manhole serves shells, so ``ShellClient`` below opens a
session channel with ``pty-req`` + ``shell`` like ``ssh`` does.  Every key is
generated into ``tmp_path``; nothing is committed.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.conch.error import ConchError
from twisted.conch.ssh import channel, connection, keys, session, transport, userauth
from twisted.internet import defer, protocol, tcp
from twisted.internet.error import ConnectionRefusedError
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from gateway.config import ConfigError, ManholeConfig
from gateway.manhole import ManholeService, fingerprint, make_manhole_service

TIMEOUT = 10.0


def _reactor() -> Any:
    """The reactor pytest-twisted runs; imported late, never at module level."""
    from twisted.internet import reactor

    return reactor


# --------------------------------------------------------------------------- keys and files


def new_ed25519() -> keys.Key:
    return keys.Key(ed25519.Ed25519PrivateKey.generate())


def public_line(key: keys.Key, comment: bytes = b"") -> bytes:
    line = key.public().toString("openssh")
    return line + (b" " + comment if comment else b"")


def write_authorized_keys(path: Path, *lines: bytes) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    path.chmod(0o600)
    return path


def write_private_key(path: Path, private: Any, fmt: serialization.PrivateFormat) -> Path:
    data = private.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def manhole_config(tmp_path: Path, host: Path | None = None) -> ManholeConfig:
    return ManholeConfig(
        listen="tcp:0:interface=127.0.0.1",
        authorized_keys=str(tmp_path / "authorized_keys"),
        host_key=str(host or tmp_path / "host_key"),
    )


@pytest.fixture
def client_key() -> keys.Key:
    return new_ed25519()


@pytest.fixture
def authorized(tmp_path: Path, client_key: keys.Key) -> Path:
    return write_authorized_keys(
        tmp_path / "authorized_keys",
        b"# operators",
        b"",
        public_line(client_key, b"ops@example"),
    )


@pytest.fixture
def log_events():
    """Every log event emitted during the test (the manhole's and conch's)."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def logged_errors(events: list[dict[str, Any]]) -> list[str]:
    """Tracebacks and error-level events, whether from new-style or legacy logging.

    Legacy ``log.err`` (e.g. an exception escaping ``dataReceived``) arrives as
    an ``isError`` event with the traceback already in its text.
    """
    return [
        formatEvent(e)
        for e in events
        if "log_failure" in e
        or e.get("isError")
        or e.get("log_level") in (LogLevel.error, LogLevel.critical)
    ]


def manhole_messages(events: list[dict[str, Any]], level: LogLevel) -> list[str]:
    return [
        formatEvent(e)
        for e in events
        if e.get("log_namespace") == "gateway.manhole" and e.get("log_level") == level
    ]


@pytest.fixture
def no_leaks():
    """Fail if a test leaves timers, sockets or connections behind.

    pytest-twisted does not check this, so compare the reactor's delayed calls
    and selectables before and after the test.
    """
    reactor = _reactor()

    def sockets():
        # Only TCP ports and connections: the reactor adds its own wakers lazily.
        selectables = [*reactor.getReaders(), *reactor.getWriters()]
        return {s for s in selectables if isinstance(s, tcp.Connection | tcp.Port)}

    calls, before = set(reactor.getDelayedCalls()), sockets()
    yield
    assert [c for c in reactor.getDelayedCalls() if c not in calls and c.active()] == []
    assert sockets() - before == set()


# --------------------------------------------------------------------------- an SSH shell client


class ShellClient(protocol.ClientFactory):
    """A minimal interactive ``ssh``: public-key login, then a session channel.

    ``opened`` fires with the shell channel once the server accepted the
    shell; ``lost`` fires when the TCP connection is gone.  ``disconnect``
    records why the client gave up (e.g. no more authentication methods).
    """

    def __init__(
        self,
        user_key: keys.Key,
        host_key: keys.Key,
        username: bytes = b"anyname",
        pty: bool = True,
        command: bytes | None = None,
    ) -> None:
        self.user_key = user_key
        self.host_key = host_key
        self.username = username
        self.pty = pty
        self.command = command
        self.authenticated = False
        self.disconnect: tuple[int, bytes] | None = None
        self.opened: defer.Deferred[ShellChannel] = defer.Deferred()
        self.channel: ShellChannel | None = None
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.protocol_instance: ClientTransport | None = None

    def buildProtocol(self, addr):
        self.protocol_instance = ClientTransport()
        self.protocol_instance.factory = self
        return self.protocol_instance

    def clientConnectionFailed(self, connector, reason):
        self.lost.errback(reason)


class ClientTransport(transport.SSHClientTransport):
    factory: ShellClient

    def verifyHostKey(self, pubKey, fingerprint):
        if keys.Key.fromString(pubKey) == self.factory.host_key.public():
            return defer.succeed(True)
        return defer.fail(ConchError("unexpected host key"))

    def connectionSecure(self):
        self.requestService(ClientAuth(self.factory, ClientConnection(self.factory)))

    def sendDisconnect(self, reason, desc):
        self.factory.disconnect = (reason, desc)
        super().sendDisconnect(reason, desc)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        if not self.factory.opened.called:
            self.factory.opened.errback(ConchError("connection lost before the shell opened"))
        self.factory.lost.callback(None)


class ClientAuth(userauth.SSHUserAuthClient):
    def __init__(self, client: ShellClient, instance: connection.SSHConnection) -> None:
        super().__init__(client.username, instance)
        self.client = client
        self.offered = False

    def getPublicKey(self):
        if self.offered:
            return None
        self.offered = True
        return self.client.user_key.public()

    def getPrivateKey(self):
        return defer.succeed(self.client.user_key)

    def getPassword(self, prompt=None):
        return None  # never: the server must not even offer it


class ClientConnection(connection.SSHConnection):
    def __init__(self, client: ShellClient) -> None:
        super().__init__()
        self.client = client

    def serviceStarted(self):
        super().serviceStarted()
        self.client.authenticated = True
        self.client.channel = ShellChannel(self.client, conn=self)
        self.openChannel(self.client.channel)


class ShellChannel(channel.SSHChannel):
    name = b"session"

    def __init__(self, client: ShellClient, **kw: Any) -> None:
        super().__init__(**kw)
        self.client = client
        self.output = b""
        self.stderr = b""
        self.exit_status: int | None = None
        self._waiting: list[tuple[bytes, defer.Deferred[bytes]]] = []
        self.closed_d: defer.Deferred[None] = defer.Deferred()

    @defer.inlineCallbacks
    def channelOpen(self, specificData):
        try:
            if self.client.pty:
                term = session.packRequest_pty_req(b"xterm", (24, 80, 0, 0), b"")
                yield self.conn.sendRequest(self, b"pty-req", term, wantReply=True)
            if self.client.command is None:
                yield self.conn.sendRequest(self, b"shell", b"", wantReply=True)
            else:
                request = struct.pack(">L", len(self.client.command)) + self.client.command
                yield self.conn.sendRequest(self, b"exec", request, wantReply=True)
        except Exception as exc:
            self.client.opened.errback(exc)
        else:
            self.client.opened.callback(self)

    def dataReceived(self, data):
        self.output += data
        for expected, d in list(self._waiting):
            if expected in self.output:
                self._waiting.remove((expected, d))
                if not d.called:  # not already timed out
                    d.callback(self.output)

    def extReceived(self, dataType, data):
        self.stderr += data

    def request_exit_status(self, data):
        (self.exit_status,) = struct.unpack(">L", data)
        return True

    def closed(self):
        self.closed_d.callback(None)
        for _, d in self._waiting:
            if not d.called:
                d.errback(ConchError(f"channel closed; output so far {self.output!r}"))
        self._waiting = []

    def send_line(self, line: bytes) -> None:
        self.write(line + b"\r")

    def wait_for(self, expected: bytes) -> defer.Deferred[bytes]:
        """Fires with the output so far once ``expected`` appears in it."""
        if expected in self.output:
            return defer.succeed(self.output)
        d: defer.Deferred[bytes] = defer.Deferred()
        self._waiting.append((expected, d))
        return d.addTimeout(TIMEOUT, _reactor())


def connect(svc: ManholeService, client: ShellClient) -> ShellClient:
    assert svc.port is not None, "the manhole is not listening"
    _reactor().connectTCP("127.0.0.1", svc.port.getHost().port, client, timeout=TIMEOUT)
    return client


async def disconnect(client: ShellClient) -> None:
    """Drop the client's TCP connection, if any, and wait until it is gone."""
    if client.protocol_instance is not None and not client.lost.called:
        client.protocol_instance.transport.loseConnection()
    await client.lost


@asynccontextmanager
async def running(svc: ManholeService) -> AsyncIterator[ManholeService]:
    """Start the manhole; on exit stop it and wait until port and sessions are closed."""
    svc.startService()
    try:
        yield svc
    finally:
        await svc.stopService().addTimeout(TIMEOUT, _reactor())
        assert svc.factory.connections == set()


def host_key_of(config: ManholeConfig) -> keys.Key:
    return keys.Key.fromString(Path(config.host_key).read_bytes())


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("host_key_kind", ["generated-ed25519", "pem-rsa", "openssh-ecdsa"])
@pytest_twisted.ensureDeferred
async def test_authorized_key_gets_a_shell_on_the_live_namespace(
    tmp_path, authorized, client_key, log_events, no_leaks, host_key_kind
):
    host = tmp_path / "host_key"
    if host_key_kind == "pem-rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        write_private_key(host, private, serialization.PrivateFormat.TraditionalOpenSSL)
    elif host_key_kind == "openssh-ecdsa":
        private = ec.generate_private_key(ec.SECP256R1())
        write_private_key(host, private, serialization.PrivateFormat.OpenSSH)
    state = {"name": "before-start", "calls": 0}

    def namespace():
        state["calls"] += 1
        return {"gateway_name": state["name"]}

    svc = make_manhole_service(manhole_config(tmp_path), namespace)
    state["name"] = "eu-west-7"  # changed after build: a live namespace must see it
    async with running(svc):
        client = connect(svc, ShellClient(client_key, host_key_of(manhole_config(tmp_path))))
        shell = await client.opened
        await shell.wait_for(b">>> ")
        shell.send_line(b"gateway_name")
        await shell.wait_for(b"'eu-west-7'")
        shell.send_line(b"1+41")
        await shell.wait_for(b"\r\n42\r\n")
        await disconnect(client)
    assert client.authenticated
    assert state["calls"] == 1
    assert logged_errors(log_events) == []
    logins = manhole_messages(log_events, LogLevel.info)
    assert any("login: user 'anyname'" in m and fingerprint(client_key) in m for m in logins)
    # The unsigned "is this key acceptable?" probe is not a refusal.
    assert manhole_messages(log_events, LogLevel.warn) == []


@pytest_twisted.ensureDeferred
async def test_any_username_and_dict_namespace_copied_per_session(
    tmp_path, authorized, client_key, log_events, no_leaks
):
    shared = {"answer": 42}
    svc = make_manhole_service(manhole_config(tmp_path), shared)
    host_key = host_key_of(manhole_config(tmp_path))
    async with running(svc):
        first = connect(svc, ShellClient(client_key, host_key, username=b"root"))
        shell = await first.opened
        shell.send_line(b"answer = answer + 1; leaked = 'yes'")
        shell.send_line(b"answer")
        await shell.wait_for(b"\r\n43\r\n")
        await disconnect(first)

        second = connect(svc, ShellClient(client_key, host_key, username=b"someone-else"))
        shell = await second.opened
        shell.send_line(b"answer")
        await shell.wait_for(b"\r\n42\r\n")
        shell.send_line(b"leaked")
        await shell.wait_for(b"NameError")
        await disconnect(second)
    assert shared == {"answer": 42}
    assert logged_errors(log_events) == []


@pytest_twisted.ensureDeferred
async def test_unauthorized_key_is_refused(tmp_path, authorized, log_events, no_leaks):
    calls: list[int] = []
    svc = make_manhole_service(manhole_config(tmp_path), lambda: calls.append(1) or {})
    stranger = new_ed25519()
    async with running(svc):
        client = connect(svc, ShellClient(stranger, host_key_of(manhole_config(tmp_path))))
        with pytest.raises(ConchError):
            await client.opened
        await client.lost
    assert not client.authenticated
    assert client.disconnect is not None
    assert client.disconnect[0] == transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE
    assert calls == []
    refused = manhole_messages(log_events, LogLevel.warn)
    assert len(refused) == 1
    assert "refused: user 'anyname'" in refused[0] and fingerprint(stranger) in refused[0]


@pytest_twisted.ensureDeferred
async def test_authorized_keys_are_reread_at_each_login(
    tmp_path, authorized, client_key, log_events, no_leaks
):
    svc = make_manhole_service(manhole_config(tmp_path), {"x": 1})
    host_key = host_key_of(manhole_config(tmp_path))
    newcomer = new_ed25519()
    async with running(svc):
        refused = connect(svc, ShellClient(newcomer, host_key))
        with pytest.raises(ConchError):
            await refused.opened
        await refused.lost

        with authorized.open("ab") as f:
            f.write(public_line(newcomer) + b"\n")
        accepted = connect(svc, ShellClient(newcomer, host_key))
        await accepted.opened
        await disconnect(accepted)

        # Deleting the file locks everyone out of the running daemon.
        authorized.unlink()
        locked_out = connect(svc, ShellClient(client_key, host_key))
        with pytest.raises(ConchError):
            await locked_out.opened
        await locked_out.lost
    assert not locked_out.authenticated
    errors = manhole_messages(log_events, LogLevel.error)
    assert any("does not exist" in m for m in errors)


@pytest_twisted.ensureDeferred
async def test_window_change_no_pty_and_eof_are_handled(
    tmp_path, authorized, client_key, log_events, no_leaks
):
    svc = make_manhole_service(manhole_config(tmp_path), {})
    host_key = host_key_of(manhole_config(tmp_path))
    async with running(svc):
        client = connect(svc, ShellClient(client_key, host_key, pty=False))  # like ssh -T
        shell = await client.opened
        size = session.packRequest_window_change((50, 132, 0, 0))
        shell.conn.sendRequest(shell, b"window-change", size)
        shell.send_line(b"6*7")
        await shell.wait_for(b"\r\n42\r\n")
        shell.conn.sendEOF(shell)
        await shell.closed_d.addTimeout(TIMEOUT, _reactor())
        await disconnect(client)
    assert logged_errors(log_events) == []


@pytest_twisted.ensureDeferred
async def test_exec_is_refused_with_a_message(
    tmp_path, authorized, client_key, log_events, no_leaks
):
    svc = make_manhole_service(manhole_config(tmp_path), {})
    host_key = host_key_of(manhole_config(tmp_path))
    async with running(svc):
        client = connect(svc, ShellClient(client_key, host_key, pty=False, command=b"ls"))
        with pytest.raises(ConchError, match="request failed"):
            await client.opened
        await disconnect(client)
    assert client.channel is not None
    assert b"commands are not supported" in client.channel.stderr
    assert logged_errors(log_events) == []


@pytest_twisted.ensureDeferred
async def test_stopping_closes_sessions_and_the_port(tmp_path, authorized, client_key, no_leaks):
    svc = make_manhole_service(manhole_config(tmp_path), {})
    host_key = host_key_of(manhole_config(tmp_path))
    svc.startService()
    assert svc.port is not None
    port_number = svc.port.getHost().port
    client = connect(svc, ShellClient(client_key, host_key))
    await client.opened
    await svc.stopService().addTimeout(TIMEOUT, _reactor())
    assert svc.port is None
    await client.lost.addTimeout(TIMEOUT, _reactor())

    late = ShellClient(client_key, host_key)
    _reactor().connectTCP("127.0.0.1", port_number, late, timeout=TIMEOUT)
    with pytest.raises(ConnectionRefusedError):
        await late.lost


# --------------------------------------------------------------------------- host key


def test_host_key_generated_0600_then_reused(tmp_path, authorized, log_events):
    config = manhole_config(tmp_path)
    host = Path(config.host_key)
    first = make_manhole_service(config, {})
    assert stat.S_IMODE(host.stat().st_mode) == 0o600
    key = host_key_of(config)
    assert key.type() == "Ed25519"
    assert not key.isPublic()
    assert first.host_key_fingerprint == fingerprint(key)

    generated = [m for m in manhole_messages(log_events, LogLevel.info) if "Generated" in m]
    assert len(generated) == 1
    assert str(host) in generated[0] and fingerprint(key) in generated[0]
    everything_logged = "\n".join(formatEvent(e) + repr(e) for e in log_events)
    body = b"".join(host.read_bytes().splitlines()[1:-1]).decode()
    assert "PRIVATE" not in everything_logged
    assert body[-40:] not in everything_logged

    before = host.read_bytes()
    second = make_manhole_service(config, {})
    assert host.read_bytes() == before
    assert second.host_key_fingerprint == first.host_key_fingerprint
    assert len([m for m in manhole_messages(log_events, LogLevel.info) if "Generated" in m]) == 1


def test_fingerprint_matches_ssh_keygen_format():
    key = keys.Key.fromString(
        b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOqrQQJD/1vFDcrfI1YSqTNfsfhQjd1pWoeyIRnAQaTw"
    )
    # As printed by `ssh-keygen -lf` for this key.
    assert fingerprint(key) == "SHA256:NXhvA8VezfzmctcFqssVN+ZTfl0kUbOP23R9gTiJ/84"


# --------------------------------------------------------------------------- config errors


def expect_config_error(config: ManholeConfig, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_manhole_service(config, {})
    message = str(info.value)
    assert message.startswith(f"{key}: "), message
    assert reason in message, message


def test_missing_authorized_keys(tmp_path):
    expect_config_error(manhole_config(tmp_path), "manhole.authorized_keys", "does not exist")
    assert not (tmp_path / "host_key").exists()  # nothing generated for a config that fails


def test_unreadable_authorized_keys(tmp_path):
    (tmp_path / "authorized_keys").mkdir()
    expect_config_error(manhole_config(tmp_path), "manhole.authorized_keys", "cannot read")


@pytest.mark.parametrize(
    ("lines", "reason"),
    [
        ((b"# only a comment", b""), "no valid public key"),
        ((b"ssh-ed25519 AAAAnotbase64", b"ssh-ed25519"), "line 1: not an OpenSSH public key"),
        ((b"#", b"hello world"), "line 2: not an OpenSSH public key"),
        ((b'from="10.0.0.1" ' + public_line(new_ed25519()),), "line 1: key options"),
        ((b"restrict " + public_line(new_ed25519()),), "line 1: key options"),
    ],
)
def test_bad_authorized_keys(tmp_path, lines, reason):
    write_authorized_keys(tmp_path / "authorized_keys", *lines)
    expect_config_error(manhole_config(tmp_path), "manhole.authorized_keys", reason)


def test_group_writable_authorized_keys(tmp_path, authorized):
    authorized.chmod(0o664)
    expect_config_error(manhole_config(tmp_path), "manhole.authorized_keys", "writable by group")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_host_key_readable_by_others_is_refused(tmp_path, authorized, mode):
    host = write_private_key(
        tmp_path / "host_key",
        ed25519.Ed25519PrivateKey.generate(),
        serialization.PrivateFormat.OpenSSH,
    )
    host.chmod(mode)
    expect_config_error(manhole_config(tmp_path), "manhole.host_key", "accessible by group")


def test_bad_host_keys(tmp_path, authorized):
    host = tmp_path / "host_key"
    cases: list[tuple[bytes, str]] = [
        (b"not a key", "not an OpenSSH or PEM private key"),
        (public_line(new_ed25519()), "is a public key"),
        (
            ed25519.Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.BestAvailableEncryption(b"secret"),
            ),
            "passphrase-protected",
        ),
    ]
    for data, reason in cases:
        host.write_bytes(data)
        host.chmod(0o600)
        expect_config_error(manhole_config(tmp_path), "manhole.host_key", reason)
        assert host.read_bytes() == data  # never overwritten


def test_host_key_directory_missing(tmp_path, authorized):
    config = manhole_config(tmp_path, host=tmp_path / "nowhere" / "host_key")
    expect_config_error(config, "manhole.host_key", "does not exist")


def test_empty_settings_and_bad_endpoint(tmp_path, authorized):
    base = manhole_config(tmp_path)
    expect_config_error(ManholeConfig(), "manhole.listen", "disabled")
    expect_config_error(
        ManholeConfig(listen=base.listen, host_key=base.host_key),
        "manhole.authorized_keys",
        "required",
    )
    expect_config_error(
        ManholeConfig(listen=base.listen, authorized_keys=base.authorized_keys),
        "manhole.host_key",
        "required",
    )
    bad = ManholeConfig("tcp:notaport", base.authorized_keys, base.host_key)
    expect_config_error(bad, "manhole.listen", "bad endpoint")


def test_generated_host_key_is_0600_whatever_the_umask(tmp_path, authorized):
    old = os.umask(0o277)
    try:
        make_manhole_service(manhole_config(tmp_path), {})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "host_key").stat().st_mode) == 0o600
