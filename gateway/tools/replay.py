"""``rtgateway-replay``: print a session recording, or re-feed it into a gateway.

``rtgateway-replay FILE`` (or ``--print``) prints one line per event: time
offset, direction, seq/ack, type, version and the payload decoded with the
event registry (the system events plus every installed plugin's), or its
size and first bytes when the type is unknown.

``rtgateway-replay FILE --to ws://127.0.0.1:8080/ws --token TOKEN`` connects
as a new client, sends its own ``system.hello`` (the token travels in the
``Authorization`` header; versions and compression are the recorded hello's,
or the recorded negotiation for a mid-session file), then sends the recorded
*inbound* frames in order, byte for byte, keeping their spacing (divided by
``--speed``; ``--speed 0`` sends as fast as possible), and prints what comes
back.  It stops by itself: after the last frame it waits ``--linger``
seconds, closes, and gives up after ``--timeout`` in any case.

The server's pings are not answered: the recorded client's own pongs and
acks are replayed instead, so the gateway sees the recorded traffic and
nothing else.  At speeds well below 1 a long quiet stretch can therefore
exceed the heartbeat timeout.

Exit status: 0 done, 1 the gateway closed or refused the replay early,
2 usage or file errors.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from google.protobuf import text_format
from google.protobuf.message import DecodeError
from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from gateway import SUBPROTOCOL
from gateway.events import EventRegistry
from gateway.recording import (
    CLEARED,
    IN,
    WITHHELD,
    FrameEntry,
    Recording,
    RecordingFormatError,
    envelopes_of,
    read_recording,
)
from gateway.system_events import register as register_system_events
from gateway.wire import WireError, encode_fragment
from protocol import events_pb2, recording_pb2

__all__ = ["ReplayPlan", "ReplayResult", "build_registry", "format_recording", "main",
           "plan_replay", "replay"]

PROG = "rtgateway-replay"
EXIT_FAILED = 1
EXIT_ERROR = 2

#: Payload text longer than this is cut (a line per event must stay a line).
MAX_PAYLOAD_TEXT = 2000
_CREDENTIAL_TYPES = frozenset({"system.hello", "system.auth_refresh", "system.welcome"})
_END_REASONS = {
    recording_pb2.END_REASON_DISCONNECTED: "disconnected",
    recording_pb2.END_REASON_STOPPED: "recording stopped",
    recording_pb2.END_REASON_MAX_BYTES: "size cap reached",
    recording_pb2.END_REASON_SHUTDOWN: "gateway shut down",
}


# --------------------------------------------------------------------------- printing


def build_registry(plugin_paths: Sequence[str] = ()) -> EventRegistry:
    """System events plus the event specs of every discoverable plugin.

    Plugins are only asked for their specs (never set up), each with its
    default options; one that fails is skipped, since printing a recording
    must work even where a plugin cannot load.
    """
    from gateway.plugin import PluginError, discover

    registry = EventRegistry()
    register_system_events(registry)
    try:
        found = discover(plugin_paths)
    except (PluginError, ValueError) as exc:
        print(f"{PROG}: plugins not loaded ({exc}); only system events decode",
              file=sys.stderr)
        return registry
    for plugin in sorted(found, key=lambda p: p.name):
        try:
            instance = plugin.instance() if hasattr(plugin, "instance") else plugin
            for spec in instance.event_specs():
                if spec.type not in registry:
                    registry.register(spec)
        except Exception as exc:
            print(f"{PROG}: plugin {plugin.name} skipped: {exc}", file=sys.stderr)
    return registry


def describe_payload(env: events_pb2.Envelope, registry: EventRegistry) -> str:
    """The payload as protobuf text when the type is known, else its size and first bytes."""
    spec = registry.get(env.type)
    cls = None
    if spec is not None:
        cls = spec.versions.get(env.version or spec.latest)
    if cls is None:
        head = env.payload[:32].hex()
        more = "..." if len(env.payload) > 32 else ""
        return f"<{len(env.payload)} bytes {head}{more}>"
    msg = cls()
    try:
        msg.ParseFromString(env.payload)
    except DecodeError:
        return f"<{len(env.payload)} bytes, not a valid {cls.__name__}>"
    text = text_format.MessageToString(msg, as_one_line=True)
    if len(text) > MAX_PAYLOAD_TEXT:
        text = text[:MAX_PAYLOAD_TEXT] + "..."
    return "{" + text + "}"


def describe_envelope(env: events_pb2.Envelope, registry: EventRegistry) -> str:
    extra = f" corr={env.correlation_id}" if env.correlation_id else ""
    return (f"seq={env.seq} ack={env.ack} {env.type or '(no type)'} v{env.version}{extra} "
            f"{describe_payload(env, registry)}")


def _offset(us: int) -> str:
    """Seconds since the start, aligned: ``   +1.250000``."""
    return f"+{us / 1e6:.6f}".rjust(12)


def format_frame(entry: FrameEntry, registry: EventRegistry) -> Iterator[str]:
    """One line per envelope of a recorded frame."""
    prefix = f"{_offset(entry.offset_us)} {entry.direction:<3}"
    if entry.redaction == WITHHELD:
        yield f"{prefix} (frame of {entry.size} bytes withheld: it could not be decoded, " \
              "so it could not be checked for credentials)"
        return
    try:
        envelopes = envelopes_of(entry.data)
    except WireError as exc:
        yield f"{prefix} (undecodable frame of {entry.size} bytes: {exc.reason}; " \
              f"{entry.data[:32].hex()})"
        return
    if not envelopes:
        yield f"{prefix} (empty frame)"
    for env in envelopes:
        note = ""
        if entry.redaction == CLEARED and env.type in _CREDENTIAL_TYPES:
            note = " [credentials cleared]"
        yield f"{prefix} {describe_envelope(env, registry)}{note}"


def format_recording(recording: Recording, registry: EventRegistry) -> Iterator[str]:
    """The whole file as human-readable lines, a header first."""
    start = recording.start
    started = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start.started_at_us / 1e6))
    yield (f"# rtgateway recording (format {start.format_version}): player "
           f"{start.player_id!r}, connection {start.connection_id} on instance "
           f"{start.instance_id!r}, started {started}Z")
    if start.mid_session:
        versions = ", ".join(f"{t}=v{v}" for t, v in sorted(start.versions.items()))
        yield (f"# started mid-session (no system.hello in this file); compression "
               f"{start.compression}; negotiated versions: {versions}")
    for entry in recording.frames:
        yield from format_frame(entry, registry)
    end = recording.end
    if end is not None:
        reason = _END_REASONS.get(end.reason, f"reason {end.reason}")
        detail = f": {end.detail}" if end.detail else ""
        yield f"{_offset(end.offset_us)} end {reason}{detail} ({end.frames} frames)"
    elif recording.truncated:
        yield "# the file ends inside a record: the recording was cut off"
    else:
        yield "# no end record: the recording was cut off"


# --------------------------------------------------------------------------- replay plan


@dataclass(frozen=True)
class ReplayPlan:
    """What a replay sends: its own hello, then the recorded inbound frames at their offsets."""

    hello: events_pb2.Hello
    hello_version: int
    frames: list[tuple[int, bytes]]  # (offset_us, frame bytes) in recorded order
    withheld: int  # inbound frames that were not recorded (undecodable): skipped


def plan_replay(recording: Recording) -> ReplayPlan:
    """Take the recorded hello's versions and compression; keep every other inbound frame.

    The first inbound ``system.hello`` envelope is removed from its frame
    (the replay sends its own); a frame that held nothing else is dropped.
    """
    hello: events_pb2.Hello | None = None
    hello_version = 0
    frames: list[tuple[int, bytes]] = []
    withheld = 0
    for entry in recording.frames:
        if entry.direction != IN:
            continue
        if entry.redaction == WITHHELD:
            withheld += 1
            continue
        if hello is None:
            try:
                envelopes = envelopes_of(entry.data)
            except WireError:
                envelopes = []
            first = next((e for e in envelopes if e.type == "system.hello"), None)
            if first is not None:
                hello = events_pb2.Hello()
                try:
                    hello.ParseFromString(first.payload)
                except DecodeError:
                    hello = events_pb2.Hello()
                hello_version = first.version
                rest = [e for e in envelopes if e is not first]
                if rest:
                    frame = b"".join(encode_fragment(e) for e in rest)
                    frames.append((entry.offset_us, frame))
                continue
        frames.append((entry.offset_us, entry.data))
    if hello is None:  # a mid-session file: offer exactly what had been negotiated
        hello = events_pb2.Hello()
        for type_, version in recording.start.versions.items():
            hello.versions[type_].versions.append(version)
        if recording.start.compression:
            hello.compression.append(recording.start.compression)  # type: ignore[arg-type]
    hello.token = ""
    hello.resume_token = ""
    hello.last_seq = 0
    hello.client_name = f"{PROG} ({hello.client_name or 'recorded client'})"
    return ReplayPlan(hello, hello_version, frames, withheld)


# --------------------------------------------------------------------------- replay


@dataclass
class ReplayResult:
    sent: int = 0  # recorded frames sent
    skipped: int = 0  # withheld frames not sent
    received: list[str] = field(default_factory=list)  # event types that came back, in order
    welcome: events_pb2.Welcome | None = None
    close_code: int | None = None
    close_reason: str | None = None
    completed: bool = False  # every frame was sent and we closed, not the gateway


class _Protocol(WebSocketClientProtocol):  # type: ignore[misc]
    replayer: _Replayer

    def onOpen(self) -> None:
        self.replayer.opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.replayer.message(payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.replayer.closed(code, reason)


class _Replayer:
    """One replay connection: the Autobahn callbacks and the Deferreds the script waits on."""

    def __init__(self, reactor: Any, registry: EventRegistry, out: IO[str]) -> None:
        self.reactor = reactor
        self.registry = registry
        self.out = out
        self.result = ReplayResult()
        self.proto: _Protocol | None = None
        self.is_open: defer.Deferred[None] = defer.Deferred()
        self.welcomed: defer.Deferred[events_pb2.Welcome] = defer.Deferred()
        self.gone: defer.Deferred[None] = defer.Deferred()
        self.started = reactor.seconds()
        self._sleep: tuple[defer.Deferred[None], IDelayedCall] | None = None
        self.connection: Any = None  # the protocol once TCP connected
        self.expired = False  # the watchdog fired

    def now_us(self) -> int:
        return int((self.reactor.seconds() - self.started) * 1e6)

    def opened(self, proto: _Protocol) -> None:
        self.proto = proto
        if not self.is_open.called:
            self.is_open.callback(None)

    def message(self, payload: bytes, is_binary: bool) -> None:
        prefix = f"{_offset(self.now_us())}  <"
        if not is_binary:
            print(f"{prefix} (text message, {len(payload)} bytes)", file=self.out)
            return
        try:
            envelopes = envelopes_of(payload)
        except WireError as exc:
            print(f"{prefix} (undecodable frame: {exc.reason})", file=self.out)
            return
        for env in envelopes:
            self.result.received.append(env.type)
            print(f"{prefix} {describe_envelope(env, self.registry)}", file=self.out)
            if env.type == "system.welcome" and not self.welcomed.called:
                welcome = events_pb2.Welcome()
                try:
                    welcome.ParseFromString(env.payload)
                except DecodeError:
                    pass
                self.result.welcome = welcome
                self.welcomed.callback(welcome)

    def closed(self, code: int | None, reason: str | None) -> None:
        self.proto = None
        self.result.close_code = code
        self.result.close_reason = reason
        error = ConnectionError(f"connection closed ({code}: {reason})")
        for d in (self.is_open, self.welcomed):
            if not d.called:
                d.errback(error)
        self.wake()
        if not self.gone.called:
            self.gone.callback(None)

    def send(self, data: bytes) -> None:
        if self.proto is not None:
            self.proto.sendMessage(data, isBinary=True)  # type: ignore[no-untyped-call]

    def sleep(self, seconds: float) -> defer.Deferred[None]:
        """A pause that :meth:`wake` (the connection closing, the watchdog) ends early."""
        d: defer.Deferred[None] = defer.Deferred()
        call = self.reactor.callLater(max(0.0, seconds), self.wake)
        self._sleep = (d, call)
        return d

    def wake(self) -> None:
        sleeping, self._sleep = self._sleep, None
        if sleeping is None:
            return
        d, call = sleeping
        if call.active():
            call.cancel()
        if not d.called:
            d.callback(None)

    def connected(self, proto: Any) -> Any:
        """TCP is up (the WebSocket handshake may not be): remembered so abort() can drop it."""
        self.connection = proto
        return proto

    def abort(self) -> None:
        target = self.proto or self.connection
        transport = getattr(target, "transport", None)
        if transport is not None:
            transport.abortConnection()


def _factory(url: str, token: str, reactor: Any, replayer: _Replayer) -> WebSocketClientFactory:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    factory = WebSocketClientFactory(  # type: ignore[no-untyped-call]
        url, protocols=[SUBPROTOCOL], headers=headers, reactor=reactor
    )
    factory.setProtocolOptions(  # type: ignore[no-untyped-call]
        maxMessagePayloadSize=1 << 24, maxFramePayloadSize=1 << 24, autoPingInterval=0,
        perMessageCompressionOffers=[], failByDrop=False, tcpNoDelay=True,
        openHandshakeTimeout=10,
    )

    class Protocol(_Protocol):
        pass

    Protocol.replayer = replayer
    factory.protocol = Protocol
    return factory


def _endpoint(url: str, reactor: Any) -> Any:
    from urllib.parse import urlparse

    parts = urlparse(url)
    host = parts.hostname or "127.0.0.1"
    secure = parts.scheme == "wss"
    endpoint = endpoints.HostnameEndpoint(reactor, host, parts.port or (443 if secure else 80))
    if secure:
        from twisted.internet import ssl

        return endpoints.wrapClientTLS(ssl.optionsForClientTLS(host), endpoint)
    return endpoint


@defer.inlineCallbacks
def replay(
    recording: Recording,
    url: str,
    token: str,
    *,
    speed: float = 1.0,
    linger: float = 1.0,
    timeout: float | None = None,
    reactor: Any = None,
    registry: EventRegistry | None = None,
    out: IO[str] | None = None,
) -> Generator[defer.Deferred[Any], Any, ReplayResult]:
    """Re-feed ``recording``'s inbound frames into the gateway at ``url``; see the module doc.

    Fires with a :class:`ReplayResult`, never with a failure, and never
    hangs: ``timeout`` (default: the recording's length at this speed plus
    30 s) aborts the connection wherever the replay is.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    if speed < 0:
        raise ValueError("speed must be 0 (as fast as possible) or more")
    out = out if out is not None else sys.stdout
    plan = plan_replay(recording)
    registry = registry if registry is not None else build_registry()
    replayer = _Replayer(reactor, registry, out)
    replayer.result.skipped = plan.withheld
    span = 0.0
    if plan.frames and speed:
        span = (plan.frames[-1][0] - plan.frames[0][0]) / 1e6 / speed
    limit = timeout if timeout is not None else span + linger + 30.0
    connecting = _endpoint(url, reactor).connect(_factory(url, token, reactor, replayer))
    connecting.addCallback(replayer.connected)

    def watchdog() -> None:
        replayer.expired = True
        print(f"# {PROG}: timed out after {limit:.1f}s", file=out)
        if not connecting.called:
            connecting.cancel()
        for d in (replayer.is_open, replayer.welcomed):
            if not d.called:
                d.errback(TimeoutError("replay timed out"))
        replayer.wake()
        replayer.abort()

    guard = reactor.callLater(limit, watchdog)
    try:
        yield _drive(replayer, plan, connecting, url, speed, linger)
    except Exception as exc:  # a bug or an odd failure: report it, still end cleanly
        print(f"# {PROG}: replay failed: {exc}", file=out)
    finally:
        if guard.active():
            guard.cancel()
    if not replayer.gone.called and replayer.connection is not None:
        # Whatever happened, leave no connection behind (bounded: 2 s at most).
        replayer.abort()
        done: defer.Deferred[None] = defer.Deferred()
        replayer.gone.addBoth(lambda _: None if done.called else done.callback(None))
        call = reactor.callLater(2.0, lambda: None if done.called else done.callback(None))
        yield done
        if call.active():
            call.cancel()
    return replayer.result


