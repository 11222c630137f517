"""An SSH manhole: a Python prompt inside the running daemon, for live debugging.

A production problem is easiest to understand from inside the process that has
it: the live connection registry, the real session objects, the actual config.
The manhole is Twisted's ``ColoredManhole`` (a line-editing Python REPL over
``insults``) served over SSH, so an operator can look at those objects without
restarting the daemon or attaching a debugger.

Everything typed at that prompt runs in the reactor thread with the daemon's
privileges, so access is deliberately narrow:

* SSH only (no telnet), public-key authentication only (no passwords).
* Keys come from one OpenSSH ``authorized_keys`` file.  Any user name is
  accepted when the key is listed: the key is the identity, and the user name
  only shows up in the log.  The file is re-read at each login attempt (as
  sshd does), so keys can be added or revoked without restarting the process
  being debugged; if it becomes unreadable or invalid, every login is refused.
* Only interactive shells are served: no ``exec``, no subsystems, no port
  forwarding.
* The listener is an endpoint string; the documented default binds loopback.

The host key is read from ``manhole.host_key``; on first start, when the file
does not exist, an Ed25519 key is generated and written with mode 0600 (conch
serves Ed25519 host keys whenever ``cryptography`` supports Ed25519).  Only the
path and the public fingerprint are logged.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.application.internet import StreamServerEndpointService
from twisted.conch import manhole, manhole_ssh
from twisted.conch.checkers import IAuthorizedKeysDB, SSHPublicKeyChecker
from twisted.conch.error import ValidPublicKey
from twisted.conch.insults import insults
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import connection, keys, session, transport, userauth
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.config import ConfigError, ManholeConfig

__all__ = [
    "AuthorizedKeysFile",
    "ManholeService",
    "Namespace",
    "fingerprint",
    "load_or_create_host_key",
    "make_manhole_service",
    "read_authorized_keys",
]

log = Logger()

Namespace = Callable[[], dict[str, Any]] | dict[str, Any]

_AUTHORIZED_KEYS = "manhole.authorized_keys"
_HOST_KEY = "manhole.host_key"
# Key types as they appear at the start of an authorized_keys key; a line whose
# key starts later has options in front of it.
_KEY_TYPE_PREFIXES = (b"ssh-", b"ecdsa-", b"sk-")


# --------------------------------------------------------------------------- keys


# conch's keys module is unannotated; these two helpers keep the untyped calls in one place.
def _parse_key(data: bytes) -> keys.Key:
    """``Key.fromString`` with a type: OpenSSH/PEM public or private key material."""
    return cast(keys.Key, keys.Key.fromString(data))  # type: ignore[no-untyped-call]


def _is_public(key: keys.Key) -> bool:
    return bool(key.isPublic())  # type: ignore[no-untyped-call]


def fingerprint(key: keys.Key) -> str:
    """The key's fingerprint as ``ssh-keygen -l`` prints it, so operators can compare."""
    digest = key.fingerprint(keys.FingerprintFormats.SHA256_BASE64)  # type: ignore[no-untyped-call]
    return "SHA256:" + str(digest).rstrip("=")


