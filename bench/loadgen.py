"""Load generator for the gateway benchmark: N authenticated connections, four phases.

Runs in its own process(es), never inside the server.  A coordinator process
(no reactor, blocking) drives ``--procs K`` worker processes, each running a
Twisted reactor with its share of the connections, and talks to the server's
control channel (``benchcommon``) to read the server's CPU time and RSS.

Phases, each figure measured the same way against either bench server:

1. **connect**: open N connections, at most ``--concurrency`` in flight.  A
   connection counts once it is authenticated: TCP connect, WebSocket upgrade
   carrying ``Authorization: Bearer <jwt>``, ``system.hello`` sent, the
   answer received (``system.welcome`` from rtgateway; the echoed hello from
   the bare Autobahn baseline).  Reports handshakes/s and handshake latency.
2. **idle** (``--idle-seconds``): server CPU % of one core while nothing is
   sent (rtgateway still runs its 60 Hz tick, its 1 Hz sweep and the 10 s
   heartbeat pings, which the clients answer); RSS per connection =
   (RSS after idle - RSS before connecting) / connections.
3. **echo** (``--echo-seconds``): ``--echo-clients`` connections send
   ``bench.echo`` events (a ``Ping`` carrying ``time.monotonic_ns()``) at a
   fixed total ``--echo-rate``; the round trip is measured client-side.
   ``--echo-types`` can add ``bench.echo_now`` (rtgateway's urgent reply).
4. **broadcast** (``--broadcast-seconds``): the server publishes one
   ``bench.tick`` to every connection at ``--hz``; clients count delivered
   events; server CPU µs per delivered event = server CPU delta / deliveries.
   Probe connections (every ``--probe-every``-th) also parse the payload's
   send time for the publish-to-receive latency (same machine: one monotonic
   clock).

The client is lean on purpose (``--client raw``, the default): it does the
HTTP upgrade and WebSocket framing itself and counts ``bench.tick`` envelopes
by their serialised type prefix, so that one load-generator core can absorb
far more deliveries than an Autobahn client protocol could (``--client
autobahn`` is there to compare).  Client frames are masked with a random key
per frame, as RFC 6455 requires.  Tokens are minted with the development key
named by ``RTGATEWAY_DEV_KEY_FILE`` (shared with the server).

    RTGATEWAY_DEV_KEY_FILE=/tmp/k python bench/loadgen.py \\
        --url ws://127.0.0.1:8080/ws --control http://127.0.0.1:8090 --connections 2000
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import multiprocessing as mp
import os
import sys
import threading
import time
import urllib.request
from collections import deque
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchcommon import machine_busy_pct, machine_cpu, process_stats, raise_nofile

SUBPROTOCOL = "rtgateway.v1"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: An unsequenced, ack-free serialised Envelope of type bench.tick starts with these bytes.
TICK_PREFIX = b"\x1a\x0abench.tick"
ECHO_TYPES = ("bench.echo", "bench.echo_now")


# =============================================================================== wire helpers


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    b = buf[pos]
    if b < 0x80:
        return b, pos + 1
    value = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def ws_frame(payload: bytes, opcode: int = 2) -> bytes:
    """A client-to-server WebSocket frame: FIN, masked with a fresh random key."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        header = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    key = os.urandom(4)
    if not n:
        return header + key
    mask = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "little") ^ int.from_bytes(mask, "little")).to_bytes(
        n, "little"
    )
    return header + key + masked


def frame_of(type_: str, payload: bytes, priority: int = 3) -> bytes:
    """A wire protocol v1 Frame with one unsequenced Envelope."""
    from protocol import events_pb2

    env = events_pb2.Envelope(type=type_, version=1, payload=payload, priority=priority)  # type: ignore[arg-type]
    return events_pb2.Frame(envelopes=[env]).SerializeToString()


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# =============================================================================== worker side