@defer.inlineCallbacks
def _drive(
    replayer: _Replayer,
    plan: ReplayPlan,
    connecting: defer.Deferred[Any],
    url: str,
    speed: float,
    linger: float,
) -> Generator[defer.Deferred[Any], Any, None]:
    """Connect, hello, welcome, the frames at their offsets, close."""
    reactor, out, registry = replayer.reactor, replayer.out, replayer.registry
    try:
        yield connecting
    except Exception as exc:
        print(f"# {PROG}: cannot connect to {url}: {exc}", file=out)
        return
    try:
        yield replayer.is_open
        hello = events_pb2.Envelope(
            type="system.hello",
            version=plan.hello_version,
            payload=plan.hello.SerializeToString(),
            priority=events_pb2.PRIORITY_CRITICAL,
        )
        replayer.send(encode_fragment(hello))
        print(f"{_offset(replayer.now_us())}  > {describe_envelope(hello, registry)}", file=out)
        yield replayer.welcomed
    except Exception as exc:
        print(f"# {PROG}: no welcome: {exc}", file=out)
        for pending in (replayer.is_open, replayer.welcomed):
            pending.addErrback(lambda _failure: None)  # reported above; not "unhandled"
        return
    began = reactor.seconds()
    base = plan.frames[0][0] if plan.frames else 0
    for offset_us, data in plan.frames:
        if speed:
            yield replayer.sleep(began + (offset_us - base) / 1e6 / speed - reactor.seconds())
        else:
            yield replayer.sleep(0)  # let replies in between frames
        if replayer.proto is None or replayer.expired:
            return
        replayer.send(data)
        replayer.result.sent += 1
        for line in _sent_lines(replayer.now_us(), data, registry):
            print(line, file=out)
    yield replayer.sleep(linger)
    if replayer.proto is None or replayer.expired:
        return
    replayer.result.completed = True
    replayer.proto.sendClose(1000, "replay finished")
    closing = reactor.callLater(5.0, replayer.abort)
    yield replayer.gone
    if closing.active():
        closing.cancel()