def _describe_os_error(path: Path, exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"{path} does not exist"
    return f"cannot read {path}: {exc.strerror or exc}"


def read_authorized_keys(path: Path) -> list[keys.Key]:
    """Parse an OpenSSH ``authorized_keys`` file, strictly.

    Blank lines and ``#`` comments are skipped.  Unlike sshd, a line that is
    not a key is an error rather than silently skipped: a typo should fail at
    start-up, not lock the operator out during an incident.  Key options
    (``from=``, ``command=``, ``restrict``...) are refused because we could not
    honour them, and ignoring a ``from=`` would widen access.  A file that
    others can write is refused, as sshd's StrictModes does, since whoever
    writes it can run code in the daemon.

    :raises ConfigError: naming ``manhole.authorized_keys``.
    """
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(_AUTHORIZED_KEYS, _describe_os_error(path, exc))
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            _AUTHORIZED_KEYS,
            f"{path} is writable by group or others (mode {stat.S_IMODE(mode):04o}); chmod go-w it",
        )
    found: list[keys.Key] = []
    for number, raw in enumerate(data.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        fields = line.split()
        if not fields[0].startswith(_KEY_TYPE_PREFIXES) and any(
            field.startswith(_KEY_TYPE_PREFIXES) for field in fields[1:]
        ):
            raise ConfigError(
                _AUTHORIZED_KEYS,
                f"{path} line {number}: key options are not supported; list the bare key",
            )
        try:
            key = _parse_key(line)
        except Exception as exc:  # conch raises BadKeyError, ValueError, struct.error...
            raise ConfigError(
                _AUTHORIZED_KEYS, f"{path} line {number}: not an OpenSSH public key ({exc})"
            )
        if not _is_public(key):
            raise ConfigError(_AUTHORIZED_KEYS, f"{path} line {number}: not a public key")
        found.append(key)
    if not found:
        raise ConfigError(_AUTHORIZED_KEYS, f"{path} holds no valid public key")
    return found


def _generate_host_key(path: Path) -> keys.Key:
    """Write a fresh Ed25519 key to ``path`` with mode 0600, never overwriting a file."""
    private = ed25519.Ed25519PrivateKey.generate()
    data = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileNotFoundError:
        raise ConfigError(_HOST_KEY, f"directory {path.parent} does not exist")
    except OSError as exc:
        raise ConfigError(_HOST_KEY, f"cannot create {path}: {exc.strerror or exc}")
    try:
        # The umask may only remove bits from 0600, but a 0400-style umask
        # would leave a key we can read once and never rewrite; be explicit.
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise ConfigError(_HOST_KEY, f"cannot write {path}: {exc.strerror or exc}")
    key = keys.Key(private)  # type: ignore[no-untyped-call]
    log.info(
        "Generated manhole host key {path} ({fingerprint})",
        path=str(path),
        fingerprint=fingerprint(key),
    )
    return key


def load_or_create_host_key(path: Path) -> keys.Key:
    """The SSH host key at ``path`` (OpenSSH or PEM private key), generated if missing.

    The host key is what lets an operator know they are typing into the real
    daemon, so a key that others can read is refused (as sshd does), as is an
    encrypted key (there is nobody to type its passphrase at start-up).

    :raises ConfigError: naming ``manhole.host_key``.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return _generate_host_key(path)
    except OSError as exc:
        raise ConfigError(_HOST_KEY, _describe_os_error(path, exc))
    if not stat.S_ISREG(mode):
        raise ConfigError(_HOST_KEY, f"{path} is not a regular file")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            _HOST_KEY,
            f"{path} is accessible by group or others (mode {stat.S_IMODE(mode):04o});"
            " chmod 600 it",
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(_HOST_KEY, _describe_os_error(path, exc))
    try:
        key = _parse_key(data)
    except keys.EncryptedKeyError:
        raise ConfigError(_HOST_KEY, f"{path} is passphrase-protected; use an unencrypted key")
    except Exception as exc:  # conch raises BadKeyError, ValueError, struct.error...
        raise ConfigError(_HOST_KEY, f"{path} is not an OpenSSH or PEM private key ({exc})")
    if _is_public(key):
        raise ConfigError(_HOST_KEY, f"{path} is a public key; give the private key")
    if key.type() == "DSA":
        raise ConfigError(_HOST_KEY, f"{path}: DSA host keys are refused by current clients")
    return key


@implementer(IAuthorizedKeysDB)
class AuthorizedKeysFile:
    """The keys in one ``authorized_keys`` file, valid for every user name.

    conch's ``InMemorySSHKeyDB`` maps user names to keys; the manhole has no
    users, only keys, so this DB ignores the name.  It reads the file when
    built (so a bad file is a start-up :class:`ConfigError`) and again at each
    login attempt, so a key can be added or revoked on a running daemon.  If
    the file later turns bad, logins are refused rather than falling back to
    the old keys: deleting the file is how you lock the manhole in a hurry.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.keys: list[keys.Key] = read_authorized_keys(path)

    def getAuthorizedKeys(self, username: bytes) -> Iterable[keys.Key]:
        """IAuthorizedKeysDB: the current keys, whatever ``username`` is."""
        try:
            self.keys = read_authorized_keys(self.path)
        except ConfigError as exc:
            log.error("Manhole logins refused: {error}", error=str(exc))
            self.keys = []
        return self.keys


class _LoggingKeyChecker(SSHPublicKeyChecker):
    """``SSHPublicKeyChecker`` that leaves an audit line for every login decision.

    Whoever logs in can change anything in the process, so who did it (key
    fingerprint, claimed user name) belongs in the log.
    """

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[bytes]:
        d: defer.Deferred[bytes] = super().requestAvatarId(credentials)  # type: ignore[no-untyped-call]
        d.addCallbacks(
            self._accepted,
            self._refused,
            callbackArgs=(credentials,),
            errbackArgs=(credentials,),
        )
        return d

    @staticmethod
    def _key_fingerprint(credentials: Any) -> str:
        try:
            return fingerprint(_parse_key(credentials.blob))
        except Exception:
            return "unparsable key"

    def _accepted(self, avatar_id: bytes, credentials: Any) -> bytes:
        log.info(
            "Manhole login: user {user!r} with key {fingerprint}",
            user=avatar_id.decode("utf-8", "replace"),
            fingerprint=self._key_fingerprint(credentials),
        )
        return avatar_id

    def _refused(self, reason: Failure, credentials: Any) -> Failure:
        # ValidPublicKey (an UnauthorizedLogin subclass) answers the unsigned "would
        # you accept this key?" probe; conch sends it for any key, so it says nothing.
        if reason.check(ValidPublicKey):  # type: ignore[no-untyped-call]
            return reason
        if reason.check(UnauthorizedLogin):  # type: ignore[no-untyped-call]
            log.warn(
                "Manhole login refused: user {user!r} with key {fingerprint}",
                user=bytes(credentials.username).decode("utf-8", "replace"),
                fingerprint=self._key_fingerprint(credentials),
            )
        return reason


# --------------------------------------------------------------------------- SSH glue


class _TerminalSession(manhole_ssh.TerminalSession):
    """conch's ``TerminalSession`` without its rough edges.

    The stock session raises ``NotImplementedError`` on window resizes and on
    EOF (a traceback in our log each time an operator resizes their terminal)
    and fails with ``AttributeError`` when a client asks for a shell without a
    PTY (``ssh -T``).  This one follows resizes, ends the session on EOF and
    assumes 80x24 when no PTY was requested.
    """

    width = 80
    height = 24
    _terminal: manhole_ssh.TerminalSessionTransport | None = None

    def openShell(self, proto: Any) -> None:
        # Same as the parent, but keeps the terminal for resizes and EOF.
        build_transport: Any = self.transportFactory
        build_terminal: Any = self.chainedProtocolFactory
        self._terminal = build_transport(
            proto,
            build_terminal(),
            IConchUser(self.original),
            self.width,
            self.height,
        )

    def windowChanged(self, newWindowSize: Any) -> None:
        self.height, self.width = newWindowSize[:2]
        if self._terminal is not None:
            terminal: Any = self._terminal.chainedProtocol.terminalProtocol
            terminal.terminalSize(self.width, self.height)

    def eofReceived(self) -> None:
        if self._terminal is not None:
            proto: Any = self._terminal.proto
            proto.loseConnection()


class _ShellOnlySession(session.SSHSession):
    """A session channel that refuses ``exec`` politely.

    conch's ``TerminalSession.execCommand`` raises, which conch logs as a
    critical traceback: noise in the daemon's log each time someone types
    ``ssh -p 2222 host command``.  Refusing the request here gives the client
    a plain failure (``exec request failed``) and a line on its stderr.
    """

    def request_exec(self, data: bytes) -> int:
        log.info("Manhole refused an exec request: only interactive shells are served")
        self.writeExtended(  # type: ignore[no-untyped-call]
            connection.EXTENDED_DATA_STDERR,
            b"rtgateway manhole: commands are not supported; log in without one\r\n",
        )
        return 0


class _ManholeUser(manhole_ssh.TerminalUser):
    """The avatar: only ``session`` channels, and those only serve shells."""

    def __init__(self, original: Any, avatarId: bytes) -> None:
        super().__init__(original, avatarId)  # type: ignore[no-untyped-call]
        self.channelLookup[b"session"] = _ShellOnlySession


@implementer(IRealm)
class _ManholeRealm(manhole_ssh.TerminalRealm):
    """``TerminalRealm`` whose sessions each get a fresh ``ColoredManhole``."""

    userFactory = _ManholeUser
    sessionFactory = _TerminalSession

    def __init__(self, namespace: Namespace) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._namespace = namespace
        # conch declares a class here; any zero-argument callable will do.
        self.chainedProtocolFactory = self._build_terminal  # type: ignore[assignment]

    def _build_terminal(self) -> insults.ServerProtocol:
        """Called per shell: a callable namespace is evaluated now, so it is live.

        ``Manhole`` copies the dict, so one session's assignments never leak
        into the next session or back into our caller's dict.
        """
        namespace = self._namespace() if callable(self._namespace) else self._namespace
        return insults.ServerProtocol(manhole.ColoredManhole, namespace)  # type: ignore[no-untyped-call]


class _UserAuthServer(userauth.SSHUserAuthServer):
    """Userauth that times logins out on the injected reactor, not the global one."""

    def serviceStarted(self) -> None:
        assert self.transport is not None
        self.clock = cast(_ManholeFactory, self.transport.factory).reactor
        super().serviceStarted()  # type: ignore[no-untyped-call]


class _ServerTransport(transport.SSHServerTransport):
    """Server transport that tells its factory when it is gone, so stop can wait."""

    factory: _ManholeFactory

    def __init__(self) -> None:
        super().__init__()
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.factory.connections.add(self)
        super().connectionMade()  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Failure | None = None) -> None:
        try:
            super().connectionLost(reason)
        finally:
            self.factory.connections.discard(self)
            self.lost.callback(None)


