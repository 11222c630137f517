"""Session recordings: the file format, credential scrubbing and the per-connection recorder.

A recording holds the WebSocket messages of one connection, both directions,
so that a bug seen in production can be printed and replayed
(``rtgateway-replay``).  The format is described, byte for byte, in
``docs/Recording.md``: ``RTGREC1\\n`` then varint-length-prefixed
``rtgateway.recording.v1.Record`` messages (``protocol/recording.proto``).

Records hold the *raw frames*, not decoded envelopes, because:

* replay then sends exactly what the client sent (batching, seq/ack,
  compression, even a malformed frame that triggered the bug);
* recording costs a copy per frame on the reactor thread, not a decode;
* the printer and the replay tool decode with the gateway's own
  :func:`gateway.wire.decode_frame`, so they see what the gateway saw.

The one exception is credentials, which never reach a file: a frame that
carries ``system.hello`` (``token``, ``resume_token``),
``system.auth_refresh`` (``token``) or ``system.welcome``
(``reconnect_token``) is decoded (decompressed if need be), those fields are
cleared and it is re-serialised; a frame that cannot be decoded, and so cannot
be checked, is withheld (only its size is kept).  The HTTP upgrade (header or
query token) is never seen here at all.

:class:`Recorder` is the engine: selection, per-connection files, byte caps,
batched writes.  It has no reactor: the plugin (``plugins/recorder.py``)
feeds it frames and calls :meth:`Recorder.flush` on the tick.  Writes go
through plain ``os.write`` on the reactor thread, batched (one write per
connection per flush, or when a buffer passes ``flush_bytes``), so the cost
is a page-cache copy, never an fsync.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from google.protobuf.message import DecodeError, Message
from twisted.logger import Logger

from gateway.wire import COMPRESSION_NAMES, WireError, decode_frame, varint
from protocol import events_pb2, recording_pb2

__all__ = [
    "FORMAT_VERSION",
    "IN",
    "MAGIC",
    "OUT",
    "FrameEntry",
    "Recorder",
    "Recording",
    "RecordingFormatError",
    "Scrubbed",
    "encode_frame_record",
    "encode_record",
    "envelopes_of",
    "iter_records",
    "read_recording",
    "scrub_inbound",
    "scrub_outbound",
]

log = Logger()

#: Every recording file starts with these 8 bytes; the digit is the format version.
MAGIC = b"RTGREC1\n"
FORMAT_VERSION = 1

IN = "in"
OUT = "out"
_DIRECTIONS = {IN: recording_pb2.DIRECTION_IN, OUT: recording_pb2.DIRECTION_OUT}
_DIRECTION_NAMES = {v: k for k, v in _DIRECTIONS.items()}

NONE = recording_pb2.REDACTION_NONE
CLEARED = recording_pb2.REDACTION_CLEARED
WITHHELD = recording_pb2.REDACTION_WITHHELD

#: A record longer than this is corruption, not data (frames are capped far lower).
MAX_RECORD = 1 << 26
#: Room kept in every file for its SessionEnd record, so a capped file still ends cleanly.
END_RESERVE = 256
#: Decompression bound when a recording is read back (the gateway's own limit applies live).
READ_MAX_FRAME = 1 << 24

_ALL_CODECS = frozenset(COMPRESSION_NAMES.values())

# (message class, credential fields) per event type that carries credentials.
_CREDENTIALS: dict[str, tuple[type[Message], tuple[str, ...]]] = {
    "system.hello": (events_pb2.Hello, ("token", "resume_token")),
    "system.auth_refresh": (events_pb2.AuthRefresh, ("token",)),
    "system.welcome": (events_pb2.Welcome, ("reconnect_token",)),
}
_INBOUND_TYPES = frozenset({"system.hello", "system.auth_refresh"})
_OUTBOUND_TYPES = frozenset({"system.welcome"})


class RecordingFormatError(Exception):
    """The file is not a recording this version can read."""


# --------------------------------------------------------------------------- scrubbing


@dataclass(frozen=True, slots=True)
class Scrubbed:
    """A frame made safe to write: ``data`` and the Redaction saying what was done.

    ``matched`` says whether one of the credential-bearing types was in the
    frame (the recorder stops inspecting outbound frames after the welcome).
    """

    data: bytes
    redaction: int
    matched: bool = False


def _clear(env: events_pb2.Envelope) -> bool:
    """Clear the credential fields of one envelope's payload; True if its bytes changed.

    Unknown fields of these payloads are dropped too: a newer client could
    carry a credential in a field this version does not know.
    """
    cls, names = _CREDENTIALS[env.type]
    msg = cls()
    try:
        msg.ParseFromString(env.payload)
    except DecodeError:
        changed = bool(env.payload)
        env.payload = b""
        return changed
    for name in names:
        msg.ClearField(name)
    msg.DiscardUnknownFields()
    cleaned = msg.SerializeToString(deterministic=True)
    if cleaned == env.payload:
        return False
    env.payload = cleaned
    return True


def _scrub(data: bytes, types: frozenset[str], max_size: int) -> Scrubbed:
    frame = events_pb2.Frame()
    try:
        frame.ParseFromString(data)
    except DecodeError:
        return Scrubbed(b"", WITHHELD)
    compressed = bool(frame.compression) or bool(frame.compressed)
    if not compressed:
        # Type names are stored verbatim in an uncompressed frame: no name, no credential.
        if not any(t.encode() in data for t in types):
            return Scrubbed(data, NONE)
        envelopes = list(frame.envelopes)
    else:
        try:
            envelopes = decode_frame(
                data, max_events=1 << 20, max_size=max_size, accepted_compression=_ALL_CODECS
            )
        except WireError:
            return Scrubbed(b"", WITHHELD)
    matched = False
    changed = bool(frame.compressed) and not frame.compression  # ignored bytes: drop them
    for env in envelopes:
        if env.type in types:
            matched = True
            changed = _clear(env) or changed
    if not changed:
        return Scrubbed(data, NONE, matched)
    clean = events_pb2.Frame(envelopes=envelopes).SerializeToString(deterministic=True)
    return Scrubbed(clean, CLEARED, matched)


def scrub_inbound(data: bytes, max_size: int = READ_MAX_FRAME) -> Scrubbed:
    """A client frame without hello/auth_refresh credentials (see the module docstring)."""
    return _scrub(data, _INBOUND_TYPES, max_size)


def scrub_outbound(data: bytes, max_size: int = READ_MAX_FRAME) -> Scrubbed:
    """A server frame without the welcome's reconnect token."""
    return _scrub(data, _OUTBOUND_TYPES, max_size)


