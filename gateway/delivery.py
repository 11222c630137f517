"""Where events go: topics, players, other instances.

Everything addressed beyond one connection is a topic: ``player:<id>`` for
a player's connections (on any instance), ``zone:<id>``, ``chat:<channel>``
and whatever plugins invent.  A publish delivers to this instance's
subscribers and notifies other instances over the bus.

Reliable events are stored first, then announced: they are appended to the
topic's capped log (a topic sequence number), so a session that was away,
or moved to another instance, catches up from its cursor, exactly once.
Unreliable events skip the log and share one frame per tick per topic.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from google.protobuf.message import DecodeError, Message
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.events import EventRegistry, EventSpec
from gateway.hub import Hub, Transport
from gateway.metrics import Metrics
from gateway.session.core import player_topic
from gateway.wire import OutEvent, make_event
from protocol import internal_pb2

if TYPE_CHECKING:
    from gateway.bus import Fanout
    from gateway.session.manager import SessionLink, SessionManager

__all__ = ["Delivery"]

log = Logger()

#: How far below the highest topic_seq a session received a late event is still told
#: from a duplicate (see _first_delivery).
SEEN_WINDOW = 1024
_ALL_SEEN = (1 << SEEN_WINDOW) - 1


class Delivery:
    def __init__(self, registry: EventRegistry, hub: Hub, metrics: Metrics) -> None:
        self.registry = registry
        self.hub = hub
        self.metrics = metrics
        self.sessions: SessionManager | None = None
        self.fanout: Fanout | None = None

    # ------------------------------------------------------------------ public

    def publish(self, topic: str, type_: str, message: Message, *, correlation_id: int = 0
                ) -> None:
        """Deliver to every subscriber of ``topic``, here and on other instances."""
        spec = self.registry[type_]
        payload = message.SerializeToString()
        sessions = self.sessions
        if spec.reliable and sessions is not None and sessions.backend.ready:
            d = sessions.append_topic_log(topic, type_, payload, correlation_id)
            d.addCallbacks(
                self._logged,
                self._log_failed,
                callbackArgs=(topic, spec, message, payload, correlation_id),
                errbackArgs=(topic, spec, message, payload, correlation_id),
            )
            return
        self._fan(topic, spec, message, payload, 0, correlation_id)

    def to_players(self, player_ids: Iterable[str], type_: str, message: Message) -> None:
        for player_id in player_ids:
            self.publish(player_topic(player_id), type_, message)

    def remote(self, event: internal_pb2.BusEvent) -> None:
        """An event another instance published: deliver to our subscribers."""
        spec = self.registry.get(event.type)
        if spec is None:
            self.metrics.bus_dropped.labels("unknown_type").inc()
            return
        if not self.hub.has_topic(event.topic):
            return
        self._local(event.topic, spec, None, event.payload, event.topic_seq, event.correlation_id)

    # ------------------------------------------------------------------ internals

    def _logged(self, topic_seq: int, topic: str, spec: EventSpec, message: Message,
                payload: bytes, correlation_id: int) -> None:
        self._fan(topic, spec, message, payload, topic_seq, correlation_id)

    def _log_failed(self, failure: Failure, topic: str, spec: EventSpec, message: Message,
                    payload: bytes, correlation_id: int) -> None:
        # The store is down: deliver anyway (live subscribers still get it), unlogged.
        log.warn("topic log append for {topic} failed: {error}", topic=topic,
                 error=failure.getErrorMessage())
        self.metrics.persist_skipped.inc()
        self._fan(topic, spec, message, payload, 0, correlation_id)

    def _fan(self, topic: str, spec: EventSpec, message: Message | None, payload: bytes,
             topic_seq: int, correlation_id: int) -> None:
        self._local(topic, spec, message, payload, topic_seq, correlation_id)
        if self.fanout is not None:
            self.fanout.publish_event(topic, spec.type, payload, topic_seq=topic_seq,
                                      correlation_id=correlation_id)

    def _local(self, topic: str, spec: EventSpec, message: Message | None, payload: bytes,
               topic_seq: int, correlation_id: int = 0) -> None:
        subscribers = self.hub.subscribers(topic)
        if not subscribers:
            return
        latest = spec.latest
        encoded: dict[int, OutEvent] = {}

        def event_for(version: int) -> OutEvent | None:
            nonlocal message
            event = encoded.get(version)
            if event is not None:
                return event
            body = payload
            if version != latest:
                if message is None:
                    message = spec.versions[latest]()
                    try:
                        message.ParseFromString(payload)
                    except DecodeError:
                        return None
                body = spec.convert(message, latest, version).SerializeToString()
            event = encoded[version] = make_event(
                spec.type, body, version=version, priority=int(spec.priority),
                reliable=spec.reliable, correlation_id=correlation_id,
            )
            if topic_seq:
                event.topic = topic
                event.topic_seq = topic_seq
            return event

        shared = False
        for transport in subscribers:
            conn = transport.connection
            if not conn.authenticated:
                continue
            version = conn.versions.get(spec.type)
            if version is None:
                continue
            if version == latest and not spec.reliable:
                shared = True  # one shared frame per tick for these
                continue
            event = event_for(version)
            if event is not None:
                self.deliver_topic_event(transport, event)
        if shared:
            event = event_for(latest)
            if event is not None:
                self.hub.share(topic, event)

    def deliver_topic_event(self, transport: Transport, event: OutEvent) -> None:
        """Queue a (possibly logged) topic event, once per session, in topic order."""
        link = transport.connection.session
        if event.topic_seq and link is not None and event.topic is not None:
            holding = link.holding.get(event.topic)
            if holding is not None:
                holding.append(event)  # the session is catching up on this topic
                return
            if not _first_delivery(link, event.topic, event.topic_seq):
                return  # already delivered (catch-up and live overlap, a bus duplicate)
        self.hub.deliver(transport, event)


def _first_delivery(link: SessionLink, topic: str, seq: int) -> bool:
    """Note ``seq`` as delivered to the session; False if it already was.

    Events of one topic published on different instances reach a subscriber
    in bus order, not in topic_seq order: a lower number can arrive after a
    higher one, and a high-water mark alone would drop it as a duplicate.
    Below the mark, a bitmask of the last SEEN_WINDOW numbers (bit i: mark - i)
    tells a late event from a duplicate.  Older than the window, or at or
    below a resumed session's cursor (whose mask is not stored), counts as
    delivered.
    """
    mark = link.marks.get(topic, 0)
    seen = link.seen.get(topic, _ALL_SEEN)
    if seq > mark:
        shift = seq - mark  # may be huge: a log that was lost starts again far above
        link.seen[topic] = ((seen << shift) | 1) & _ALL_SEEN if shift < SEEN_WINDOW else 1
        link.marks[topic] = seq
        return True
    behind = mark - seq
    if behind >= SEEN_WINDOW or seen >> behind & 1:
        return False
    link.seen[topic] = seen | 1 << behind
    return True
