"""Thin Autobahn adapter: bytes and timers in, bytes out.  No protocol rules here.

Everything the protocol decides lives in :class:`gateway.server.Gateway`
(and below it in the sans-io :class:`gateway.connection.Connection`); this
module turns Autobahn callbacks into calls on it and its answers into
WebSocket frames, close codes and HTTP statuses.
"""

from __future__ import annotations

from typing import Any

import txaio
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket import protocol as autobahn_protocol
from autobahn.websocket.protocol import PreparedMessage
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import tcp
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway import SUBPROTOCOL
from gateway.codes import CloseCode
from gateway.connection import Connection
from gateway.server import Admission, Gateway, HandshakeRequest, Reject

__all__ = ["GatewayFactory", "GatewayProtocol"]

log = Logger()

# RFC 6455 codes that Autobahn's sendClose() refuses; they go out via sendCloseFrame().
_RFC_CODES = frozenset({1001, 1003, 1008, 1009, 1011})


@implementer(IPushProducer)
class GatewayProtocol(WebSocketServerProtocol):  # type: ignore[misc]
    """One WebSocket connection; also the push producer that hears TCP back-pressure."""

    factory: GatewayFactory
    connection: Connection
    _admission: Admission | None = None
    _closing = False

    # -------------------------------------------------------------- Autobahn callbacks

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        super().connectionMade()
        # Autobahn applies tcpNoDelay before it copies the factory's options onto the
        # protocol, and swallows the AttributeError: Nagle stays on, and a frame written
        # within one round trip of the previous one waits for the peer's delayed ACK
        # (40 ms on Linux).  The options are copied now: apply it again.
        try:
            self.transport.setTcpNoDelay(self.tcpNoDelay)  # type: ignore[union-attr, attr-defined]
        except (AttributeError, OSError):
            pass  # not a TCP socket (unix:)

    def onConnect(self, request: Any) -> Any:  # noqa: N802 - Autobahn's name
        gateway = self.factory.gateway
        assert self.transport is not None
        peer = self.transport.getPeer()
        host = getattr(peer, "host", None) or "local"
        self.connection = gateway.new_connection(host)
        try:
            handshake = HandshakeRequest(
                path=request.path,
                peer_host=host,
                headers=request.headers,
                params=request.params,
                protocols=tuple(request.protocols),
                # A missing Origin header arrives as "": a non-browser client, always allowed.
                # (Autobahn itself refuses "null" before onConnect: allowNullOrigin is off.)
                origin=request.origin or None,
            )
            d = gateway.admit(handshake)
        except Exception:
            # Anything unexpected must become a clean 500, never Autobahn's str(exc) status line.
            log.failure("admission crashed")
            raise ConnectionDeny(500, "Internal Server Error")

        def admitted(admission: Admission) -> str:
            self._admission = admission
            return admission.subprotocol

        def refused(failure: Failure) -> None:
            if failure.check(Reject):
                reject: Reject = failure.value  # type: ignore[assignment]
                raise ConnectionDeny(reject.status, reject.reason)
            log.failure("admission failed", failure)
            raise ConnectionDeny(500, "Internal Server Error")

        return d.addCallbacks(admitted, refused)

    def onOpen(self) -> None:  # noqa: N802
        assert self._admission is not None
        # The handshake is over: drop what Autobahn keeps of it for the connection's
        # lifetime (~2 KiB each, and the Authorization header or access_token with it).
        for name in _HANDSHAKE_LEFTOVERS:
            setattr(self, name, None)
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self.factory.gateway.opened(self, self._admission)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802, N803
        if not isBinary:
            self.factory.gateway.metrics.bad_input.labels("text_message").inc()
            self.factory.gateway.close(
                self, CloseCode.UNSUPPORTED_DATA, "binary messages only"
            )
            return
        self.factory.gateway.received(self, payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:  # noqa: N802, N803
        if self._admission is None:
            return  # refused at the upgrade: never opened
        try:
            self.transport.unregisterProducer()  # type: ignore[union-attr]
        except (RuntimeError, AttributeError):
            pass
        close_code = self.localCloseCode if self.closedByMe else code
        goodbye = bool(wasClean and not self.closedByMe and code == 1000)
        self.factory.gateway.closed(self, close_code, goodbye=goodbye)

    # -------------------------------------------------------------- IPushProducer

    def pauseProducing(self) -> None:  # noqa: N802
        self.connection.pause(self.factory.gateway.now())

    def resumeProducing(self) -> None:  # noqa: N802
        self.connection.resume()
        self.factory.gateway.hub.flush_one(self, self.factory.gateway.now())

    def stopProducing(self) -> None:  # noqa: N802
        pass

    # -------------------------------------------------------------- Transport (hub side)

    def send_frame(self, data: bytes) -> None:
        if self.state != WebSocketServerProtocol.STATE_OPEN:
            return  # closing: Autobahn would raise Disconnected (and break the hub's flush)
        if len(data) > self.factory.max_message_size:
            log.error("outbound frame of {size} bytes over the message limit", size=len(data))
            self.close(CloseCode.INTERNAL, "outbound message too large")
            return
        # Server frames are unmasked and never fragmented here: the header is 2-10 bytes,
        # so we frame it ourselves rather than through Autobahn's per-message machinery.
        write_direct(self.transport, binary_frame_header(len(data)) + data)

    def send_prepared(self, prepared: Any, size: int) -> None:
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            # Autobahn's sendPreparedMessage/sendData add per-call checks and stats; with
            # permessage-deflate refused, the prepared bytes are exactly what goes out.
            write_direct(self.transport, prepared.payloadHybi)

    def close(self, code: CloseCode, reason: str, *, reconnect: bool = True) -> None:
        if self._closing:
            return
        self._closing = True
        if self.state != WebSocketServerProtocol.STATE_OPEN:
            self.dropConnection(abort=True)
            return
        if int(code) in _RFC_CODES:
            self.sendCloseFrame(code=int(code), reasonUtf8=reason.encode()[:123], isReply=False)
        else:
            self.sendClose(code=int(code), reason=reason)
        if self.connection.paused_since is not None:
            # A reader that stopped reading will not read our close frame either.
            self.dropConnection(abort=True)


    def abort(self) -> None:
        self._closing = True
        self.dropConnection(abort=True)


def binary_frame_header(length: int) -> bytes:
    """RFC 6455 header of one unmasked, final, binary frame of ``length`` bytes."""
    if length < 126:
        return bytes((0x82, length))
    if length < 65536:
        return b"\x82\x7e" + length.to_bytes(2, "big")
    return b"\x82\x7f" + length.to_bytes(8, "big")


def write_direct(transport: Any, data: bytes) -> None:
    """Write to a plain TCP socket at once when Twisted has nothing buffered for it.

    ``transport.write`` buffers and registers the socket for writability, and the
    reactor writes on its next turn: two ``epoll_ctl`` calls and a reactor pass
    per message, about half of the server's CPU per delivered broadcast event
    (see docs/Benchmarks.md).  When Twisted's buffer is empty, sending now is
    what it would do anyway, only sooner; whatever the kernel does not take
    goes through ``transport.write`` as usual, so ordering, back-pressure
    (pauseProducing) and error handling stay Twisted's.  TLS and other
    transports always use ``transport.write``.
    """
    if (
        isinstance(transport, tcp.Connection)
        and transport.connected
        and not transport.disconnecting
        and not transport.dataBuffer
        and not transport._tempDataLen
    ):
        sent = transport.writeSomeData(data)
        if isinstance(sent, int):
            if sent == len(data):
                return
            data = data[sent:]
    transport.write(data)


#: Autobahn attributes holding the opening handshake; unused once the connection is open.
_HANDSHAKE_LEFTOVERS = (
    "http_request_data",
    "http_headers",
    "http_request_params",
    "http_request_uri",
    "http_request_path",
    "http_response_data",
    "http_status_line",
)


class _LazyFormat:
    """Formats only when a log line is really emitted."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __format__(self, spec: str) -> str:
        return format(_autobahn_pformat(self.value), spec)

    def __str__(self) -> str:
        return str(_autobahn_pformat(self.value))


# Autobahn's _connectionMade pretty-prints ~40 options for a debug line on every
# handshake, even with debug logging off (about 0.2 ms, a fifth of a handshake).
_autobahn_pformat = autobahn_protocol.pformat  # type: ignore[attr-defined]
autobahn_protocol.pformat = _LazyFormat  # type: ignore[attr-defined, assignment]


class GatewayFactory(WebSocketServerFactory):  # type: ignore[misc]
    protocol = GatewayProtocol  # type: ignore[assignment]

    def __init__(self, gateway: Gateway, reactor: Any = None) -> None:
        super().__init__(protocols=[SUBPROTOCOL], server=None, reactor=reactor)
        self.gateway = gateway
        limits = gateway.config.limits
        self.setProtocolOptions(
            webStatus=False,
            maxMessagePayloadSize=limits.max_message_size,
            maxFramePayloadSize=limits.max_frame_size,
            openHandshakeTimeout=limits.handshake_timeout,
            closeHandshakeTimeout=2,
            failByDrop=False,  # so the client learns why (e.g. 1009), see STACK.md
            autoPingInterval=0,  # our own application ping measures RTT even for chatty clients
            perMessageCompressionAccept=lambda offers: None,  # we compress frames ourselves
            tcpNoDelay=True,
            requireMaskedClientFrames=True,
            utf8validateIncoming=False,  # binary protocol; text frames are refused anyway
        )
        # Autobahn copies every option onto each new protocol instance unless the class
        # already has it: a per-factory subclass carrying them saves ~1 KiB a connection.
        options = {name: getattr(self, name) for name in GatewayProtocol.CONFIG_ATTRS}
        self.protocol = type("GatewayProtocol", (GatewayProtocol,), options)  # type: ignore[assignment]
        self.max_message_size = limits.max_message_size
        gateway.hub.prepare = self._prepare
        txaio.use_twisted()

    def _prepare(self, data: bytes) -> PreparedMessage:
        prepared: PreparedMessage = self.prepareMessage(data, isBinary=True, doNotCompress=True)
        return prepared
