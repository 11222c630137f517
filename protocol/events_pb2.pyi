from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Priority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIORITY_UNSPECIFIED: _ClassVar[Priority]
    PRIORITY_CRITICAL: _ClassVar[Priority]
    PRIORITY_HIGH: _ClassVar[Priority]
    PRIORITY_NORMAL: _ClassVar[Priority]
    PRIORITY_LOW: _ClassVar[Priority]

class Compression(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPRESSION_NONE: _ClassVar[Compression]
    COMPRESSION_ZLIB: _ClassVar[Compression]
    COMPRESSION_LZ4: _ClassVar[Compression]
PRIORITY_UNSPECIFIED: Priority
PRIORITY_CRITICAL: Priority
PRIORITY_HIGH: Priority
PRIORITY_NORMAL: Priority
PRIORITY_LOW: Priority
COMPRESSION_NONE: Compression
COMPRESSION_ZLIB: Compression
COMPRESSION_LZ4: Compression

class Frame(_message.Message):
    __slots__ = ("envelopes", "compression", "compressed")
    ENVELOPES_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    COMPRESSED_FIELD_NUMBER: _ClassVar[int]
    envelopes: _containers.RepeatedCompositeFieldContainer[Envelope]
    compression: Compression
    compressed: bytes
    def __init__(self, envelopes: _Optional[_Iterable[_Union[Envelope, _Mapping]]] = ..., compression: _Optional[_Union[Compression, str]] = ..., compressed: _Optional[bytes] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("seq", "ack", "type", "version", "payload", "priority", "timestamp_us", "correlation_id")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_US_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    seq: int
    ack: int
    type: str
    version: int
    payload: bytes
    priority: Priority
    timestamp_us: int
    correlation_id: int
    def __init__(self, seq: _Optional[int] = ..., ack: _Optional[int] = ..., type: _Optional[str] = ..., version: _Optional[int] = ..., payload: _Optional[bytes] = ..., priority: _Optional[_Union[Priority, str]] = ..., timestamp_us: _Optional[int] = ..., correlation_id: _Optional[int] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("token", "client_name", "versions", "compression", "resume_token", "last_seq")
    class VersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: VersionList
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[VersionList, _Mapping]] = ...) -> None: ...
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    token: str
    client_name: str
    versions: _containers.MessageMap[str, VersionList]
    compression: _containers.RepeatedScalarFieldContainer[Compression]
    resume_token: str
    last_seq: int
    def __init__(self, token: _Optional[str] = ..., client_name: _Optional[str] = ..., versions: _Optional[_Mapping[str, VersionList]] = ..., compression: _Optional[_Iterable[_Union[Compression, str]]] = ..., resume_token: _Optional[str] = ..., last_seq: _Optional[int] = ...) -> None: ...

class VersionList(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, versions: _Optional[_Iterable[int]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("session_id", "player_id", "instance_id", "server_time_us", "heartbeat_interval_s", "heartbeat_timeout_s", "compression", "compression_threshold", "versions", "limits", "reconnect_token", "resumed", "token_expires_at", "full_resync")
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
    SERVER_TIME_US_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    RECONNECT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    TOKEN_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    FULL_RESYNC_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    player_id: str
    instance_id: str
    server_time_us: int
    heartbeat_interval_s: int
    heartbeat_timeout_s: int
    compression: Compression
    compression_threshold: int
    versions: _containers.ScalarMap[str, int]
    limits: Limits
    reconnect_token: str
    resumed: bool
    token_expires_at: int
    full_resync: bool
    def __init__(self, session_id: _Optional[str] = ..., player_id: _Optional[str] = ..., instance_id: _Optional[str] = ..., server_time_us: _Optional[int] = ..., heartbeat_interval_s: _Optional[int] = ..., heartbeat_timeout_s: _Optional[int] = ..., compression: _Optional[_Union[Compression, str]] = ..., compression_threshold: _Optional[int] = ..., versions: _Optional[_Mapping[str, int]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., reconnect_token: _Optional[str] = ..., resumed: _Optional[bool] = ..., token_expires_at: _Optional[int] = ..., full_resync: _Optional[bool] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_message_size", "max_events_per_frame", "messages_per_second", "messages_burst")
    MAX_MESSAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_EVENTS_PER_FRAME_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_BURST_FIELD_NUMBER: _ClassVar[int]
    max_message_size: int
    max_events_per_frame: int
    messages_per_second: float
    messages_burst: int
    def __init__(self, max_message_size: _Optional[int] = ..., max_events_per_frame: _Optional[int] = ..., messages_per_second: _Optional[float] = ..., messages_burst: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "event_type", "seq", "correlation_id")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    event_type: str
    seq: int
    correlation_id: int
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., event_type: _Optional[str] = ..., seq: _Optional[int] = ..., correlation_id: _Optional[int] = ...) -> None: ...

class Ping(_message.Message):
    __slots__ = ("nonce", "sent_ns", "rtt_us")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SENT_NS_FIELD_NUMBER: _ClassVar[int]
    RTT_US_FIELD_NUMBER: _ClassVar[int]
    nonce: int
    sent_ns: int
    rtt_us: int
    def __init__(self, nonce: _Optional[int] = ..., sent_ns: _Optional[int] = ..., rtt_us: _Optional[int] = ...) -> None: ...

class Pong(_message.Message):
    __slots__ = ("nonce", "sent_ns")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SENT_NS_FIELD_NUMBER: _ClassVar[int]
    nonce: int
    sent_ns: int
    def __init__(self, nonce: _Optional[int] = ..., sent_ns: _Optional[int] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AuthRefresh(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    def __init__(self, token: _Optional[str] = ...) -> None: ...

class AuthRefreshed(_message.Message):
    __slots__ = ("token_expires_at",)
    TOKEN_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    token_expires_at: int
    def __init__(self, token_expires_at: _Optional[int] = ...) -> None: ...

class Disconnect(_message.Message):
    __slots__ = ("code", "reason", "reconnect", "retry_after_ms")
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RECONNECT_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    code: int
    reason: str
    reconnect: bool
    retry_after_ms: int
    def __init__(self, code: _Optional[int] = ..., reason: _Optional[str] = ..., reconnect: _Optional[bool] = ..., retry_after_ms: _Optional[int] = ...) -> None: ...

class Draining(_message.Message):
    __slots__ = ("grace_ms", "reconnect_url", "retry_after_ms")
    GRACE_MS_FIELD_NUMBER: _ClassVar[int]
    RECONNECT_URL_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    grace_ms: int
    reconnect_url: str
    retry_after_ms: int
    def __init__(self, grace_ms: _Optional[int] = ..., reconnect_url: _Optional[str] = ..., retry_after_ms: _Optional[int] = ...) -> None: ...
