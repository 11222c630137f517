"""Prometheus metrics of one gateway instance.

Each service gets its own CollectorRegistry (several gateways in one test
process must not collide).  Labels are only ever bounded sets: event types
come from the registry, never from client input, and reasons are fixed words.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_RTT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)
_TICK_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.0167, 0.033, 0.05, 0.1, 0.25)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.connections = Gauge(
            "rtgateway_connections", "Connections by state", ["state"], registry=r
        )
        self.handshakes = Counter(
            "rtgateway_handshakes", "WebSocket upgrades by outcome", ["outcome"], registry=r
        )
        self.handshake_seconds = Histogram(
            "rtgateway_handshake_seconds", "TCP accept to welcome", buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.auth_failures = Counter(
            "rtgateway_auth_failures", "Rejected tokens by reason", ["reason"], registry=r
        )
        self.messages_in = Counter(
            "rtgateway_events_in", "Inbound events by type", ["type"], registry=r
        )
        self.bytes_in = Counter(
            "rtgateway_event_bytes_in", "Inbound event bytes by type", ["type"], registry=r
        )
        self.messages_out = Counter(
            "rtgateway_events_out", "Outbound events by type", ["type"], registry=r
        )
        self.bytes_out = Counter(
            "rtgateway_event_bytes_out", "Outbound event bytes by type", ["type"], registry=r
        )
        self.frames_in = Counter("rtgateway_frames_in", "Inbound WebSocket messages", registry=r)
        self.frames_out = Counter(
            "rtgateway_frames_out", "Outbound WebSocket messages", registry=r
        )
        self.wire_bytes_in = Counter(
            "rtgateway_wire_bytes_in", "Inbound WebSocket payload bytes", registry=r
        )
        self.wire_bytes_out = Counter(
            "rtgateway_wire_bytes_out", "Outbound WebSocket payload bytes", registry=r
        )
        self.closes = Counter(
            "rtgateway_closes", "Connections closed by close code", ["code"], registry=r
        )
        self.bad_input = Counter(
            "rtgateway_bad_input", "Refused inbound input by kind", ["kind"], registry=r
        )
        self.injection_attempts = Counter(
            "rtgateway_injection_attempts",
            "Server-to-client event types sent by clients", registry=r,
        )
        self.handler_failures = Counter(
            "rtgateway_handler_failures", "Handlers that raised", ["type"], registry=r
        )
        self.dropped_out = Counter(
            "rtgateway_dropped_events", "Outbound events dropped by policy", ["reason"], registry=r
        )
        self.rtt = Histogram(
            "rtgateway_rtt_seconds", "Application ping round-trip time", buckets=_RTT_BUCKETS,
            registry=r,
        )
        self.tick_seconds = Histogram(
            "rtgateway_tick_seconds", "Tick duration", ["group"], buckets=_TICK_BUCKETS,
            registry=r,
        )
        self.tick_overruns = Counter(
            "rtgateway_tick_overruns", "Ticks longer than their period", ["group"], registry=r
        )
        self.ticks_skipped = Counter(
            "rtgateway_ticks_skipped", "Ticks missed after a stall", ["group"], registry=r
        )
        self.draining = Gauge("rtgateway_draining", "1 while draining", registry=r)
        # Bus (cross-instance fan-out)
        self.backend_ready = Gauge(
            "rtgateway_backend_ready", "1 while the backend answers", registry=r
        )
        self.bus_published = Counter(
            "rtgateway_bus_published", "Messages published on the bus", registry=r
        )
        self.bus_received = Counter(
            "rtgateway_bus_received", "Bus messages from other instances", registry=r
        )
        self.bus_gaps = Counter(
            "rtgateway_bus_gaps", "Bus messages seen missing by sequence number", registry=r
        )
        self.bus_dropped = Counter(
            "rtgateway_bus_dropped", "Bus messages dropped", ["reason"], registry=r
        )
        self.bus_outbox = Gauge(
            "rtgateway_bus_outbox", "Publishes waiting for the backend", registry=r
        )
        self.redis_events = Counter(
            "rtgateway_redis_events", "Redis backend events by kind", ["event"], registry=r
        )
        self.bus_resyncs = Counter(
            "rtgateway_bus_resyncs", "Bus reconnects followed by a resync", registry=r
        )
        # Sessions
        self.sessions_active = Gauge(
            "rtgateway_sessions_active", "Sessions with a live connection here", registry=r
        )
        self.sessions_suspended = Counter(
            "rtgateway_sessions_suspended", "Sessions suspended on disconnect", registry=r
        )
        self.sessions_resumed = Counter(
            "rtgateway_sessions_resumed", "Sessions resumed", registry=r
        )
        self.sessions_expired = Counter(
            "rtgateway_sessions_expired", "Resume attempts for expired sessions", registry=r
        )
        self.resume_seconds = Histogram(
            "rtgateway_resume_seconds", "Hello with a resume token to replay queued",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.replayed_events = Counter(
            "rtgateway_replayed_events", "Reliable events replayed on resume", registry=r
        )
        self.refused_tokens = Counter(
            "rtgateway_refused_reconnect_tokens", "Refused reconnection tokens", ["reason"],
            registry=r,
        )
        self.persist_skipped = Counter(
            "rtgateway_persist_skipped", "Frames sent without persisting (backend down)",
            registry=r,
        )