def envelopes_of(data: bytes, max_size: int = READ_MAX_FRAME) -> list[events_pb2.Envelope]:
    """The envelopes of a recorded frame, decompressed; raises WireError like the gateway."""
    return decode_frame(data, max_events=1 << 20, max_size=max_size,
                        accepted_compression=_ALL_CODECS)


# --------------------------------------------------------------------------- encoding


def encode_record(record: recording_pb2.Record) -> bytes:
    """One record as it appears in a file: varint length, then the serialised Record."""
    body = record.SerializeToString(deterministic=True)
    return varint(len(body)) + body


def encode_frame_record(
    offset_us: int, direction: int, data: bytes, redaction: int, size: int
) -> bytes:
    """The bytes of ``Record{frame: FrameRecord{...}}``, built without protobuf objects.

    This runs for every recorded frame on the reactor thread, and building
    protobuf messages in Python costs far more than joining bytes (see
    DESIGN.md, "Cost model").  The output is the canonical proto3 encoding
    (zero fields omitted); tests check it against ``SerializeToString``.
    """
    parts = []
    if offset_us:
        parts.append(b"\x08" + varint(offset_us))
    if direction:
        parts.append(b"\x10" + varint(direction))
    if data:
        parts.append(b"\x1a" + varint(len(data)) + data)
    if redaction:
        parts.append(b"\x20" + varint(redaction))
    if size:
        parts.append(b"\x28" + varint(size))
    body = b"".join(parts)
    record = b"\x12" + varint(len(body)) + body  # Record.frame: field 2, length-delimited
    return varint(len(record)) + record


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class FrameEntry:
    """One recorded WebSocket message, with the connection it belongs to."""

    offset_us: int
    direction: str  # IN or OUT
    data: bytes
    redaction: int
    size: int
    connection_id: int
    player_id: str


