from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Audience(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIENCE_UNSPECIFIED: _ClassVar[Audience]
    AUDIENCE_PUBLIC: _ClassVar[Audience]
    AUDIENCE_FRIENDS: _ClassVar[Audience]
    AUDIENCE_GUILD: _ClassVar[Audience]
    AUDIENCE_PARTY: _ClassVar[Audience]
    AUDIENCE_NOBODY: _ClassVar[Audience]

class GroupKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GROUP_KIND_UNSPECIFIED: _ClassVar[GroupKind]
    GROUP_KIND_GUILD: _ClassVar[GroupKind]
    GROUP_KIND_PARTY: _ClassVar[GroupKind]
AUDIENCE_UNSPECIFIED: Audience
AUDIENCE_PUBLIC: Audience
AUDIENCE_FRIENDS: Audience
AUDIENCE_GUILD: Audience
AUDIENCE_PARTY: Audience
AUDIENCE_NOBODY: Audience
GROUP_KIND_UNSPECIFIED: GroupKind
GROUP_KIND_GUILD: GroupKind
GROUP_KIND_PARTY: GroupKind

class AudienceSet(_message.Message):
    __slots__ = ("audiences",)
    AUDIENCES_FIELD_NUMBER: _ClassVar[int]
    audiences: _containers.RepeatedScalarFieldContainer[Audience]
    def __init__(self, audiences: _Optional[_Iterable[_Union[Audience, str]]] = ...) -> None: ...

class PresenceView(_message.Message):
    __slots__ = ("player_id", "online", "last_seen_ms", "zone", "region", "status", "activity", "version", "unwatched")
    PLAYER_ID_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_MS_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UNWATCHED_FIELD_NUMBER: _ClassVar[int]
    player_id: str
    online: bool
    last_seen_ms: int
    zone: str
    region: str
    status: str
    activity: str
    version: int
    unwatched: bool
    def __init__(self, player_id: _Optional[str] = ..., online: _Optional[bool] = ..., last_seen_ms: _Optional[int] = ..., zone: _Optional[str] = ..., region: _Optional[str] = ..., status: _Optional[str] = ..., activity: _Optional[str] = ..., version: _Optional[int] = ..., unwatched: _Optional[bool] = ...) -> None: ...

class PresenceSnapshot(_message.Message):
    __slots__ = ("players",)
    PLAYERS_FIELD_NUMBER: _ClassVar[int]
    players: _containers.RepeatedCompositeFieldContainer[PresenceView]
    def __init__(self, players: _Optional[_Iterable[_Union[PresenceView, _Mapping]]] = ...) -> None: ...

class PresenceSubscribe(_message.Message):
    __slots__ = ("player_ids",)
    PLAYER_IDS_FIELD_NUMBER: _ClassVar[int]
    player_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, player_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class PresenceUnsubscribe(_message.Message):
    __slots__ = ("player_ids",)
    PLAYER_IDS_FIELD_NUMBER: _ClassVar[int]
    player_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, player_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class PresenceSetStatus(_message.Message):
    __slots__ = ("status", "activity")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    status: str
    activity: str
    def __init__(self, status: _Optional[str] = ..., activity: _Optional[str] = ...) -> None: ...

class PresenceSetLocation(_message.Message):
    __slots__ = ("zone", "region")
    ZONE_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    zone: str
    region: str
    def __init__(self, zone: _Optional[str] = ..., region: _Optional[str] = ...) -> None: ...

class PresencePrivacy(_message.Message):
    __slots__ = ("online", "location", "status", "invisible")
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    INVISIBLE_FIELD_NUMBER: _ClassVar[int]
    online: AudienceSet
    location: AudienceSet
    status: AudienceSet
    invisible: bool
    def __init__(self, online: _Optional[_Union[AudienceSet, _Mapping]] = ..., location: _Optional[_Union[AudienceSet, _Mapping]] = ..., status: _Optional[_Union[AudienceSet, _Mapping]] = ..., invisible: _Optional[bool] = ...) -> None: ...

class PresenceBlock(_message.Message):
    __slots__ = ("player_id", "blocked")
    PLAYER_ID_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_FIELD_NUMBER: _ClassVar[int]
    player_id: str
    blocked: bool
    def __init__(self, player_id: _Optional[str] = ..., blocked: _Optional[bool] = ...) -> None: ...

class PresenceBlockList(_message.Message):
    __slots__ = ("player_ids",)
    PLAYER_IDS_FIELD_NUMBER: _ClassVar[int]
    player_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, player_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class PresenceGroupEvent(_message.Message):
    __slots__ = ("group_id", "kind", "player_id", "joined")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PLAYER_ID_FIELD_NUMBER: _ClassVar[int]
    JOINED_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    kind: GroupKind
    player_id: str
    joined: bool
    def __init__(self, group_id: _Optional[str] = ..., kind: _Optional[_Union[GroupKind, str]] = ..., player_id: _Optional[str] = ..., joined: _Optional[bool] = ...) -> None: ...

class PresenceRecord(_message.Message):
    __slots__ = ("player_id", "version", "online", "since", "last_seen", "zone", "region", "status", "activity", "vis_online", "vis_location", "vis_status", "invisible", "invisible_since", "guilds", "parties")
    PLAYER_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    VIS_ONLINE_FIELD_NUMBER: _ClassVar[int]
    VIS_LOCATION_FIELD_NUMBER: _ClassVar[int]
    VIS_STATUS_FIELD_NUMBER: _ClassVar[int]
    INVISIBLE_FIELD_NUMBER: _ClassVar[int]
    INVISIBLE_SINCE_FIELD_NUMBER: _ClassVar[int]
    GUILDS_FIELD_NUMBER: _ClassVar[int]
    PARTIES_FIELD_NUMBER: _ClassVar[int]
    player_id: str
    version: int
    online: bool
    since: float
    last_seen: float
    zone: str
    region: str
    status: str
    activity: str
    vis_online: int
    vis_location: int
    vis_status: int
    invisible: bool
    invisible_since: float
    guilds: _containers.RepeatedScalarFieldContainer[str]
    parties: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, player_id: _Optional[str] = ..., version: _Optional[int] = ..., online: _Optional[bool] = ..., since: _Optional[float] = ..., last_seen: _Optional[float] = ..., zone: _Optional[str] = ..., region: _Optional[str] = ..., status: _Optional[str] = ..., activity: _Optional[str] = ..., vis_online: _Optional[int] = ..., vis_location: _Optional[int] = ..., vis_status: _Optional[int] = ..., invisible: _Optional[bool] = ..., invisible_since: _Optional[float] = ..., guilds: _Optional[_Iterable[str]] = ..., parties: _Optional[_Iterable[str]] = ...) -> None: ...