class ClientLogic:
    """What both client flavours do with messages; subclasses move the bytes."""

    worker: Worker
    idx: int
    probe: bool
    welcomed = False
    close_code: int | None = None

    def send_payload(self, payload: bytes) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def opened(self) -> None:
        self.send_payload(self.worker.hello_frame)

    def on_message(self, payload: bytes) -> None:
        w = self.worker
        w.frames += 1
        w.bytes_in += len(payload)
        pos, n = 0, len(payload)
        probe = self.probe
        while pos < n:
            if payload[pos] != 0x0A:  # not a plain Frame.envelopes entry: parse it all
                self.full_frame(payload)
                return
            length, start = read_varint(payload, pos + 1)
            end = start + length
            if not probe and payload.startswith(TICK_PREFIX, start):
                w.ticks += 1
            else:
                self.on_envelope(payload[start:end])
            pos = end

    def full_frame(self, payload: bytes) -> None:
        from protocol import events_pb2

        frame = events_pb2.Frame()
        try:
            frame.ParseFromString(payload)
        except Exception:
            self.worker.bump(self.worker.other, "undecodable frame")
            return
        if frame.compression:
            self.worker.bump(self.worker.other, "compressed frame")
        for env in frame.envelopes:
            self.on_envelope(env.SerializeToString())

    def on_envelope(self, body: bytes) -> None:
        from protocol import events_pb2

        w = self.worker
        env = events_pb2.Envelope()
        env.ParseFromString(body)
        t = env.type
        if t == "bench.tick":
            w.ticks += 1
            if w.latency_window:
                ping = events_pb2.Ping.FromString(env.payload)
                w.bcast_latency.append(time.monotonic_ns() - ping.sent_ns)
        elif t in ECHO_TYPES:
            ping = events_pb2.Ping.FromString(env.payload)
            rtt = time.monotonic_ns() - ping.sent_ns
            if ping.nonce in w.echo_outstanding:
                w.echo_outstanding.discard(ping.nonce)
                w.echo_rtts.append(rtt)
            else:
                w.echo_late += 1
        elif t in ("system.welcome", "system.hello"):  # the baseline echoes our hello
            if not self.welcomed:
                self.welcomed = True
                w.on_welcome(self)
        elif t == "system.ping":
            ping = events_pb2.Ping.FromString(env.payload)
            pong = events_pb2.Pong(nonce=ping.nonce, sent_ns=ping.sent_ns).SerializeToString()
            self.send_payload(frame_of("system.pong", pong, priority=1))
            w.pings += 1
        elif t == "system.error":
            err = events_pb2.Error.FromString(env.payload)
            w.bump(w.errors, f"{err.code}: {err.message}")
        elif t == "system.disconnect":
            msg = events_pb2.Disconnect.FromString(env.payload)
            w.bump(w.disconnects, f"{msg.code}: {msg.reason}")
        else:
            w.bump(w.other, t)

    def lost(self, why: str) -> None:
        w = self.worker
        if self.welcomed:
            w.on_drop(self, why)
        else:
            w.on_failed(self, why)


from twisted.internet.protocol import ClientFactory, Protocol  # noqa: E402 (no reactor import)


class RawClient(Protocol, ClientLogic):
    """A WebSocket client in ~80 lines: the upgrade by hand, unmasked server frames."""

    def __init__(self, worker: Worker, idx: int, token: str) -> None:
        self.worker = worker
        self.idx = idx
        self.probe = worker.probe_every > 0 and idx % worker.probe_every == 0
        self.token = token
        self.buf = b""
        self.open = False
        self.reason = "connection lost"

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.setTcpNoDelay(True)
        self.key = base64.b64encode(os.urandom(16))
        w = self.worker
        self.transport.write(
            b"GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Protocol: %s\r\nAuthorization: Bearer %s\r\n\r\n"
            % (w.path.encode(), w.hostport.encode(), self.key, SUBPROTOCOL.encode(),
               self.token.encode())
        )
        self.token = ""

    def send_payload(self, payload: bytes) -> None:
        self.transport.write(ws_frame(payload))

    def abort(self) -> None:
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if not self.open:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data, self.buf = self.buf[:end], self.buf[end + 4:], b""
            status = head.split(b"\r\n", 1)[0].split(b" ", 2)
            if len(status) < 2 or status[1] != b"101":
                self.reason = "http " + b" ".join(status[1:]).decode(errors="replace")
                self.transport.abortConnection()
                return
            accept = base64.b64encode(hashlib.sha1(self.key + WS_GUID).digest())
            if accept not in head:
                self.reason = "bad Sec-WebSocket-Accept"
                self.transport.abortConnection()
                return
            self.open = True
            self.opened()
            if not data:
                return
        buf = self.buf + data if self.buf else data
        pos, n = 0, len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, header = b1 & 0x7F, 2
            if length == 126:
                if n - pos < 4:
                    break
                length, header = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
            elif length == 127:
                if n - pos < 10:
                    break
                length, header = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
            if n - pos < header + length:
                break
            start = pos + header
            pos = start + length
            opcode = b0 & 0x0F
            if opcode == 2 or opcode == 1:
                self.on_message(buf[start:pos])
            elif opcode == 9:
                self.transport.write(ws_frame(buf[start:pos], opcode=10))
            elif opcode == 8:
                code = int.from_bytes(buf[start:start + 2], "big") if length >= 2 else 1005
                self.close_code = code
                self.reason = f"close {code} {buf[start + 2:pos].decode(errors='replace')}"
                self.transport.write(ws_frame(buf[start:start + 2], opcode=8))
                self.transport.loseConnection()
                self.buf = b""
                return
        self.buf = buf[pos:] if pos < n else b""

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        self.lost(self.reason)