@dataclass
class Recording:
    """A whole file, read back."""

    start: recording_pb2.SessionStart
    frames: list[FrameEntry] = field(default_factory=list)
    end: recording_pb2.SessionEnd | None = None
    # The file stops inside a record (the process died mid-write).
    truncated: bool = False


def _read_varint(buf: bytes | bytearray, pos: int) -> tuple[int, int] | None:
    """(value, next position), or None when ``buf`` ends inside the varint."""
    value = 0
    shift = 0
    while True:
        if pos >= len(buf):
            return None
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift >= 64:
            raise RecordingFormatError("record length is not a valid varint")


def iter_records(data: bytes) -> Iterator[recording_pb2.Record]:
    """The records of a complete file; a trailing partial record raises RecordingFormatError
    with ``truncated`` in its message only after every whole record was yielded."""
    if not data.startswith(MAGIC):
        if data[:6] == MAGIC[:6] and data[7:8] == b"\n":
            raise RecordingFormatError(
                f"recording format {data[6:7].decode(errors='replace')} is not supported "
                f"(this reader knows {FORMAT_VERSION})"
            )
        raise RecordingFormatError("not an rtgateway recording (bad magic)")
    pos = len(MAGIC)
    while pos < len(data):
        head = _read_varint(data, pos)
        if head is None:
            raise RecordingFormatError("truncated: the file ends inside a record length")
        length, start = head
        if length > MAX_RECORD:
            raise RecordingFormatError(f"record of {length} bytes at offset {pos}: corrupt file")
        if start + length > len(data):
            raise RecordingFormatError("truncated: the file ends inside a record")
        record = recording_pb2.Record()
        try:
            record.ParseFromString(data[start : start + length])
        except DecodeError:
            raise RecordingFormatError(f"record at offset {pos} does not parse")
        yield record
        pos = start + length


def read_recording(source: str | os.PathLike[str] | bytes) -> Recording:
    """Read a file (or its bytes).  A truncated tail is tolerated and reported."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    recording: Recording | None = None
    records = iter_records(data)
    while True:
        try:
            record = next(records)
        except StopIteration:
            break
        except RecordingFormatError as exc:
            if recording is not None and str(exc).startswith("truncated"):
                recording.truncated = True
                break
            raise
        kind = record.WhichOneof("kind")
        if recording is None:
            if kind != "start":
                raise RecordingFormatError("the first record is not a SessionStart")
            if record.start.format_version > FORMAT_VERSION:
                raise RecordingFormatError(
                    f"format_version {record.start.format_version} is newer than this reader"
                )
            recording = Recording(record.start)
        elif kind == "frame":
            f = record.frame
            recording.frames.append(
                FrameEntry(
                    f.offset_us,
                    _DIRECTION_NAMES.get(f.direction, "?"),
                    f.data,
                    f.redaction,
                    f.size,
                    recording.start.connection_id,
                    recording.start.player_id,
                )
            )
        elif kind == "end":
            recording.end = record.end
        # Unknown kinds (a newer writer) are skipped: the format only grows.
    if recording is None:
        raise RecordingFormatError("empty recording: no SessionStart")
    return recording


# --------------------------------------------------------------------------- the recorder


class RecordedConnection(Protocol):
    """What the recorder reads from a ``gateway.connection.Connection`` (read-only)."""

    @property
    def id(self) -> int: ...

    @property
    def player_id(self) -> str: ...

    @property
    def session_id(self) -> str: ...

    @property
    def versions(self) -> Mapping[str, int]: ...

    @property
    def compression(self) -> int: ...

    @property
    def authenticated(self) -> bool: ...


def open_private(path: str) -> int:
    """Create a recording file readable by its owner only (it holds player data)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_NOFOLLOW", 0)
    return os.open(path, flags, 0o600)


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def safe_name(text: str, limit: int = 64) -> str:
    """A file-name component: no separators, no leading dot, bounded length."""
    cleaned = _UNSAFE.sub("_", text)[:limit]
    if cleaned.startswith("."):
        cleaned = "_" + cleaned[1:]
    return cleaned or "_"


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


