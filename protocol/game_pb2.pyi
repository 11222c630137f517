from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class WorldTime(_message.Message):
    __slots__ = ("tick", "game_time", "time_scale", "server_time_us")
    TICK_FIELD_NUMBER: _ClassVar[int]
    GAME_TIME_FIELD_NUMBER: _ClassVar[int]
    TIME_SCALE_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_US_FIELD_NUMBER: _ClassVar[int]
    tick: int
    game_time: float
    time_scale: float
    server_time_us: int
    def __init__(self, tick: _Optional[int] = ..., game_time: _Optional[float] = ..., time_scale: _Optional[float] = ..., server_time_us: _Optional[int] = ...) -> None: ...

class Announcement(_message.Message):
    __slots__ = ("text", "level")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    text: str
    level: str
    def __init__(self, text: _Optional[str] = ..., level: _Optional[str] = ...) -> None: ...

class ChatSend(_message.Message):
    __slots__ = ("channel", "text", "to_player")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TO_PLAYER_FIELD_NUMBER: _ClassVar[int]
    channel: str
    text: str
    to_player: str
    def __init__(self, channel: _Optional[str] = ..., text: _Optional[str] = ..., to_player: _Optional[str] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("channel", "text", "from_player", "sent_at_us", "whisper")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FROM_PLAYER_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_US_FIELD_NUMBER: _ClassVar[int]
    WHISPER_FIELD_NUMBER: _ClassVar[int]
    channel: str
    text: str
    from_player: str
    sent_at_us: int
    whisper: bool
    def __init__(self, channel: _Optional[str] = ..., text: _Optional[str] = ..., from_player: _Optional[str] = ..., sent_at_us: _Optional[int] = ..., whisper: _Optional[bool] = ...) -> None: ...
