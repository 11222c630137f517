"""Close codes and error codes of wire protocol v1.

These numbers are part of the public protocol (docs/NetworkingGuide.md lists
them): never renumber, only add.
"""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    """WebSocket close codes: RFC 6455's where one fits, ours in 4000-4999."""

    NORMAL = 1000
    GOING_AWAY = 1001  # server shutting down (after server.draining)
    UNSUPPORTED_DATA = 1003  # a text message: the protocol is binary only
    POLICY = 1008
    TOO_BIG = 1009  # message over limits.max_message_size
    INTERNAL = 1011

    BAD_FRAME = 4000  # a message that is not a valid Frame (garbage, truncated, bad compression)
    AUTH_FAILED = 4001  # in-band token (system.hello) missing or invalid
    AUTH_EXPIRED = 4002  # the session's token expired and was not refreshed
    NOT_AUTHENTICATED = 4003  # an event other than system.hello before system.welcome
    HELLO_TIMEOUT = 4004  # no system.hello within limits.handshake_timeout
    UNSUPPORTED_VERSION = 4005  # protocol version or every event version unsupported
    REPLACED = 4006  # another connection took over this session
    RATE_LIMITED = 4008  # inbound message rate over the token bucket
    SLOW_CONSUMER = 4009  # outbound buffer over limits.outbound_hard_bytes, or stalled
    HEARTBEAT_TIMEOUT = 4010  # nothing received for heartbeat.interval + timeout
    FRAME_LIMIT = 4011  # more envelopes in one frame than limits.max_events_per_frame
    SESSION_INVALID = 4012  # resume refused: unknown, expired or reused reconnection token
    KICKED = 4013  # an operator or plugin closed the connection


#: Codes after which an automatic reconnect would fail the same way.
NO_RECONNECT = frozenset(
    {
        CloseCode.AUTH_FAILED,
        CloseCode.AUTH_EXPIRED,
        CloseCode.UNSUPPORTED_VERSION,
        CloseCode.REPLACED,
        CloseCode.KICKED,
    }
)


class ErrorCode(IntEnum):
    """``system.error`` codes: the request failed, the connection stays open."""

    UNKNOWN_TYPE = 1  # no such event type
    UNKNOWN_VERSION = 2  # the type exists, this version does not
    FORBIDDEN_DIRECTION = 3  # server-to-client type sent by a client (counted as injection)
    BAD_PAYLOAD = 4  # payload does not parse as the registered message
    VALIDATION_FAILED = 5  # a validator refused the payload
    HANDLER_FAILED = 6  # a handler raised; details are in the server log
    RATE_LIMITED = 7  # per-type rate limit exceeded; the event was dropped
    NO_HANDLER = 8  # valid event nobody handles
    AUTH_REFRESH_FAILED = 9  # system.auth_refresh carried a bad token
    DUPLICATE = 10  # reserved: duplicates are dropped silently
    BAD_REQUEST = 11  # a handler refused the request (message says why)
    UNAVAILABLE = 12  # a dependency (backend) is down; retry later