class _ManholeFactory(manhole_ssh.ConchFactory):
    """``ConchFactory`` with per-instance host keys and tracked connections.

    ``ConchFactory.publicKeys``/``privateKeys`` are class attributes: filling
    them in place, as ``manhole_tap`` does, would share host keys between every
    factory in the process.  We assign fresh dicts instead.
    """

    protocol = _ServerTransport
    services = {
        **manhole_ssh.ConchFactory.services,
        b"ssh-userauth": _UserAuthServer,
    }

    def __init__(self, portal: Portal, host_key: keys.Key, reactor: Any) -> None:
        super().__init__(portal)  # type: ignore[no-untyped-call]
        key_type: bytes = host_key.sshType()  # type: ignore[no-untyped-call]
        # conch annotates these dicts as bytes -> bytes, but the transport uses Key objects.
        self.publicKeys = {key_type: host_key.public()}  # type: ignore[no-untyped-call]
        self.privateKeys = {key_type: host_key}  # type: ignore[dict-item]
        self.reactor = reactor
        self.connections: set[_ServerTransport] = set()

    def disconnect_all(self) -> defer.Deferred[None]:
        """Close every open manhole connection; fires once all of them are gone."""
        lost = [ssh.lost for ssh in self.connections]
        for ssh in list(self.connections):
            ssh.sendDisconnect(  # type: ignore[no-untyped-call]
                transport.DISCONNECT_BY_APPLICATION, b"manhole stopped"
            )
        return defer.gatherResults(lost).addCallback(lambda _: None)


