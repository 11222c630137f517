from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Direction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIRECTION_UNSPECIFIED: _ClassVar[Direction]
    DIRECTION_IN: _ClassVar[Direction]
    DIRECTION_OUT: _ClassVar[Direction]

class Redaction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REDACTION_NONE: _ClassVar[Redaction]
    REDACTION_CLEARED: _ClassVar[Redaction]
    REDACTION_WITHHELD: _ClassVar[Redaction]

class EndReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    END_REASON_UNSPECIFIED: _ClassVar[EndReason]
    END_REASON_DISCONNECTED: _ClassVar[EndReason]
    END_REASON_STOPPED: _ClassVar[EndReason]
    END_REASON_MAX_BYTES: _ClassVar[EndReason]
    END_REASON_SHUTDOWN: _ClassVar[EndReason]
DIRECTION_UNSPECIFIED: Direction
DIRECTION_IN: Direction
DIRECTION_OUT: Direction
REDACTION_NONE: Redaction
REDACTION_CLEARED: Redaction
REDACTION_WITHHELD: Redaction
END_REASON_UNSPECIFIED: EndReason
END_REASON_DISCONNECTED: EndReason
END_REASON_STOPPED: EndReason
END_REASON_MAX_BYTES: EndReason
END_REASON_SHUTDOWN: EndReason

class Record(_message.Message):
    __slots__ = ("start", "frame", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: SessionStart
    frame: FrameRecord
    end: SessionEnd
    def __init__(self, start: _Optional[_Union[SessionStart, _Mapping]] = ..., frame: _Optional[_Union[FrameRecord, _Mapping]] = ..., end: _Optional[_Union[SessionEnd, _Mapping]] = ...) -> None: ...

class SessionStart(_message.Message):
    __slots__ = ("format_version", "started_at_us", "instance_id", "connection_id", "player_id", "session_id", "mid_session", "versions", "compression", "max_bytes")
    class VersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_US_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    PLAYER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MID_SESSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    started_at_us: int
    instance_id: str
    connection_id: int
    player_id: str
    session_id: str
    mid_session: bool
    versions: _containers.ScalarMap[str, int]
    compression: int
    max_bytes: int
    def __init__(self, format_version: _Optional[int] = ..., started_at_us: _Optional[int] = ..., instance_id: _Optional[str] = ..., connection_id: _Optional[int] = ..., player_id: _Optional[str] = ..., session_id: _Optional[str] = ..., mid_session: _Optional[bool] = ..., versions: _Optional[_Mapping[str, int]] = ..., compression: _Optional[int] = ..., max_bytes: _Optional[int] = ...) -> None: ...

class FrameRecord(_message.Message):
    __slots__ = ("offset_us", "direction", "data", "redaction", "size")
    OFFSET_US_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    REDACTION_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    offset_us: int
    direction: Direction
    data: bytes
    redaction: Redaction
    size: int
    def __init__(self, offset_us: _Optional[int] = ..., direction: _Optional[_Union[Direction, str]] = ..., data: _Optional[bytes] = ..., redaction: _Optional[_Union[Redaction, str]] = ..., size: _Optional[int] = ...) -> None: ...

class SessionEnd(_message.Message):
    __slots__ = ("offset_us", "reason", "frames", "detail")
    OFFSET_US_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    offset_us: int
    reason: EndReason
    frames: int
    detail: str
    def __init__(self, offset_us: _Optional[int] = ..., reason: _Optional[_Union[EndReason, str]] = ..., frames: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...