class PresenceRelationChange(_message.Message):
    __slots__ = ("player_id", "kind", "other", "added", "group_kind")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[PresenceRelationChange.Kind]
        KIND_FRIEND: _ClassVar[PresenceRelationChange.Kind]
        KIND_BLOCKED_BY: _ClassVar[PresenceRelationChange.Kind]
        KIND_SUBSCRIPTION: _ClassVar[PresenceRelationChange.Kind]
        KIND_GROUP: _ClassVar[PresenceRelationChange.Kind]
    KIND_UNSPECIFIED: PresenceRelationChange.Kind
    KIND_FRIEND: PresenceRelationChange.Kind
    KIND_BLOCKED_BY: PresenceRelationChange.Kind
    KIND_SUBSCRIPTION: PresenceRelationChange.Kind
    KIND_GROUP: PresenceRelationChange.Kind
    PLAYER_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OTHER_FIELD_NUMBER: _ClassVar[int]
    ADDED_FIELD_NUMBER: _ClassVar[int]
    GROUP_KIND_FIELD_NUMBER: _ClassVar[int]
    player_id: str
    kind: PresenceRelationChange.Kind
    other: str
    added: bool
    group_kind: GroupKind
    def __init__(self, player_id: _Optional[str] = ..., kind: _Optional[_Union[PresenceRelationChange.Kind, str]] = ..., other: _Optional[str] = ..., added: _Optional[bool] = ..., group_kind: _Optional[_Union[GroupKind, str]] = ...) -> None: ...

class PresenceBusMessage(_message.Message):
    __slots__ = ("state", "relation", "group", "erased")
    STATE_FIELD_NUMBER: _ClassVar[int]
    RELATION_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    ERASED_FIELD_NUMBER: _ClassVar[int]
    state: PresenceRecord
    relation: PresenceRelationChange
    group: PresenceGroupEvent
    erased: str
    def __init__(self, state: _Optional[_Union[PresenceRecord, _Mapping]] = ..., relation: _Optional[_Union[PresenceRelationChange, _Mapping]] = ..., group: _Optional[_Union[PresenceGroupEvent, _Mapping]] = ..., erased: _Optional[str] = ...) -> None: ...

class PresenceHistoryEntry(_message.Message):
    __slots__ = ("at", "kind", "instance", "zone", "region")
    AT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    at: float
    kind: str
    instance: str
    zone: str
    region: str
    def __init__(self, at: _Optional[float] = ..., kind: _Optional[str] = ..., instance: _Optional[str] = ..., zone: _Optional[str] = ..., region: _Optional[str] = ...) -> None: ...