@dataclass(slots=True)
class _Held:
    """Frames of a connection whose player is not known yet (in-band system.hello)."""

    since_ns: int
    frames: list[tuple[int, str, bytes]] = field(default_factory=list)
    size: int = 0


@dataclass(slots=True)
class _File:
    fd: int
    path: str
    connection_id: int
    player_id: str
    start_ns: int
    welcome_seen: bool  # outbound frames after the welcome carry no credentials: not inspected
    buffer: bytearray = field(default_factory=bytearray)
    size: int = 0  # written + buffered
    frames: int = 0


class Recorder:
    """Which connections are recorded, and their files.

    Selection is by player id (``everyone`` records all).  A connection's
    file is opened at its first frame once its player is known; frames seen
    before that (the in-band ``system.hello``) are held briefly so a
    recording starts with the handshake.  A player selected while already
    connected is recorded from the next frame (``mid_session``).

    Failure policy: any ``OSError`` (directory missing, disk full,
    permissions) is logged once, and recording stops as a whole until it is
    started again; the connections themselves never notice.
    """

    #: Frames and bytes kept per connection before its player is known (before the
    #: welcome a client may send only its hello, so one frame is the normal case).
    HOLD_FRAMES = 8
    HOLD_BYTES = 128 * 1024
    #: Connections whose player is still unknown that we hold frames for: with the
    #: limits above, at most 128 MiB even if every pending handshake is hostile.
    HOLD_CONNECTIONS = 1024
    #: Held frames older than this belong to a connection that never authenticated.
    HOLD_SECONDS = 60.0

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int,
        instance_id: str = "",
        max_frame_size: int = READ_MAX_FRAME,
        flush_bytes: int = 64 * 1024,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
        wall_time: Callable[[], float] = time.time,
        opener: Callable[[str], int] = open_private,
        on_stopped: Callable[[], object] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.instance_id = instance_id
        self.max_frame_size = max_frame_size
        self.flush_bytes = flush_bytes
        self.monotonic_ns = monotonic_ns
        self.wall_time = wall_time
        self.opener = opener
        self.on_stopped = on_stopped
        self.enabled = False
        self.everyone = False
        self.players: frozenset[str] = frozenset()
        self.error: str | None = None
        self.finished: list[str] = []  # paths of recently completed files, newest last
        self._files: dict[int, _File] = {}
        self._held: dict[int, _Held] = {}
        self._capped: set[int] = set()  # connections that reached max_bytes: not reopened

    # ------------------------------------------------------------------ control

    def start(self, players: Iterable[str] = (), *, everyone: bool = False) -> bool:
        """Record ``players`` (or everyone) from now on; replaces the previous selection.

        Returns False when the directory cannot be used (the error is logged
        and kept in :attr:`error`).
        """
        chosen = frozenset(p for p in players if p)
        everyone = everyone or "*" in chosen
        if not everyone and not chosen:
            raise ValueError("name at least one player, or everyone")
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not os.access(self.directory, os.W_OK | os.X_OK):
                raise PermissionError(f"directory {self.directory} is not writable")
        except OSError as exc:
            self._fail(exc)
            return False
        self.error = None
        self.everyone = everyone
        self.players = frozenset() if everyone else chosen
        self.enabled = True
        for file in list(self._files.values()):
            if not self._selected(file.player_id):
                self._end(file, recording_pb2.END_REASON_STOPPED, "no longer selected")
        log.info(
            "recording {who} into {directory}",
            who="every player" if everyone else ", ".join(sorted(chosen)),
            directory=str(self.directory),
        )
        return self.enabled

    def stop(
        self, reason: recording_pb2.EndReason = recording_pb2.END_REASON_STOPPED, detail: str = ""
    ) -> None:
        """End every open file (with a SessionEnd saying why) and record nothing more.

        Never raises: an I/O error while closing is handled like any other.
        """
        was = self.enabled
        self.enabled = False
        try:
            for file in list(self._files.values()):
                self._end(file, reason, detail)
        except OSError as exc:
            self._fail(exc)
            return
        self._held.clear()
        self._capped.clear()
        if was:
            log.info("recording stopped")

    def status(self) -> dict[str, Any]:
        """A JSON-ready view for the admin endpoint and the manhole."""
        return {
            "recording": self.enabled,
            "everyone": self.everyone,
            "players": sorted(self.players),
            "directory": str(self.directory),
            "max_bytes": self.max_bytes,
            "error": self.error,
            "active": [
                {
                    "connection_id": f.connection_id,
                    "player_id": f.player_id,
                    "file": f.path,
                    "bytes": f.size,
                    "frames": f.frames,
                }
                for f in sorted(self._files.values(), key=lambda f: f.connection_id)
            ],
            "finished": list(self.finished),
            # Connections whose frames wait for their player to be known (in-band hello).
            "held": len(self._held),
        }

    def _selected(self, player_id: str) -> bool:
        return self.everyone or player_id in self.players

    # ------------------------------------------------------------------ traffic

    def frame(self, conn: RecordedConnection, direction: str, data: bytes) -> None:
        """One WebSocket message of ``conn``.  Never raises."""
        if not self.enabled:
            return
        try:
            self._frame(conn, direction, data)
        except OSError as exc:
            self._fail(exc)
        except Exception:
            # A recorder bug must not become a connection problem: stop recording instead.
            log.failure("recording failed; stopping")
            self._fail(RuntimeError("internal error (see the log)"), logged=True)

    def _frame(self, conn: RecordedConnection, direction: str, data: bytes) -> None:
        # Every connection's frames come through here while anything is recorded:
        # the unselected ones cost two dict lookups and a set lookup, no clock read.
        file = self._files.get(conn.id)
        if file is None:
            if conn.id in self._capped:
                return
            player = conn.player_id
            if not player:
                self._hold(conn.id, self.monotonic_ns(), direction, data)
                return
            held = self._held.pop(conn.id, None) if self._held else None
            if not self._selected(player):
                return
            now = self.monotonic_ns()
            file = self._open(conn, now, held)
        else:
            now = self.monotonic_ns()
        self._add(file, now, direction, data)

    def _hold(self, conn_id: int, now: int, direction: str, data: bytes) -> None:
        held = self._held.get(conn_id)
        if held is None:
            if len(self._held) >= self.HOLD_CONNECTIONS:
                return
            held = self._held[conn_id] = _Held(now)
        if len(held.frames) < self.HOLD_FRAMES and held.size + len(data) <= self.HOLD_BYTES:
            held.frames.append((now, direction, data))
            held.size += len(data)

    def _open(self, conn: RecordedConnection, now: int, held: _Held | None) -> _File:
        wall = self.wall_time()
        start_ns = held.since_ns if held is not None else now
        mid_session = held is None and conn.authenticated
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(wall))
        name = (
            f"{stamp}-{safe_name(conn.player_id)}-{safe_name(self.instance_id or 'gw', 32)}"
            f"-c{conn.id}.rtgrec"
        )
        path = str(self.directory / name)
        fd = self.opener(path)
        file = _File(fd, path, conn.id, conn.player_id, start_ns, welcome_seen=mid_session)
        start = recording_pb2.SessionStart(
            format_version=FORMAT_VERSION,
            started_at_us=int(wall * 1_000_000) - (now - start_ns) // 1000,
            instance_id=self.instance_id,
            connection_id=conn.id,
            player_id=conn.player_id,
            session_id=conn.session_id,
            mid_session=mid_session,
            max_bytes=self.max_bytes,
        )
        if mid_session:
            start.versions.update(conn.versions)
            start.compression = int(conn.compression)
        head = MAGIC + encode_record(recording_pb2.Record(start=start))
        file.buffer += head
        file.size = len(head)
        self._files[conn.id] = file
        if held is not None:
            for at, direction, data in held.frames:
                self._add(file, at, direction, data)
        return file

    def _add(self, file: _File, now: int, direction: str, data: bytes) -> None:
        if file.connection_id not in self._files:
            return  # ended (capped) while adding held frames
        if direction == IN:
            scrubbed = scrub_inbound(data, self.max_frame_size)
        elif not file.welcome_seen:
            scrubbed = scrub_outbound(data, self.max_frame_size)
            file.welcome_seen = scrubbed.matched
        else:
            scrubbed = Scrubbed(data, NONE)
        blob = encode_frame_record(
            max(0, (now - file.start_ns) // 1000),
            _DIRECTIONS[direction],
            scrubbed.data,
            scrubbed.redaction,
            len(data),
        )
        if file.size + len(blob) + END_RESERVE > self.max_bytes:
            self._capped.add(file.connection_id)
            log.info(
                "recording of {player} (connection {id}) reached max_bytes={limit}: stopped",
                player=file.player_id,
                id=file.connection_id,
                limit=self.max_bytes,
            )
            self._end(file, recording_pb2.END_REASON_MAX_BYTES,
                      f"max_bytes {self.max_bytes} reached", at=now)
            return
        file.buffer += blob
        file.size += len(blob)
        file.frames += 1
        if len(file.buffer) >= self.flush_bytes:
            self._write(file)

    def disconnected(self, conn: RecordedConnection) -> None:
        """The connection closed: its file ends.  Never raises."""
        self._held.pop(conn.id, None)
        self._capped.discard(conn.id)
        file = self._files.get(conn.id)
        if file is None:
            return
        try:
            self._end(file, recording_pb2.END_REASON_DISCONNECTED)
        except OSError as exc:
            self._fail(exc)

    def flush(self, alive: Callable[[int], bool] | None = None) -> None:
        """Write what is buffered (called on the normal tick).  Never raises.

        ``alive(connection_id)`` lets the caller drop frames held for
        connections that closed before their player was known (the gateway
        has no disconnect hook for those); otherwise they go after HOLD_SECONDS.
        """
        if not self._files and not self._held:
            return
        try:
            for file in list(self._files.values()):
                if file.buffer:
                    self._write(file)
        except OSError as exc:
            self._fail(exc)
            return
        if self._held:
            oldest = self.monotonic_ns() - int(self.HOLD_SECONDS * 1e9)
            gone = [
                c
                for c, h in self._held.items()
                if h.since_ns < oldest or (alive is not None and not alive(c))
            ]
            for conn_id in gone:
                del self._held[conn_id]

    # ------------------------------------------------------------------ files

    def _write(self, file: _File) -> None:
        data, file.buffer = file.buffer, bytearray()
        _write_all(file.fd, data)

    def _end(
        self,
        file: _File,
        reason: recording_pb2.EndReason,
        detail: str = "",
        *,
        at: int | None = None,
    ) -> None:
        """Append the SessionEnd, write, close.  OSError propagates (after closing)."""
        self._files.pop(file.connection_id, None)
        now = self.monotonic_ns() if at is None else at
        end = recording_pb2.SessionEnd(
            offset_us=max(0, (now - file.start_ns) // 1000),
            reason=reason,
            frames=file.frames,
            detail=detail[:120],
        )
        file.buffer += encode_record(recording_pb2.Record(end=end))
        try:
            self._write(file)
        finally:
            os.close(file.fd)
        self.finished = [*self.finished[-19:], file.path]

    def _fail(self, exc: BaseException, *, logged: bool = False) -> None:
        """Log once, close everything quietly, stop recording; the gateway carries on."""
        self.error = f"{type(exc).__name__}: {exc}"
        if not logged:
            log.error("recording stopped after an I/O error: {error}", error=self.error)
        self.enabled = False
        files = list(self._files.values())
        self._files.clear()
        self._held.clear()
        self._capped.clear()
        for file in files:
            # Best effort: other files may still be writable (a single bad path); stay quiet.
            try:
                end = recording_pb2.SessionEnd(
                    offset_us=max(0, (self.monotonic_ns() - file.start_ns) // 1000),
                    reason=recording_pb2.END_REASON_STOPPED,
                    frames=file.frames,
                    detail="recording error",
                )
                file.buffer += encode_record(recording_pb2.Record(end=end))
                self._write(file)
            except OSError:
                pass
            try:
                os.close(file.fd)
            except OSError:
                pass
        if self.on_stopped is not None:
            self.on_stopped()
