"""Quantisation: the integers the state wire carries, with documented precision.

Positions and velocities
    A position is sent as ``floor(metres * scale + 0.5)`` (``scale`` units per
    metre, default 64: a step of 1/64 m = 1.5625 cm, so quantising alone is off
    by at most 0.78 cm).  A velocity uses the same unit per second.

Dead reckoning (:func:`extrapolate`)
    Between two versions of an entity, both sides compute its position at a
    later tick from the same integers, so the server and every client agree
    bit for bit.  ``n`` ticks after the anchor, at ``hz`` ticks per second::

        p(n) = p0 + floor((2 * v * n + hz) / (2 * hz))     # round(v * n / hz), halves up

    with *floor* division (toward minus infinity: C's ``/`` truncates toward
    zero, so a C client must floor explicitly for negative velocities).
    The server re-anchors (sends a new version) as soon as the real position
    drifts more than ``position_tolerance`` units from that prediction, so the
    position a client computes is within ``(position_tolerance + 0.5) / scale``
    metres of the game's (3.9 cm with the defaults).

Rotations (:func:`pack_rotation`, smallest three)
    A unit quaternion ``(x, y, z, w)`` is packed into 32 bits: the index of the
    largest component (2 bits; the quaternion is negated if it is negative, the
    same rotation) and the other three, each in ``[-1/sqrt 2, 1/sqrt 2]``, on 10
    bits (1023 steps of 0.00138).  The largest is rebuilt from the unit norm.
    Measured worst case over a dense sweep (tests/test_state_quantize.py):
    under 0.25 degrees of rotation error (0.2 seen).  ``ROT_IDENTITY`` is the identity.
"""

from __future__ import annotations

import math

__all__ = [
    "ROT_IDENTITY",
    "dequantize",
    "extrapolate",
    "pack_rotation",
    "quantize",
    "unpack_rotation",
    "unzigzag",
    "yaw_quaternion",
    "zigzag",
]

_RANGE = 1.0 / math.sqrt(2.0)  # the three smallest components of a unit quaternion lie in ±this
_STEPS = 1023  # 10 bits
_TO_INT = _STEPS / (2.0 * _RANGE)
_TO_FLOAT = (2.0 * _RANGE) / _STEPS


def quantize(value: float, scale: int) -> int:
    """``floor(value * scale + 0.5)``: round to nearest, halves up."""
    return math.floor(value * scale + 0.5)


def dequantize(value: int, scale: int) -> float:
    return value / scale


def extrapolate(position: int, velocity: int, ticks: int, hz: int) -> int:
    """The dead-reckoned position ``ticks`` after its anchor (integers only, see above)."""
    if not velocity or not ticks:
        return position
    return position + (2 * velocity * ticks + hz) // (2 * hz)


def zigzag(value: int) -> int:
    """Signed -> unsigned so small magnitudes make short varints: 0,-1,1,-2 -> 0,1,2,3."""
    return (value << 1) if value >= 0 else ((-value << 1) - 1)


def unzigzag(value: int) -> int:
    return (value >> 1) if not value & 1 else -((value + 1) >> 1)


def pack_rotation(x: float, y: float, z: float, w: float) -> int:
    """Smallest-three packing of a quaternion (normalised here) into 32 bits."""
    norm = math.sqrt(x * x + y * y + z * z + w * w)
    if norm < 1e-12:
        return ROT_IDENTITY
    q = (x / norm, y / norm, z / norm, w / norm)
    largest = max(range(4), key=lambda i: abs(q[i]))
    sign = -1.0 if q[largest] < 0 else 1.0
    packed = largest
    for i in range(4):
        if i == largest:
            continue
        c = q[i] * sign
        c = min(_RANGE, max(-_RANGE, c))
        packed = (packed << 10) | math.floor((c + _RANGE) * _TO_INT + 0.5)
    return packed


def unpack_rotation(packed: int) -> tuple[float, float, float, float]:
    """The quaternion ``(x, y, z, w)`` of a packed rotation (largest component positive)."""
    largest = (packed >> 30) & 3
    a = ((packed >> 20) & 0x3FF) * _TO_FLOAT - _RANGE
    b = ((packed >> 10) & 0x3FF) * _TO_FLOAT - _RANGE
    c = (packed & 0x3FF) * _TO_FLOAT - _RANGE
    big = math.sqrt(max(0.0, 1.0 - a * a - b * b - c * c))
    out = [a, b, c]
    out.insert(largest, big)
    return out[0], out[1], out[2], out[3]


def yaw_quaternion(yaw: float) -> tuple[float, float, float, float]:
    """A rotation of ``yaw`` radians about the vertical (z) axis, as ``(x, y, z, w)``."""
    half = yaw / 2.0
    return 0.0, 0.0, math.sin(half), math.cos(half)


#: The identity rotation packed (what a new entity's rotation is compared against).
ROT_IDENTITY = pack_rotation(0.0, 0.0, 0.0, 1.0)
