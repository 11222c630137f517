"""Fan-out between instances over the backend bus.

Follows Synapse's replication design: typed bus messages, the origin
instance id on every message so a receiver drops its own echoes, a sequence
per (origin, channel) so a receiver sees gaps, and on every reconnect
"subscribe first, then resync", because pub/sub loses what was published
while a subscriber was away.  Reliable events do not depend on the bus
alone: they are stored in a topic log first (see gateway.session), the bus
only notifies.

Publishes made while the backend is unreachable wait in a bounded outbox and
go out, in order, when it is back.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Generator
from typing import Any

from google.protobuf.message import DecodeError
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.backend.base import Backend
from gateway.metrics import Metrics
from protocol import internal_pb2

__all__ = ["Fanout", "channel_for", "topic_of"]

log = Logger()

_CHANNEL_PREFIX = "t:"
#: Per-channel sequence counters kept for this many channels (LRU), each side.
_MAX_TRACKED = 100_000
#: Seconds before retrying publishes that failed while the backend looked ready.
OUTBOX_RETRY_SECONDS = 0.5


def channel_for(topic: str) -> str:
    return _CHANNEL_PREFIX + topic


def topic_of(channel: str) -> str:
    return channel[len(_CHANNEL_PREFIX):] if channel.startswith(_CHANNEL_PREFIX) else channel


class Fanout:
    """This instance's side of the bus."""

    def __init__(
        self,
        backend: Backend,
        instance_id: str,
        metrics: Metrics,
        *,
        outbox_limit: int = 10_000,
        clock: IReactorTime | None = None,
    ) -> None:
        self.backend = backend
        self.instance_id = instance_id
        self.metrics = metrics
        self.outbox_limit = outbox_limit
        self.clock = clock
        self._retry_pending = False
        self.on_event: Callable[[internal_pb2.BusEvent], object] = lambda event: None
        self.on_control: Callable[[internal_pb2.BusControl], object] = lambda control: None
        self.on_resync: list[Callable[[], object]] = []
        self._out_seq: OrderedDict[str, int] = OrderedDict()
        self._in_seq: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._outbox: deque[tuple[str, bytes]] = deque()
        self._draining_outbox = False
        self._subscribing: dict[str, list[defer.Deferred[None]]] = {}
        backend.on_message = self._received
        backend.on_resync = self._resynced
        previous = backend.on_ready_change

        def ready_changed(ready: bool) -> None:
            previous(ready)
            if ready:
                self._drain_outbox()

        backend.on_ready_change = ready_changed

    # ------------------------------------------------------------------ subscriptions

    def subscribe(self, topic: str) -> None:
        d = self.backend.subscribe(channel_for(topic))
        d.addErrback(self._log_failure, "subscribe", topic)
        if not d.called:
            waiters: list[defer.Deferred[None]] = []
            self._subscribing[topic] = waiters

            def done(result: object) -> object:
                if self._subscribing.get(topic) is waiters:
                    del self._subscribing[topic]
                for waiter in waiters:
                    waiter.callback(None)
                return result

            d.addBoth(done)

    def subscribed(self, topics: list[str]) -> defer.Deferred[None]:
        """Fires once every topic's subscription is in effect ("subscribe first, then read")."""
        waits: list[defer.Deferred[None]] = []
        for topic in topics:
            waiters = self._subscribing.get(topic)
            if waiters is not None:
                d: defer.Deferred[None] = defer.Deferred()
                waiters.append(d)
                waits.append(d)
        if not waits:
            return defer.succeed(None)
        return defer.gatherResults(waits).addCallback(lambda _: None)

    def unsubscribe(self, topic: str) -> None:
        channel = channel_for(topic)
        for key in [k for k in self._in_seq if k[1] == channel]:
            del self._in_seq[key]
        d = self.backend.unsubscribe(channel)
        d.addErrback(self._log_failure, "unsubscribe", topic)

    # ------------------------------------------------------------------ publishing

    def _next_seq(self, channel: str) -> int:
        seq = self._out_seq.pop(channel, 0) + 1
        self._out_seq[channel] = seq
        if len(self._out_seq) > _MAX_TRACKED:
            self._out_seq.popitem(last=False)
        return seq

    def publish_event(
        self, topic: str, type_: str, payload: bytes, *, topic_seq: int = 0,
        correlation_id: int = 0,
    ) -> None:
        channel = channel_for(topic)
        msg = internal_pb2.BusMessage(
            origin=self.instance_id,
            origin_seq=self._next_seq(channel),
            event=internal_pb2.BusEvent(
                topic=topic, type=type_, payload=payload, topic_seq=topic_seq,
                correlation_id=correlation_id,
            ),
        )
        self._send(channel, msg.SerializeToString())

    def publish_control(self, topic: str, control: internal_pb2.BusControl) -> None:
        channel = channel_for(topic)
        msg = internal_pb2.BusMessage(
            origin=self.instance_id, origin_seq=self._next_seq(channel), control=control
        )
        self._send(channel, msg.SerializeToString())

    def _send(self, channel: str, data: bytes) -> None:
        self.metrics.bus_published.inc()
        if self._outbox or not self.backend.ready:
            self._queue(channel, data)
            return
        d = self.backend.publish(channel, data)
        d.addErrback(self._publish_failed, channel, data)

    def _queue(self, channel: str, data: bytes) -> None:
        if len(self._outbox) >= self.outbox_limit:
            self._outbox.popleft()
            self.metrics.bus_dropped.labels("outbox_full").inc()
        self._outbox.append((channel, data))
        self.metrics.bus_outbox.set(len(self._outbox))

    def _publish_failed(self, failure: Failure, channel: str, data: bytes) -> None:
        self._queue(channel, data)
        if self.clock is not None and self.backend.ready and not self._retry_pending:
            # The backend still looks up (no ready change will come): retry on our own.
            self._retry_pending = True
            self.clock.callLater(OUTBOX_RETRY_SECONDS, self._retry)

    def _retry(self) -> None:
        self._retry_pending = False
        self._drain_outbox()

    @defer.inlineCallbacks
    def _drain_outbox(self) -> Generator[defer.Deferred[Any], Any, None]:
        if self._draining_outbox:
            return
        self._draining_outbox = True
        try:
            while self._outbox and self.backend.ready:
                channel, data = self._outbox[0]
                try:
                    yield self.backend.publish(channel, data)
                except Exception:
                    # Still failing: the next ready change, or the retry timer, tries again.
                    if self.clock is not None and not self._retry_pending:
                        self._retry_pending = True
                        self.clock.callLater(OUTBOX_RETRY_SECONDS, self._retry)
                    break
                self._outbox.popleft()
        finally:
            self._draining_outbox = False
            self.metrics.bus_outbox.set(len(self._outbox))

    # ------------------------------------------------------------------ receiving

    def _received(self, channel: str, data: bytes) -> None:
        msg = internal_pb2.BusMessage()
        try:
            msg.ParseFromString(data)
        except DecodeError:
            self.metrics.bus_dropped.labels("undecodable").inc()
            return
        if msg.origin == self.instance_id:
            return  # our own echo: delivered locally already
        key = (msg.origin, channel)
        last = self._in_seq.pop(key, 0)
        self._in_seq[key] = max(last, msg.origin_seq)
        if len(self._in_seq) > _MAX_TRACKED:
            self._in_seq.popitem(last=False)
        if last and msg.origin_seq > last + 1:
            self.metrics.bus_gaps.inc(msg.origin_seq - last - 1)
        self.metrics.bus_received.inc()
        kind = msg.WhichOneof("body")
        try:
            if kind == "event":
                self.on_event(msg.event)
            elif kind == "control":
                self.on_control(msg.control)
        except Exception:
            log.failure("bus message on {channel} failed", channel=channel)

    def _resynced(self) -> None:
        """The bus reconnected: forget sequence positions and let subsystems catch up."""
        self.metrics.bus_resyncs.inc()
        self._in_seq.clear()
        for hook in tuple(self.on_resync):
            try:
                hook()
            except Exception:
                log.failure("bus resync hook failed")
        self._drain_outbox()

    def _log_failure(self, failure: Failure, what: str, topic: str) -> None:
        log.warn("bus {what} of {topic} failed: {error}", what=what, topic=topic,
                 error=failure.getErrorMessage())
