from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class EmoteRequest(_message.Message):
    __slots__ = ("emote", "target_player")
    EMOTE_FIELD_NUMBER: _ClassVar[int]
    TARGET_PLAYER_FIELD_NUMBER: _ClassVar[int]
    emote: str
    target_player: str
    def __init__(self, emote: _Optional[str] = ..., target_player: _Optional[str] = ...) -> None: ...

class Emote(_message.Message):
    __slots__ = ("from_player", "emote", "target_player", "sent_at_us")
    FROM_PLAYER_FIELD_NUMBER: _ClassVar[int]
    EMOTE_FIELD_NUMBER: _ClassVar[int]
    TARGET_PLAYER_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_US_FIELD_NUMBER: _ClassVar[int]
    from_player: str
    emote: str
    target_player: str
    sent_at_us: int
    def __init__(self, from_player: _Optional[str] = ..., emote: _Optional[str] = ..., target_player: _Optional[str] = ..., sent_at_us: _Optional[int] = ...) -> None: ...
