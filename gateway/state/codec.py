"""The dense entity record format carried in ``StateUpdate.records``.

An entity's synchronised state is a tuple (a *version*), created by the
server whenever the entity changes beyond the dead-reckoning tolerance::

    (V, kind, px, py, pz, vx, vy, vz, rot, f0, f1, ...)

``V`` is the tick the version was made at (its dead-reckoning anchor),
positions and velocities are quantised integers (gateway.state.quantize),
``rot`` the 32-bit smallest-three rotation, ``f*`` the kind's game fields
(ints; floats as integer steps; bytes).  Clients hold exactly these tuples.

Records (docs/StateSync.md has the full description), concatenated::

    head      varint   entity_id << 2 | op      op: 0 delta, 1 full, 2 removed
    -- op removed: nothing more
    age       varint   packet tick - V_new
    base_age  varint   V_new - V_base           (delta only: which version it is against)
    kind      varint                            (full only)
    mask      varint   bit i set = field i follows
    fields, in bit order:
      0..2  px py pz   zigzag varint: new - extrapolate(base, V_new - V_base)
      3..5  vx vy vz   zigzag varint: new - base
      6     rot        4 bytes little-endian, absolute
      7+i   field i    int/float: zigzag varint of new - base; bytes: varint length + bytes

A full record is a delta against the kind's zero state (position 0,
velocity 0, identity rotation, fields 0 / empty) anchored at ``V_new``.
A record is self-contained, so the server encodes it once per
(entity, base version) and every player with that base gets the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from gateway.state.quantize import ROT_IDENTITY, extrapolate

__all__ = [
    "DELTA",
    "FULL",
    "REMOVED",
    "Record",
    "StateDecodeError",
    "decode_records",
    "encode_delta",
    "encode_full",
    "encode_removed",
    "encode_update",
    "read_varint",
    "varint",
    "zero_state",
]

DELTA = 0
FULL = 1
REMOVED = 2

# Tuple indices of a version.
V, KIND, PX, PY, PZ, VX, VY, VZ, ROT = range(9)
FIELDS = 9

#: Field kinds on the wire: a signed change (int and float steps), or whole bytes.
WIRE_INT = 0
WIRE_BYTES = 1

#: A version: (V, kind, px, py, pz, vx, vy, vz, rot, *fields)
Version = tuple[Any, ...]
# (op, entity id, new state or None for a removal)
Record = tuple[int, int, "Version | None"]


class StateDecodeError(Exception):
    """Records that cannot be applied: malformed, or against a version the client lacks."""


def _varint_slow(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [_varint_slow(i) for i in range(1 << 14)]


def varint(value: int) -> bytes:
    """Unsigned base-128 varint (protobuf's)."""
    if value < 16384:
        return _SMALL[value]
    return _varint_slow(value)


def _zz(value: int) -> bytes:
    """Zigzag varint of a signed integer."""
    u = (value << 1) if value >= 0 else ((-value << 1) - 1)
    return _SMALL[u] if u < 16384 else _varint_slow(u)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, next position); raises StateDecodeError on truncation."""
    result = 0
    shift = 0
    try:
        while True:
            b = data[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result, pos
            shift += 7
            if shift > 63:
                raise StateDecodeError("varint too long")
    except IndexError:
        raise StateDecodeError("truncated record") from None


def zero_state(kind: int, v: int, defaults: tuple[int | bytes, ...]) -> Version:
    """What a full record is encoded against: everything zero, identity rotation."""
    return (v, kind, 0, 0, 0, 0, 0, 0, ROT_IDENTITY, *defaults)


def encode_removed(entity_id: int) -> bytes:
    return varint((entity_id << 2) | REMOVED)


def _body(new: Version, base: Version, hz: int, wire_kinds: Sequence[int]) -> bytes:
    """mask + changed fields of ``new`` against ``base`` (same kind)."""
    n = new[0] - base[0]
    mask = 0
    parts: list[bytes] = []
    append = parts.append
    bvx, bvy, bvz = base[5], base[6], base[7]
    d = new[2] - (extrapolate(base[2], bvx, n, hz) if bvx else base[2])
    if d:
        mask |= 1
        append(_zz(d))
    d = new[3] - (extrapolate(base[3], bvy, n, hz) if bvy else base[3])
    if d:
        mask |= 2
        append(_zz(d))
    d = new[4] - (extrapolate(base[4], bvz, n, hz) if bvz else base[4])
    if d:
        mask |= 4
        append(_zz(d))
    d = new[5] - bvx
    if d:
        mask |= 8
        append(_zz(d))
    d = new[6] - bvy
    if d:
        mask |= 16
        append(_zz(d))
    d = new[7] - bvz
    if d:
        mask |= 32
        append(_zz(d))
    if new[8] != base[8]:
        mask |= 64
        append(new[8].to_bytes(4, "little"))
    bit = 128
    for i, wk in enumerate(wire_kinds, FIELDS):
        a = new[i]
        b = base[i]
        if a != b:
            mask |= bit
            if wk == WIRE_INT:
                append(_zz(a - b))
            else:
                append(varint(len(a)))
                append(a)
        bit <<= 1
    return varint(mask) + b"".join(parts)


def encode_full(entity_id: int, new: Version, tick: int, hz: int,
                wire_kinds: Sequence[int], defaults: tuple[int | bytes, ...]) -> bytes:
    """A record carrying the whole of ``new`` (an entity entering the view, or a resync)."""
    base = zero_state(new[1], new[0], defaults)
    return (varint((entity_id << 2) | FULL) + varint(tick - new[0]) + varint(new[1])
            + _body(new, base, hz, wire_kinds))


def encode_delta(entity_id: int, new: Version, base: Version, tick: int, hz: int,
                 wire_kinds: Sequence[int]) -> bytes:
    """A record carrying what changed from ``base`` (a version the client holds) to ``new``."""
    return (varint(entity_id << 2) + varint(tick - new[0]) + varint(new[0] - base[0])
            + _body(new, base, hz, wire_kinds))


def encode_update(seq: int, tick: int, input_seq: int, full: bool, records: bytes,
                  epoch: int) -> bytes:
    """A serialised ``StateUpdate`` (protocol/state.proto), built without a message object.

    Fields in number order with zeros omitted, as protobuf writes them, so any
    protobuf library parses it.
    """
    out = b"\x08" + varint(seq) + b"\x10" + varint(tick)
    if input_seq:
        out += b"\x18" + varint(input_seq)
    if full:
        out += b"\x20\x01"
    if records:
        out += b"\x2a" + varint(len(records)) + records
    if epoch:
        out += b"\x30" + varint(epoch)
    return out


def decode_records(
    data: bytes,
    tick: int,
    hz: int,
    base_of: Callable[[int, int], Version | None],
    wire_kinds_of: Callable[[int], Sequence[int]],
    defaults_of: Callable[[int], tuple[int | bytes, ...]],
) -> list[Record]:
    """Parse records; ``base_of(entity_id, V_base)`` finds the version a delta is against.

    Returns ``(op, entity_id, state)`` per record (``state`` None for removals).
    Raises :class:`StateDecodeError` for malformed data or a missing base: the
    client then asks for a full snapshot (``StateAck.resync``).
    """
    out: list[Record] = []
    pos = 0
    end = len(data)
    while pos < end:
        head, pos = read_varint(data, pos)
        eid = head >> 2
        op = head & 3
        if op == REMOVED:
            out.append((REMOVED, eid, None))
            continue
        age, pos = read_varint(data, pos)
        v_new = tick - age
        if op == DELTA:
            base_age, pos = read_varint(data, pos)
            base = base_of(eid, v_new - base_age)
            if base is None:
                raise StateDecodeError(f"entity {eid}: no version {v_new - base_age} to apply to")
        elif op == FULL:
            kind, pos = read_varint(data, pos)
            base = zero_state(kind, v_new, defaults_of(kind))
        else:
            raise StateDecodeError(f"entity {eid}: unknown record op {op}")
        mask, pos = read_varint(data, pos)
        wire_kinds = wire_kinds_of(base[1])
        state = list(base)
        state[0] = v_new
        n = v_new - base[0]
        for i in range(3):
            state[PX + i] = extrapolate(base[PX + i], base[VX + i], n, hz)
        for i in range(6):
            if mask & (1 << i):
                u, pos = read_varint(data, pos)
                state[PX + i] += (u >> 1) if not u & 1 else -((u + 1) >> 1)
        if mask & 64:
            if pos + 4 > end:
                raise StateDecodeError("truncated rotation")
            state[ROT] = int.from_bytes(data[pos:pos + 4], "little")
            pos += 4
        if mask >> (7 + len(wire_kinds)):
            raise StateDecodeError(f"entity {eid}: mask names fields its kind lacks")
        for i, wk in enumerate(wire_kinds):
            if mask & (128 << i):
                if wk == WIRE_INT:
                    u, pos = read_varint(data, pos)
                    state[FIELDS + i] += (u >> 1) if not u & 1 else -((u + 1) >> 1)
                else:
                    length, pos = read_varint(data, pos)
                    if pos + length > end:
                        raise StateDecodeError("truncated bytes field")
                    state[FIELDS + i] = bytes(data[pos:pos + length])
                    pos += length
        out.append((op, eid, tuple(state)))
    return out