class OneShotFactory(ClientFactory):
    """Hands out one pre-built client; reports a failed TCP connect."""

    noisy = False

    def __init__(self, client: RawClient) -> None:
        self.client = client

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802
        return self.client

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:  # noqa: N802
        self.client.worker.on_failed(self.client, f"connect failed: {reason.getErrorMessage()}")


_autobahn_classes: tuple[Any, Any] | None = None


def autobahn_classes() -> tuple[Any, Any]:
    """The Autobahn client flavour (imported only when asked for)."""
    global _autobahn_classes
    if _autobahn_classes is not None:
        return _autobahn_classes
    from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol

    class AbClient(WebSocketClientProtocol, ClientLogic):  # type: ignore[misc]
        def onOpen(self) -> None:  # noqa: N802
            self.opened()

        def send_payload(self, payload: bytes) -> None:
            self.sendMessage(payload, isBinary=True)

        def abort(self) -> None:
            self.dropConnection(abort=True)

        def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802, N803
            self.on_message(payload)

        def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:  # noqa: N802, N803
            self.close_code = code
            self.lost(f"close {code} {reason}")

    class AbFactory(WebSocketClientFactory):  # type: ignore[misc]
        protocol = AbClient
        noisy = False

        def buildProtocol(self, addr: Any) -> Any:  # noqa: N802
            proto = super().buildProtocol(addr)
            proto.worker = self.worker
            proto.idx = self.idx
            proto.probe = self.worker.probe_every > 0 and self.idx % self.worker.probe_every == 0
            self.client = proto
            return proto

        def clientConnectionFailed(self, connector: Any, reason: Any) -> None:  # noqa: N802
            self.worker.on_failed(None, f"connect failed: {reason.getErrorMessage()}")

    _autobahn_classes = (AbClient, AbFactory)
    return _autobahn_classes


def make_autobahn_factory(worker: Worker, idx: int, token: str) -> Any:
    _client, factory_class = autobahn_classes()
    factory = factory_class(
        worker.url, protocols=[SUBPROTOCOL], headers={"Authorization": f"Bearer {token}"}
    )
    factory.setProtocolOptions(
        autoPingInterval=0, perMessageCompressionOffers=[], openHandshakeTimeout=60,
        tcpNoDelay=True, failByDrop=False,
    )
    factory.worker = worker
    factory.idx = idx
    factory.client = None
    return factory