def _sent_lines(now_us: int, data: bytes, registry: EventRegistry) -> Iterator[str]:
    try:
        envelopes = envelopes_of(data)
    except WireError as exc:
        yield f"{_offset(now_us)}  > (undecodable frame of {len(data)} bytes: {exc.reason})"
        return
    for env in envelopes:
        yield f"{_offset(now_us)}  > {describe_envelope(env, registry)}"


# --------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Print a gateway session recording, or replay its inbound frames "
        "into a running gateway.",
    )
    parser.add_argument("file", help="a recording (.rtgrec) written by the recorder plugin")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--print", action="store_true",
                      help="print the recording human-readably (the default)")
    mode.add_argument("--to", metavar="URL",
                      help="replay into the gateway at this WebSocket URL (ws://host:port/ws)")
    parser.add_argument("--token", default="",
                        help="the replaying client's token (sent as Authorization: Bearer)")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="time scale: 2 = twice as fast, 0 = as fast as possible")
    parser.add_argument("--linger", type=float, default=1.0,
                        help="seconds to keep reading replies after the last frame")
    parser.add_argument("--timeout", type=float, default=None,
                        help="give up after this many seconds (default: length + 30)")
    parser.add_argument("--plugin-path", action="append", default=[], metavar="DIR",
                        help="another plugins directory for decoding (like plugins.paths)")
    return parser