class ManholeService(StreamServerEndpointService):
    """The manhole listener.

    Built like ``strports.service`` builds its services (an endpoint parsed
    from a string, bind errors raised at start-up), plus:

    * ``port``: the ``IListeningPort`` while listening, else ``None``, so a
      caller (or a test listening on ``tcp:0``) can find the address;
    * ``host_key_fingerprint``: what clients will be shown on first connect;
    * stopping also closes open manhole sessions, and the returned Deferred
      fires once they are closed.
    """

    # As strports.service: a failure to listen stops twistd at start-up
    # instead of being logged and forgotten.
    _raiseSynchronously = True
    factory: _ManholeFactory

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        factory: _ManholeFactory,
        host_key_fingerprint: str,
    ) -> None:
        super().__init__(endpoint, factory)  # type: ignore[no-untyped-call]
        self.port: IListeningPort | None = None
        self.host_key_fingerprint = host_key_fingerprint

    def privilegedStartService(self) -> None:
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        assert self._waitingForPort is not None
        self._waitingForPort.addCallback(self._listening)

    def _listening(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        log.info(
            "Manhole listening on {address} (host key {fingerprint})",
            address=str(port.getHost()),
            fingerprint=self.host_key_fingerprint,
        )
        return port

    def stopService(self) -> defer.Deferred[None]:
        stopped = super().stopService()  # type: ignore[no-untyped-call]
        self.port = None
        closed = self.factory.disconnect_all()
        return defer.gatherResults([stopped, closed]).addCallback(lambda _: None)


# --------------------------------------------------------------------------- public API


def make_manhole_service(
    config: ManholeConfig,
    namespace: Namespace,
    reactor: Any = None,
) -> ManholeService:
    """Build the manhole listener for ``config`` (which must have ``listen`` set).

    ``namespace`` is either a dict (copied into each session) or a callable
    returning one, called at each login so the session sees the objects live
    at that moment.  Files are read here, at build time, so a bad key file is a
    start-up :class:`ConfigError`; the host key is generated here if missing.
    """
    if not config.listen:
        raise ConfigError("manhole.listen", "is empty; the manhole is disabled")
    if not config.authorized_keys:
        raise ConfigError(_AUTHORIZED_KEYS, "required when manhole.listen is set")
    if not config.host_key:
        raise ConfigError(_HOST_KEY, "required when manhole.listen is set")
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor

    key_db = AuthorizedKeysFile(Path(config.authorized_keys))
    host_key = load_or_create_host_key(Path(config.host_key))
    portal = Portal(_ManholeRealm(namespace), [_LoggingKeyChecker(key_db)])
    factory = _ManholeFactory(portal, host_key, reactor)
    try:
        endpoint = serverFromString(reactor, config.listen)  # type: ignore[no-untyped-call]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError("manhole.listen", f"bad endpoint {config.listen!r}: {exc}")
    return ManholeService(endpoint, factory, fingerprint(host_key))
