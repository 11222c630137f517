"""The baseline: a bare Autobahn echo + broadcast server, as a naive server would be written.

* Every binary message is echoed back verbatim with ``sendMessage`` (the load
  generator's ``system.hello`` echo stands in for rtgateway's welcome, so both
  handshakes cost the client one round trip after the upgrade).
* ``/broadcast/start?hz=20`` sends the same ``bench.tick`` frame as rtgateway
  (byte for byte, see ``benchcommon.bench_tick_frame``) to every open
  connection with one plain ``sendMessage`` each.  ``--prepared`` uses
  ``prepareMessage`` + ``sendPreparedMessage`` instead (frame once, write
  many): a second reference point, not the baseline.
* No authentication: the Authorization header is ignored.

Protocol options match rtgateway's factory (no permessage-deflate, no
Autobahn auto-ping, TCP_NODELAY, the same size limits and handshake timeout).
Same control channel as ``server_rtgateway.py``.

    python bench/server_autobahn.py --port 0
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchcommon import (
    Broadcaster,
    GcMonitor,
    bench_tick_frame,
    listen_control,
    process_stats,
    raise_nofile,
    ready,
)

SUBPROTOCOL = "rtgateway.v1"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="WebSocket port (0: any free one)")
    parser.add_argument("--control-port", type=int, default=0)
    parser.add_argument("--backlog", type=int, default=1024, help="listen(2) backlog")
    parser.add_argument(
        "--prepared", action="store_true",
        help="broadcast with prepareMessage/sendPreparedMessage instead of sendMessage",
    )
    parser.add_argument(
        "--direct", action="store_true",
        help="experiment: frame once (prepareMessage) and write the frame straight to the "
             "socket when the transport has nothing buffered (one send(), no epoll_ctl, no "
             "reactor round trip); falls back to transport.write",
    )
    args = parser.parse_args(argv)

    nofile = raise_nofile()
    gcmon = GcMonitor()

    import txaio
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    txaio.use_twisted()
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    txaio.set_global_log_level("info")

    clients: set[Any] = set()
    closes: dict[str, int] = {}

    class EchoProtocol(WebSocketServerProtocol):  # type: ignore[misc]
        def onConnect(self, request: Any) -> Any:  # noqa: N802
            return SUBPROTOCOL if SUBPROTOCOL in request.protocols else None

        def onOpen(self) -> None:  # noqa: N802
            clients.add(self)

        def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802, N803
            self.sendMessage(payload, isBinary)

        def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:  # noqa: N802, N803
            if self in clients:
                clients.discard(self)
                key = str(code or 1006)
                closes[key] = closes.get(key, 0) + 1

    factory = WebSocketServerFactory(protocols=[SUBPROTOCOL], server=None, reactor=reactor)
    factory.protocol = EchoProtocol
    factory.setProtocolOptions(
        webStatus=False,
        maxMessagePayloadSize=65536,
        maxFramePayloadSize=65536,
        openHandshakeTimeout=5,
        closeHandshakeTimeout=2,
        failByDrop=False,
        autoPingInterval=0,
        perMessageCompressionAccept=lambda offers: None,
        tcpNoDelay=True,
        requireMaskedClientFrames=True,
        utf8validateIncoming=False,
    )

    def direct_write(transport: Any, data: bytes) -> None:
        """send() now if Twisted has nothing queued for this socket, else queue as usual."""
        if (
            not transport._tempDataLen
            and transport.offset == len(transport.dataBuffer)
            and transport.connected
            and not transport.disconnecting
        ):
            try:
                sent = transport.socket.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                sent = 0  # let Twisted's own write path meet (and report) the error
            if sent == len(data):
                return
            data = data[sent:]
        transport.write(data)

    def broadcast(tick: int) -> None:
        frame = bench_tick_frame(tick, time.monotonic_ns())
        if args.direct:
            raw = factory.prepareMessage(frame, isBinary=True, doNotCompress=True).payloadHybi
            for proto in tuple(clients):
                if proto.state == WebSocketServerProtocol.STATE_OPEN:
                    direct_write(proto.transport, raw)
        elif args.prepared:
            prepared = factory.prepareMessage(frame, isBinary=True, doNotCompress=True)
            for proto in tuple(clients):
                proto.sendPreparedMessage(prepared)
        else:
            for proto in tuple(clients):
                proto.sendMessage(frame, isBinary=True)

    broadcaster = Broadcaster(reactor, broadcast)

    def stats(_args: dict[str, str]) -> dict[str, Any]:
        out = process_stats()
        out.update(gcmon.snapshot(reset_max=_args.get("reset") == "1"))
        out["connections"] = len(clients)
        out["authenticated"] = len(clients)
        out["closes"] = dict(closes)
        if _args.get("objects"):
            import gc

            out["gc_objects"] = len(gc.get_objects())
        return out

    def quit_(_args: dict[str, str]) -> dict[str, Any]:
        reactor.callLater(0.05, reactor.stop)
        return {"ok": True}

    handlers = {
        "stats": stats,
        "broadcast/start": lambda a: broadcaster.start(float(a.get("hz", "20"))),
        "broadcast/stop": lambda a: broadcaster.stop(),
        "quit": quit_,
    }
    control = listen_control(reactor, args.control_port, handlers)
    port = reactor.listenTCP(args.port, factory, backlog=args.backlog, interface="127.0.0.1")
    ready(
        server="autobahn-direct" if args.direct else (
            "autobahn-prepared" if args.prepared else "autobahn"),
        ws_port=port.getHost().port,
        ws_path="/ws",
        control_port=control.getHost().port,
        pid=os.getpid(),
        nofile=nofile,
    )
    signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(reactor.stop))
    reactor.run(installSignalHandlers=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