class Worker:
    """One load-generator process: its share of the connections, one reactor."""

    def __init__(self, wid: int, conf: dict[str, Any], pipe: Any) -> None:
        self.wid = wid
        self.conf = conf
        self.pipe = pipe
        self.url = conf["url"]
        u = urlparse(self.url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.path = u.path or "/"
        self.hostport = f"{self.host}:{self.port}"
        self.count = conf["counts"][wid]
        self.first_index = sum(conf["counts"][:wid])
        self.probe_every = conf["probe_every"]
        self.kind = conf["client"]
        self.clients: dict[Any, None] = {}  # insertion-ordered: the echo clients come first
        self.tokens: list[str] = []
        from protocol import events_pb2

        hello = events_pb2.Hello(client_name="rtgateway-bench/1").SerializeToString()
        self.hello_frame = frame_of("system.hello", hello, priority=1)
        self.reset_counters()
        self.closing = False
        self.phase = "prepare"

    def reset_counters(self) -> None:
        self.frames = self.bytes_in = self.ticks = self.pings = 0
        self.errors: dict[str, int] = {}
        self.disconnects: dict[str, int] = {}
        self.other: dict[str, int] = {}
        self.drops: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self.ok = self.failed = 0
        self.hs_latency: list[float] = []
        self.echo_rtts: list[int] = []
        self.echo_outstanding: set[int] = set()
        self.echo_late = 0
        self.echo_sent = 0
        self.bcast_latency: list[int] = []
        self.latency_window = False

    @staticmethod
    def bump(table: dict[str, int], key: str) -> None:
        table[key] = table.get(key, 0) + 1

    # ------------------------------------------------------------ process plumbing

    def run(self) -> None:
        raise_nofile()
        from twisted.internet import reactor

        self.reactor = reactor

        def reader() -> None:
            while True:
                try:
                    msg = self.pipe.recv()
                except EOFError:
                    reactor.callFromThread(reactor.stop)
                    return
                reactor.callFromThread(self.command, msg)
                if msg[0] == "exit":
                    return

        threading.Thread(target=reader, daemon=True).start()
        reactor.run(installSignalHandlers=False)

    def reply(self, value: Any) -> None:
        self.pipe.send(value)

    def command(self, msg: tuple[Any, ...]) -> None:
        name, *args = msg
        try:
            getattr(self, "cmd_" + name)(*args)
        except Exception as exc:  # never leave the coordinator waiting
            import traceback

            self.reply({"error": repr(exc), "traceback": traceback.format_exc()})

    # ------------------------------------------------------------ commands

    def cmd_prepare(self) -> None:
        from gateway.auth import (
            DEV_ALGORITHM,
            DEV_KID,
            default_dev_key_path,
            ensure_dev_key,
            mint_token,
        )

        secret, _ = ensure_dev_key(default_dev_key_path())
        now = int(time.time())
        self.tokens = [
            mint_token(secret, DEV_ALGORITHM, DEV_KID,
                       {"sub": f"bench-{self.first_index + i}", "iat": now, "exp": now + 7200})
            for i in range(self.count)
        ]
        self.reply({"ok": True, "tokens": len(self.tokens)})

    def cmd_connect(self, concurrency: int, timeout: float) -> None:
        self.phase = "connect"
        self._pending = deque(range(self.count))
        self._in_flight = 0
        self._done = 0
        self._t_first = time.monotonic()
        self._t_last = self._t_first
        self._starts: dict[int, float] = {}
        self._concurrency = concurrency
        self._connect_timeout = timeout
        if not self.count:
            self._finish_connect()
            return
        self._pump()

    def _pump(self) -> None:
        while self._in_flight < self._concurrency and self._pending:
            i = self._pending.popleft()
            self._in_flight += 1
            idx = self.first_index + i
            self._starts[idx] = time.monotonic()
            token = self.tokens[i]
            if self.kind == "autobahn":
                factory = make_autobahn_factory(self, idx, token)
                self.reactor.connectTCP(self.host, self.port, factory,
                                        timeout=self._connect_timeout)
                self.reactor.callLater(self._connect_timeout, self._check_stuck_ab, factory)
                continue
            client = RawClient(self, idx, token)
            self.reactor.connectTCP(self.host, self.port, OneShotFactory(client),
                                    timeout=self._connect_timeout)
            # A handshake that never finishes must not hold the phase forever.
            self.reactor.callLater(self._connect_timeout, self._check_stuck, client)

    def _check_stuck_ab(self, factory: Any) -> None:
        proto = factory.client
        if proto is not None and not proto.welcomed:
            proto.dropConnection(abort=True)

    def _check_stuck(self, client: Any) -> None:
        if not client.welcomed and getattr(client, "transport", None) is not None:
            client.reason = "handshake timeout"
            client.transport.abortConnection()

    def _one_done(self) -> None:
        self._in_flight -= 1
        self._done += 1
        self._t_last = time.monotonic()
        if self._done >= self.count:
            self._finish_connect()
        else:
            self._pump()

    def _finish_connect(self) -> None:
        self.reply({
            "ok": self.ok, "failed": self.failed, "failures": self.failures,
            "t_first": self._t_first, "t_last": self._t_last,
            "hs_latency": self.hs_latency,
        })

    def on_welcome(self, client: Any) -> None:
        self.clients[client] = None
        self.ok += 1
        if self.phase == "connect":
            start = self._starts.pop(client.idx, None)
            if start is not None:
                self.hs_latency.append(time.monotonic() - start)
            self._one_done()

    def on_failed(self, client: Any, why: str) -> None:
        self.failed += 1
        self.bump(self.failures, why)
        if self.phase == "connect":
            if client is not None:
                self._starts.pop(client.idx, None)
            self._one_done()

    def on_drop(self, client: Any, why: str) -> None:
        self.clients.pop(client, None)
        if not self.closing:
            self.bump(self.drops, f"{self.phase}: {why}")

    def cmd_phase(self, name: str) -> None:
        self.phase = name
        self.reply({"ok": True})

    def cmd_stats(self) -> None:
        s = process_stats()
        s.update({
            "open": len(self.clients), "frames": self.frames, "bytes_in": self.bytes_in,
            "ticks": self.ticks, "pings": self.pings, "errors": self.errors,
            "disconnects": self.disconnects, "other": self.other, "drops": self.drops,
            "failures": self.failures,
        })
        self.reply(s)

    def cmd_echo_start(self, type_: str, rate: float, nclients: int) -> None:
        from twisted.internet import task

        from protocol import events_pb2

        self.phase = f"echo {type_}"
        targets = [c for c in list(self.clients)[:nclients] if c.welcomed]
        self.echo_rtts, self.echo_outstanding, self.echo_late, self.echo_sent = [], set(), 0, 0
        if not targets or rate <= 0:
            self._echo_loop = None
            self.reply({"ok": True, "clients": 0})
            return
        t0 = time.monotonic()
        nonce = self.wid << 40
        Ping = events_pb2.Ping
        prefix_type = type_

        def tick() -> None:
            nonlocal nonce
            due = int(rate * (time.monotonic() - t0)) - self.echo_sent
            for _ in range(max(0, due)):
                nonce += 1
                client = targets[self.echo_sent % len(targets)]
                self.echo_sent += 1
                self.echo_outstanding.add(nonce)
                payload = Ping(nonce=nonce, sent_ns=time.monotonic_ns()).SerializeToString()
                client.send_payload(frame_of(prefix_type, payload))

        self._echo_loop = task.LoopingCall(tick)
        self._echo_loop.start(max(0.001, min(0.01, 1.0 / rate)), now=True)
        self.reply({"ok": True, "clients": len(targets)})

    def cmd_echo_stop(self) -> None:
        if getattr(self, "_echo_loop", None) is not None and self._echo_loop.running:
            self._echo_loop.stop()
        self.reply({"sent": self.echo_sent})

    def cmd_echo_results(self) -> None:
        self.reply({
            "sent": self.echo_sent, "received": len(self.echo_rtts), "late": self.echo_late,
            "missing": len(self.echo_outstanding), "rtt_ns": self.echo_rtts,
        })

    def cmd_latency_window(self, on: bool) -> None:
        self.latency_window = on
        if on:
            self.bcast_latency = []
        self.reply({"ok": True, "samples": self.bcast_latency if not on else []})

    def cmd_close(self) -> None:
        self.closing = True
        for client in list(self.clients):
            client.abort()
        self.reactor.callLater(0.3, self.reply, {"ok": True, "left": len(self.clients)})

    def cmd_exit(self) -> None:
        self.reply({"ok": True})
        self.reactor.callLater(0.05, self.reactor.stop)


def worker_main(wid: int, conf: dict[str, Any], pipe: Any) -> None:
    Worker(wid, conf, pipe).run()


# =============================================================================== coordinator


class Control:
    """The server's control channel (blocking HTTP; the coordinator runs no reactor)."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")

    def call(self, path: str, post: bool = False, **query: Any) -> dict[str, Any]:
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        url = f"{self.base}/{path}" + (f"?{qs}" if qs else "")
        with urllib.request.urlopen(url, data=b"" if post else None, timeout=60) as resp:  # noqa: S310
            return json.loads(resp.read())


class Workers:
    def __init__(self, procs: list[Any], pipes: list[Any]) -> None:
        self.procs = procs
        self.pipes = pipes

    def all(self, *msg: Any, timeout: float = 120.0) -> list[Any]:
        for p in self.pipes:
            p.send(msg)
        out = []
        deadline = time.monotonic() + timeout
        for p in self.pipes:
            if not p.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"worker did not answer {msg[0]!r} in {timeout}s")
            value = p.recv()
            if isinstance(value, dict) and "error" in value and "traceback" in value:
                raise RuntimeError(f"worker failed on {msg[0]}: {value['traceback']}")
            out.append(value)
        return out

    def each(self, msgs: list[tuple[Any, ...]], timeout: float = 120.0) -> list[Any]:
        for p, msg in zip(self.pipes, msgs, strict=True):
            p.send(msg)
        out = []
        deadline = time.monotonic() + timeout
        for p in self.pipes:
            if not p.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError("worker did not answer in time")
            out.append(p.recv())
        return out

    def stop(self) -> None:
        try:
            self.all("exit", timeout=5)
        except Exception:
            pass
        for proc in self.procs:
            proc.join(timeout=3)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=3)


def merge_counts(dicts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def cpu(stats: list[dict[str, Any]]) -> float:
    return sum(s["cpu"] for s in stats)


def ms(ns_or_s: float | None, scale: float) -> float | None:
    return None if ns_or_s is None else round(ns_or_s * scale, 3)


def starved_pct(s0: dict[str, Any], s1: dict[str, Any], w0: list[Any], w1: list[Any],
                dt: float) -> dict[str, float]:
    """% of the phase the server / the busiest worker was runnable but not running."""
    waits = [b.get("rq_wait", 0) - a.get("rq_wait", 0) for a, b in zip(w0, w1, strict=True)]
    worst = max(waits, default=0)
    return {
        "server": round((s1.get("rq_wait", 0) - s0.get("rq_wait", 0)) / dt * 100, 2),
        "loadgen": round(worst / dt * 100, 2),
    }


def other_pct(mc0: Any, mc1: Any, s0: dict[str, Any], s1: dict[str, Any], w0: list[Any],
              w1: list[Any], dt: float) -> float:
    """CPU used by processes other than the server and the load generator (% of one core)."""
    busy = machine_busy_pct(mc0, mc1)
    ours = ((s1["cpu"] - s0["cpu"]) + (cpu(w1) - cpu(w0))) / dt * 100
    return round(max(0.0, busy - ours), 1)


def server_delta(s0: dict[str, Any], s1: dict[str, Any]) -> dict[str, Any]:
    """What the server spent between two /stats answers (s0 asked with reset=1)."""
    d: dict[str, Any] = {
        "cpu_s": round(s1["cpu"] - s0["cpu"], 3),
        "gc_count": [b - a for a, b in zip(s0["gc_count"], s1["gc_count"], strict=True)],
        "gc_ms": [round(b - a, 1) for a, b in zip(s0["gc_ms"], s1["gc_ms"], strict=True)],
        "gc_max_pause_ms": s1["gc_max_pause_ms"],
    }
    for key in ("tick_overruns", "ticks_skipped", "closes"):
        if key in s1:
            a, b = s0.get(key) or {}, s1.get(key) or {}
            delta = {k: b[k] - a.get(k, 0) for k in b if b[k] != a.get(k, 0)}
            if delta:
                d[key] = delta
    for key in ("timed_sweep", "timed_flush"):
        if key in s1:
            d[key] = {"calls": s1[key]["count"] - s0[key]["count"],
                      "total_ms": round(s1[key]["total_ms"] - s0[key]["total_ms"], 1),
                      "max_ms": s1[key]["max_ms"], "slow_calls_ms": s1[key]["slow_calls_ms"]}
    if "tick_seconds_sum" in s1 and "tick_count" in s1:
        ticks = s1["tick_count"] - s0.get("tick_count", 0)
        d["ticks"] = ticks
        d["tick_cpu_pct_of_wall"] = round(
            (s1["tick_seconds_sum"] - s0.get("tick_seconds_sum", 0)) / (s1["mono"] - s0["mono"])
            * 100, 2)
    return d


def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile()
    ctl = Control(args.control)
    k = max(1, args.procs)
    n = args.connections
    counts = [n // k + (1 if i < n % k else 0) for i in range(k)]
    conf = {
        "url": args.url, "counts": counts, "probe_every": args.probe_every, "client": args.client,
    }
    ctx = mp.get_context("spawn")
    pipes, procs = [], []
    for wid in range(k):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=worker_main, args=(wid, conf, child), daemon=True)
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    workers = Workers(procs, pipes)
    result: dict[str, Any] = {
        "server": None, "connections_requested": n, "procs": k, "client": args.client,
    }
    def log(*a: Any) -> None:
        if not args.quiet:
            print(*a, file=sys.stderr, flush=True)

    try:
        workers.all("prepare", timeout=300)

        # ------------------------------------------------------------ connect
        for path in args.call_before_connect:
            result.setdefault("calls", {})[f"before_connect {path}"] = ctl.call(path, post=True)
        s_before = ctl.call("stats", reset=1)
        log(f"[loadgen] connecting {n} ({k} procs, {args.concurrency} in flight per proc)")
        w0 = workers.all("stats")
        log("[loadgen] phase connect begin")
        conn = workers.all("connect", args.concurrency, args.connect_timeout,
                           timeout=args.connect_timeout + n / 50 + 60)
        w1 = workers.all("stats")
        s_connected = ctl.call("stats")
        log("[loadgen] phase connect end")
        ok = sum(c["ok"] for c in conn)
        span = max(c["t_last"] for c in conn) - min(c["t_first"] for c in conn)
        hs = [x for c in conn for x in c["hs_latency"]]
        result["server"] = s_before.get("server")
        result["connect"] = {
            "ok": ok, "failed": sum(c["failed"] for c in conn),
            "failures": merge_counts([c["failures"] for c in conn]),
            "seconds": round(span, 3),
            "handshakes_per_s": round(ok / span, 1) if span > 0 else None,
            "latency_p50_ms": ms(percentile(hs, 0.5), 1e3),
            "latency_p99_ms": ms(percentile(hs, 0.99), 1e3),
            "server_cpu_s": round(s_connected["cpu"] - s_before["cpu"], 3),
            "server_cpu_us_per_handshake": round(
                (s_connected["cpu"] - s_before["cpu"]) / ok * 1e6, 1) if ok else None,
            "loadgen_cpu_s": round(cpu(w1) - cpu(w0), 3),
            "server": server_delta(s_before, s_connected),
        }
        log(f"[loadgen] connect: {result['connect']}")

        # ------------------------------------------------------------ idle
        workers.all("phase", "idle")
        t0 = time.monotonic()
        s0, w0 = ctl.call("stats", reset=1), workers.all("stats")
        mc0 = machine_cpu()
        log("[loadgen] phase idle begin")
        time.sleep(args.idle_seconds if "idle" in args.phases else 0.5)
        s1, w1 = ctl.call("stats"), workers.all("stats")
        mc1 = machine_cpu()
        dt = s1["mono"] - s0["mono"]
        open_now = sum(w["open"] for w in w1)
        result["idle"] = {
            "seconds": round(time.monotonic() - t0, 2),
            "server_cpu_pct": round((s1["cpu"] - s0["cpu"]) / dt * 100, 2),
            "server_rss_before_kib": s_before["rss_kb"],
            "server_rss_after_kib": s1["rss_kb"],
            "rss_per_conn_kib": round((s1["rss_kb"] - s_before["rss_kb"]) / open_now, 2)
            if open_now else None,
            "open": open_now,
            "server_connections": s1.get("connections"),
            "loadgen_cpu_pct": round((cpu(w1) - cpu(w0)) / dt * 100, 2),
            "other_cpu_pct": other_pct(mc0, mc1, s0, s1, w0, w1, dt),
            "starved_pct": starved_pct(s0, s1, w0, w1, dt),
            "server": server_delta(s0, s1),
        }
        log(f"[loadgen] idle: {result['idle']}")
        for path in args.call_after_idle:
            path = path.replace("{open}", str(open_now))
            result.setdefault("calls", {})[f"after_idle {path}"] = ctl.call(path)

        # ------------------------------------------------------------ echo
        result["echo"] = {}
        if "echo" not in args.phases:
            args.echo_types = []
        nclients = min(args.echo_clients, open_now)
        shares = [nclients // k + (1 if i < nclients % k else 0) for i in range(k)]
        for type_ in args.echo_types:
            workers.all("phase", f"echo {type_}")
            s0, w0 = ctl.call("stats", reset=1), workers.all("stats")
            mc0 = machine_cpu()
            started = workers.each([
                ("echo_start", type_, args.echo_rate * shares[i] / max(1, nclients), shares[i])
                for i in range(k)
            ])
            log(f"[loadgen] phase {type_} begin")
            time.sleep(args.echo_seconds)
            workers.all("echo_stop")
            s1, w1 = ctl.call("stats"), workers.all("stats")
            mc1 = machine_cpu()
            time.sleep(args.echo_grace)
            res = workers.all("echo_results")
            rtts = [x for r in res for x in r["rtt_ns"]]
            sent = sum(r["sent"] for r in res)
            dt = s1["mono"] - s0["mono"]
            result["echo"][type_] = {
                "clients": sum(s["clients"] for s in started),
                "target_rate": args.echo_rate,
                "sent": sent,
                "sent_per_s": round(sent / args.echo_seconds, 1),
                "received": len(rtts),
                "missing": sum(r["missing"] for r in res),
                "late": sum(r["late"] for r in res),
                "rtt_p50_ms": ms(percentile(rtts, 0.5), 1e-6),
                "rtt_p99_ms": ms(percentile(rtts, 0.99), 1e-6),
                "rtt_max_ms": ms(max(rtts) if rtts else None, 1e-6),
                "server_cpu_pct": round((s1["cpu"] - s0["cpu"]) / dt * 100, 2),
                "server_cpu_us_per_echo": round((s1["cpu"] - s0["cpu"]) / sent * 1e6, 1)
                if sent else None,
                "loadgen_cpu_pct": round((cpu(w1) - cpu(w0)) / dt * 100, 2),
                "other_cpu_pct": other_pct(mc0, mc1, s0, s1, w0, w1, dt),
                "starved_pct": starved_pct(s0, s1, w0, w1, dt),
                "server": server_delta(s0, s1),
            }
            log(f"[loadgen] echo {type_}: {result['echo'][type_]}")

        # ------------------------------------------------------------ broadcast
        if args.broadcast_seconds > 0 and "broadcast" in args.phases:
            workers.all("phase", "broadcast")
            ctl.call("broadcast/start", post=True, hz=args.hz)
            time.sleep(args.broadcast_warmup)
            workers.all("latency_window", True)
            log("[loadgen] phase broadcast begin")
            w0 = workers.all("stats")
            s0 = ctl.call("stats", reset=1)
            mc0 = machine_cpu()
            m0 = time.monotonic()
            time.sleep(args.broadcast_seconds)
            mc1 = machine_cpu()
            s1 = ctl.call("stats")
            w1 = workers.all("stats")
            m1 = time.monotonic()
            lat = workers.all("latency_window", False)
            bc = ctl.call("broadcast/stop", post=True)
            time.sleep(0.5)
            delivered = sum(w["ticks"] for w in w1) - sum(w["ticks"] for w in w0)
            frames = sum(w["frames"] for w in w1) - sum(w["frames"] for w in w0)
            nbytes = sum(w["bytes_in"] for w in w1) - sum(w["bytes_in"] for w in w0)
            dt = m1 - m0
            sdt = s1["mono"] - s0["mono"]
            samples = [x for r in lat for x in r["samples"]]
            open_b = sum(w["open"] for w in w1)
            result["broadcast"] = {
                "hz": args.hz,
                "seconds": round(dt, 3),
                "expected_per_s": round(open_b * args.hz, 1),
                "delivered_per_s": round(delivered / dt, 1),
                "delivered_fraction": round(delivered / dt / (open_b * args.hz), 4)
                if open_b else None,
                "bytes_per_frame": round(nbytes / frames, 1) if frames else None,
                "server_cpu_pct": round((s1["cpu"] - s0["cpu"]) / sdt * 100, 2),
                "server_user_pct": round((s1["utime"] - s0["utime"]) / sdt * 100, 2),
                "server_sys_pct": round((s1["stime"] - s0["stime"]) / sdt * 100, 2),
                "server_cpu_us_per_delivery": round((s1["cpu"] - s0["cpu"]) / delivered * 1e6, 2)
                if delivered else None,
                "latency_p50_ms": ms(percentile(samples, 0.5), 1e-6),
                "latency_p99_ms": ms(percentile(samples, 0.99), 1e-6),
                "latency_samples": len(samples),
                "loadgen_cpu_pct": round((cpu(w1) - cpu(w0)) / dt * 100, 2),
                "server_broadcasts": bc,
                "server_rss_kib": s1["rss_kb"],
                "server_dropped_out": (s1.get("dropped_out") or 0) - (s0.get("dropped_out") or 0),
                "other_cpu_pct": other_pct(mc0, mc1, s0, s1, w0, w1, dt),
                "starved_pct": starved_pct(s0, s1, w0, w1, dt),
                "server": server_delta(s0, s1),
            }
            log(f"[loadgen] broadcast: {result['broadcast']}")

        # ------------------------------------------------------------ wrap up
        wf = workers.all("stats")
        s_end = ctl.call("stats")
        result["end"] = {
            "open": sum(w["open"] for w in wf),
            "drops": merge_counts([w["drops"] for w in wf]),
            "errors": merge_counts([w["errors"] for w in wf]),
            "disconnects": merge_counts([w["disconnects"] for w in wf]),
            "other": merge_counts([w["other"] for w in wf]),
            "pings_answered": sum(w["pings"] for w in wf),
            "server": {k2: v for k2, v in s_end.items() if k2 not in ("mono",)},
        }
        workers.all("close", timeout=60)
    finally:
        workers.stop()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="ws://127.0.0.1:PORT/ws")
    parser.add_argument("--control", required=True, help="http://127.0.0.1:PORT (server control)")
    parser.add_argument("--connections", "-n", type=int, default=2000)
    parser.add_argument("--procs", type=int, default=1, help="load-generator worker processes")
    parser.add_argument("--client", choices=("raw", "autobahn"), default="raw")
    parser.add_argument("--concurrency", type=int, default=128,
                        help="handshakes in flight per worker process")
    parser.add_argument("--connect-timeout", type=float, default=30.0)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--echo-clients", type=int, default=100)
    parser.add_argument("--echo-rate", type=float, default=1000.0, help="total echo messages/s")
    parser.add_argument("--echo-seconds", type=float, default=5.0)
    parser.add_argument("--echo-grace", type=float, default=0.5,
                        help="seconds to wait for the last echoes")
    parser.add_argument("--echo-types", nargs="+", default=["bench.echo"], choices=ECHO_TYPES)
    parser.add_argument("--hz", type=float, default=20.0, help="broadcast rate")
    parser.add_argument("--broadcast-seconds", type=float, default=5.0)
    parser.add_argument("--broadcast-warmup", type=float, default=1.0)
    parser.add_argument("--probe-every", type=int, default=20,
                        help="every k-th connection parses broadcast payloads for latency")
    parser.add_argument("--phases", default="idle,echo,broadcast",
                        help="which phases to run after connecting (comma-separated)")
    parser.add_argument("--call-before-connect", action="append", default=[], metavar="PATH",
                        help="POST this control path before connecting (e.g. tracemalloc/mark)")
    parser.add_argument("--call-after-idle", action="append", default=[], metavar="PATH",
                        help="GET this control path after the idle phase, keep its answer; "
                             "{open} is replaced by the open connection count")
    parser.add_argument("--json-out", help="write the result here as JSON")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if not os.environ.get("RTGATEWAY_DEV_KEY_FILE"):
        parser.error("set RTGATEWAY_DEV_KEY_FILE to the server's development key file")
    args.phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    result = run(args)
    text = json.dumps(result, indent=2)
    if args.json_out:
        Path(args.json_out).write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
