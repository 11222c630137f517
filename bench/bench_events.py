"""Event path throughput: inbound (decode, validate, route) and outbound (queue, batch, encode).

Runs the real Gateway engine with in-memory transports (no sockets, so the
figures are the engine's own cost per event on one core) and compares
batched frames (many events per WebSocket message, as the tick flush sends
them) with one event per message.  "writes" counts transport writes: each
is one WebSocket message and, on a real socket, at least one send syscall.

    python bench/bench_events.py [--events 200000] [--batch 32]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from twisted.internet import task  # noqa: E402

from gateway.auth import Identity, TokenVerifier  # noqa: E402
from gateway.codes import CloseCode  # noqa: E402
from gateway.config import load  # noqa: E402
from gateway.events import Delivery, Direction, EventContext, spec  # noqa: E402
from gateway.server import SUBPROTOCOL, Admission, Gateway  # noqa: E402
from gateway.wire import encode_fragment  # noqa: E402
from protocol import events_pb2, game_pb2  # noqa: E402


class Sink:
    """A transport that counts what would be written."""

    def __init__(self, gateway: Gateway, player: str) -> None:
        self.connection = gateway.new_connection("127.0.0.1")
        self.writes = 0
        self.bytes = 0

    def send_frame(self, data: bytes) -> None:
        self.writes += 1
        self.bytes += len(data) + (2 if len(data) < 126 else 4)  # + WebSocket header

    def send_prepared(self, prepared: Any, size: int) -> None:
        self.writes += 1
        self.bytes += size + (2 if size < 126 else 4)

    def close(self, code: CloseCode, reason: str, *, reconnect: bool = True) -> None:
        raise RuntimeError(f"closed: {code} {reason}")

    def abort(self) -> None:
        raise RuntimeError("aborted")


def make_gateway(batch: int) -> tuple[Gateway, Sink, task.Clock]:
    config = load(None, {
        "limits.messages_per_second": 1e9, "limits.messages_burst": 1_000_000_000,
        "limits.max_events_per_frame": max(64, batch),
        "limits.outbound_soft_bytes": 1 << 30, "limits.outbound_hard_bytes": 1 << 31,
        "compression.algorithms": "[]",
    })
    clock = task.Clock()
    gateway = Gateway(config, TokenVerifier(config.auth, keys={}, clock=clock), clock=clock)
    gateway.registry.register(
        spec("bench.move", game_pb2.WorldTime, direction=Direction.BOTH,
             delivery=Delivery.UNRELIABLE),
        spec("bench.chat", game_pb2.ChatMessage, direction=Direction.BOTH),
    )
    sink = Sink(gateway, "p1")
    identity = Identity("p1", {}, time.time() + 3600)
    gateway.opened(sink, Admission(SUBPROTOCOL, identity))  # type: ignore[arg-type]
    hello = events_pb2.Envelope(type="system.hello",
                                payload=events_pb2.Hello().SerializeToString())
    gateway.received(sink, encode_fragment(hello))  # type: ignore[arg-type]
    return gateway, sink, clock


def inbound(events: int, batch: int) -> tuple[float, int]:
    gateway, sink, _clock = make_gateway(batch)
    handled = [0]

    def handler(ctx: EventContext, msg: Any) -> None:
        handled[0] += 1

    gateway.router.add("bench.move", handler)
    payload = game_pb2.WorldTime(tick=12345, game_time=3.5).SerializeToString()
    frames = []
    for start in range(0, events, batch):
        frames.append(b"".join(
            encode_fragment(events_pb2.Envelope(type="bench.move", version=1, payload=payload))
            for _ in range(min(batch, events - start))
        ))
    t0 = time.perf_counter()
    for frame in frames:
        gateway.received(sink, frame)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - t0
    assert handled[0] == events, (handled[0], events)
    return elapsed, sum(len(f) for f in frames)


def outbound(events: int, batch: int, reliable: bool) -> tuple[float, Sink]:
    gateway, sink, _clock = make_gateway(batch)
    sink.writes = sink.bytes = 0
    conn = sink.connection
    type_ = "bench.chat" if reliable else "bench.move"
    msg = (game_pb2.ChatMessage(channel="global", text="hello there", from_player="p2")
           if reliable else game_pb2.WorldTime(tick=12345, game_time=3.5))
    t0 = time.perf_counter()
    sent = 0
    while sent < events:
        for _ in range(min(batch, events - sent)):
            gateway.send_to_connection(conn, type_, msg)
        sent += batch
        gateway.flush()
        if reliable:
            conn.acknowledge(conn.next_out_seq - 1)  # the client keeps up
    elapsed = time.perf_counter() - t0
    return elapsed, sink


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    n, b = args.events, args.batch
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; {n} events, batch {b}")
    print(f"{'path':<34}{'events/s':>12}{'µs/event':>10}{'bytes/event':>13}{'writes/event':>14}")
    for label, size in ((f"inbound, {b} events/frame", b), ("inbound, 1 event/frame", 1)):
        elapsed, wire = inbound(n, size)
        print(f"{label:<34}{n / elapsed:>12,.0f}{elapsed / n * 1e6:>10.2f}{wire / n:>13.1f}"
              f"{1 / size:>14.3f}")
    for reliable in (False, True):
        kind = "reliable" if reliable else "unreliable"
        for label, size in ((f"outbound {kind}, batched {b}", b), (f"outbound {kind}, 1/frame", 1)):
            elapsed, sink = outbound(n, size, reliable)
            print(f"{label:<34}{n / elapsed:>12,.0f}{elapsed / n * 1e6:>10.2f}"
                  f"{sink.bytes / n:>13.1f}{sink.writes / n:>14.3f}")


if __name__ == "__main__":
    main()
