from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BusMessage(_message.Message):
    __slots__ = ("origin", "origin_seq", "event", "control", "heartbeat")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_SEQ_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    origin: str
    origin_seq: int
    event: BusEvent
    control: BusControl
    heartbeat: BusHeartbeat
    def __init__(self, origin: _Optional[str] = ..., origin_seq: _Optional[int] = ..., event: _Optional[_Union[BusEvent, _Mapping]] = ..., control: _Optional[_Union[BusControl, _Mapping]] = ..., heartbeat: _Optional[_Union[BusHeartbeat, _Mapping]] = ...) -> None: ...

class BusEvent(_message.Message):
    __slots__ = ("topic", "type", "payload", "topic_seq", "correlation_id")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    TOPIC_SEQ_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    topic: str
    type: str
    payload: bytes
    topic_seq: int
    correlation_id: int
    def __init__(self, topic: _Optional[str] = ..., type: _Optional[str] = ..., payload: _Optional[bytes] = ..., topic_seq: _Optional[int] = ..., correlation_id: _Optional[int] = ...) -> None: ...

class BusControl(_message.Message):
    __slots__ = ("action", "session_id", "player_id", "code", "reason")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PLAYER_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    action: str
    session_id: str
    player_id: str
    code: int
    reason: str
    def __init__(self, action: _Optional[str] = ..., session_id: _Optional[str] = ..., player_id: _Optional[str] = ..., code: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class BusHeartbeat(_message.Message):
    __slots__ = ("sent_at",)
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    sent_at: float
    def __init__(self, sent_at: _Optional[float] = ...) -> None: ...

class SessionRecord(_message.Message):
    __slots__ = ("session_id", "player_id", "instance_id", "connection_id", "next_out_seq", "last_in_seq", "acked", "queue_first_seq", "cursors", "topics", "zone", "state", "created_at", "last_seen", "token_hash", "versions", "compression")
    class CursorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class StateEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    class VersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PLAYER_ID_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    NEXT_OUT_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_IN_SEQ_FIELD_NUMBER: _ClassVar[int]
    ACKED_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    CURSORS_FIELD_NUMBER: _ClassVar[int]
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    TOKEN_HASH_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    player_id: str
    instance_id: str
    connection_id: int
    next_out_seq: int
    last_in_seq: int
    acked: int
    queue_first_seq: int
    cursors: _containers.ScalarMap[str, int]
    topics: _containers.RepeatedScalarFieldContainer[str]
    zone: str
    state: _containers.ScalarMap[str, bytes]
    created_at: float
    last_seen: float
    token_hash: str
    versions: _containers.ScalarMap[str, int]
    compression: int
    def __init__(self, session_id: _Optional[str] = ..., player_id: _Optional[str] = ..., instance_id: _Optional[str] = ..., connection_id: _Optional[int] = ..., next_out_seq: _Optional[int] = ..., last_in_seq: _Optional[int] = ..., acked: _Optional[int] = ..., queue_first_seq: _Optional[int] = ..., cursors: _Optional[_Mapping[str, int]] = ..., topics: _Optional[_Iterable[str]] = ..., zone: _Optional[str] = ..., state: _Optional[_Mapping[str, bytes]] = ..., created_at: _Optional[float] = ..., last_seen: _Optional[float] = ..., token_hash: _Optional[str] = ..., versions: _Optional[_Mapping[str, int]] = ..., compression: _Optional[int] = ...) -> None: ...

class QueuedEvent(_message.Message):
    __slots__ = ("seq", "type", "body", "payload", "correlation_id")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    seq: int
    type: str
    body: bytes
    payload: bytes
    correlation_id: int
    def __init__(self, seq: _Optional[int] = ..., type: _Optional[str] = ..., body: _Optional[bytes] = ..., payload: _Optional[bytes] = ..., correlation_id: _Optional[int] = ...) -> None: ...
