from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StateUpdate(_message.Message):
    __slots__ = ("seq", "tick", "input_seq", "full", "records", "epoch")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TICK_FIELD_NUMBER: _ClassVar[int]
    INPUT_SEQ_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    seq: int
    tick: int
    input_seq: int
    full: bool
    records: bytes
    epoch: int
    def __init__(self, seq: _Optional[int] = ..., tick: _Optional[int] = ..., input_seq: _Optional[int] = ..., full: _Optional[bool] = ..., records: _Optional[bytes] = ..., epoch: _Optional[int] = ...) -> None: ...

class StateAck(_message.Message):
    __slots__ = ("seq", "received", "resync")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    RESYNC_FIELD_NUMBER: _ClassVar[int]
    seq: int
    received: int
    resync: bool
    def __init__(self, seq: _Optional[int] = ..., received: _Optional[int] = ..., resync: _Optional[bool] = ...) -> None: ...

class PlayerInput(_message.Message):
    __slots__ = ("inputs", "ack")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedCompositeFieldContainer[InputCommand]
    ack: StateAck
    def __init__(self, inputs: _Optional[_Iterable[_Union[InputCommand, _Mapping]]] = ..., ack: _Optional[_Union[StateAck, _Mapping]] = ...) -> None: ...

class InputCommand(_message.Message):
    __slots__ = ("seq", "tick", "data")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TICK_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    seq: int
    tick: int
    data: bytes
    def __init__(self, seq: _Optional[int] = ..., tick: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class StateSchema(_message.Message):
    __slots__ = ("tick_rate", "position_scale", "sync_interval", "kinds", "entity_id", "position_tolerance")
    TICK_RATE_FIELD_NUMBER: _ClassVar[int]
    POSITION_SCALE_FIELD_NUMBER: _ClassVar[int]
    SYNC_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    ENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    tick_rate: int
    position_scale: int
    sync_interval: int
    kinds: _containers.RepeatedCompositeFieldContainer[KindSchema]
    entity_id: int
    position_tolerance: int
    def __init__(self, tick_rate: _Optional[int] = ..., position_scale: _Optional[int] = ..., sync_interval: _Optional[int] = ..., kinds: _Optional[_Iterable[_Union[KindSchema, _Mapping]]] = ..., entity_id: _Optional[int] = ..., position_tolerance: _Optional[int] = ...) -> None: ...

class KindSchema(_message.Message):
    __slots__ = ("kind", "fields")
    KIND_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    kind: int
    fields: _containers.RepeatedCompositeFieldContainer[FieldSchema]
    def __init__(self, kind: _Optional[int] = ..., fields: _Optional[_Iterable[_Union[FieldSchema, _Mapping]]] = ...) -> None: ...

class FieldSchema(_message.Message):
    __slots__ = ("name", "kind", "step")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    step: float
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., step: _Optional[float] = ...) -> None: ...