def main(argv: Sequence[str] | None = None, *, out: IO[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = out if out is not None else sys.stdout
    try:
        recording = read_recording(args.file)
    except OSError as exc:
        print(f"{PROG}: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_ERROR
    except RecordingFormatError as exc:
        print(f"{PROG}: {args.file}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    registry = build_registry(args.plugin_path)
    if args.to is None:
        for line in format_recording(recording, registry):
            print(line, file=out)
        return 0
    if args.speed < 0:
        print(f"{PROG}: --speed must be 0 or more", file=sys.stderr)
        return EXIT_ERROR
    if not args.token:
        print(f"{PROG}: --token is required with --to", file=sys.stderr)
        return EXIT_ERROR
    return _run_reactor(lambda reactor: replay(
        recording, args.to, args.token, speed=args.speed, linger=args.linger,
        timeout=args.timeout, reactor=reactor, registry=registry, out=out,
    ))


def _run_reactor(start: Callable[[Any], defer.Deferred[ReplayResult]]) -> int:
    """Run the global reactor until the replay is over; its exit status."""
    from twisted.internet import reactor

    code = [EXIT_FAILED]

    def go() -> None:
        d = start(reactor)

        def done(result: ReplayResult) -> None:
            code[0] = 0 if result.completed else EXIT_FAILED

        def failed(failure: Failure) -> None:
            print(f"{PROG}: {failure.getErrorMessage()}", file=sys.stderr)

        d.addCallbacks(done, failed)
        d.addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]

    reactor.callWhenRunning(go)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    return code[0]


if __name__ == "__main__":
    sys.exit(main())
