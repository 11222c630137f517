"""Session recording and replay: the format, credential scrubbing, the recorder, the plugin
over real sockets (config, admin endpoint, manhole API) and rtgateway-replay."""

from __future__ import annotations

import io
import json
import os
import stat
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lz4.frame
import pytest
import pytest_twisted
import treq
from twisted.logger import LogLevel, globalLogPublisher
from twisted.web.test.requesthelper import DummyRequest
from wsclient import close_clients, sdk_client, wait_until  # noqa: F401 - autouse fixture

from gateway.config import Config, load
from gateway.recording import (
    CLEARED,
    IN,
    MAGIC,
    NONE,
    OUT,
    WITHHELD,
    Recorder,
    RecordingFormatError,
    encode_frame_record,
    encode_record,
    envelopes_of,
    read_recording,
    safe_name,
    scrub_inbound,
    scrub_outbound,
)
from gateway.tools.replay import build_registry, format_recording, main, plan_replay, replay
from gateway.wire import decode_frame
from plugins.recorder import RecordingResource
from protocol import events_pb2, game_pb2, recording_pb2

SECRET = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2VjcmV0LXNpZ25hdHVyZS1ieXRlcw"
RESUME = "resume-credential-0123456789"


#: No world.time broadcasts: tests that count frames must not race the world clock.
QUIET = {"plugin.world.time_interval": 0}


def make_config(**overrides: Any) -> Config:
    """Loopback, ephemeral ports (as conftest.test_config; not imported: examples/ has a
    conftest too, and the two collide as modules when both test paths are collected)."""
    base = {"server.listen": "tcp:0:interface=127.0.0.1",
            "admin.listen": "tcp:0:interface=127.0.0.1"}
    return load(None, {**base, **overrides})


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def env(type_: str, message: Any = None, **fields: Any) -> events_pb2.Envelope:
    payload = message.SerializeToString() if message is not None else b""
    return events_pb2.Envelope(type=type_, payload=payload, **fields)


def frame(*envelopes: events_pb2.Envelope) -> bytes:
    return events_pb2.Frame(envelopes=envelopes).SerializeToString()


def compressed(raw: bytes, codec: int) -> bytes:
    data = zlib.compress(raw) if codec == events_pb2.COMPRESSION_ZLIB else lz4.frame.compress(raw)
    return events_pb2.Frame(compression=codec, compressed=data).SerializeToString()


def hello_frame(token: str = SECRET) -> bytes:
    hello = events_pb2.Hello(token=token, client_name="t", resume_token=RESUME, last_seq=3)
    hello.versions["social.chat.send"].versions.append(1)
    return frame(env("system.hello", hello), env("system.ping", events_pb2.Ping(nonce=7)))


@pytest.fixture
def logged() -> Any:
    """Warnings and errors logged during the test, as (level, text) pairs."""
    from twisted.logger import formatEvent

    events: list[tuple[LogLevel, str]] = []

    def observer(event: dict[str, Any]) -> None:
        level = event.get("log_level")
        if level is not None and level >= LogLevel.warn:
            events.append((level, formatEvent(event)))

    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


# --------------------------------------------------------------------------- scrubbing


@pytest.mark.parametrize("codec", [0, events_pb2.COMPRESSION_ZLIB, events_pb2.COMPRESSION_LZ4])
def test_hello_credentials_are_cleared_plain_or_compressed(codec):
    raw = hello_frame()
    data = compressed(raw, codec) if codec else raw
    out = scrub_inbound(data)
    assert out.redaction == CLEARED and out.matched
    assert SECRET.encode() not in out.data and RESUME.encode() not in out.data
    hello_env, ping_env = decode_frame(out.data, max_events=8, max_size=1 << 20)
    hello = events_pb2.Hello.FromString(hello_env.payload)
    assert (hello.token, hello.resume_token, hello.client_name, hello.last_seq) == ("", "", "t", 3)
    assert list(hello.versions["social.chat.send"].versions) == [1]
    assert ping_env.type == "system.ping"
    assert events_pb2.Ping.FromString(ping_env.payload).nonce == 7


def test_auth_refresh_and_welcome_credentials_are_cleared():
    refresh = frame(env("system.auth_refresh", events_pb2.AuthRefresh(token=SECRET), seq=4))
    out = scrub_inbound(refresh)
    assert out.redaction == CLEARED and SECRET.encode() not in out.data
    [e] = envelopes_of(out.data)
    assert (e.type, e.seq, events_pb2.AuthRefresh.FromString(e.payload).token) == (
        "system.auth_refresh", 4, "")
    welcome = events_pb2.Welcome(player_id="alice", reconnect_token=RESUME)
    data = compressed(frame(env("system.welcome", welcome)), events_pb2.COMPRESSION_LZ4)
    out = scrub_outbound(data)
    assert out.redaction == CLEARED and out.matched and RESUME.encode() not in out.data
    [e] = envelopes_of(out.data)
    assert events_pb2.Welcome.FromString(e.payload).player_id == "alice"


def test_frames_without_credentials_are_kept_byte_for_byte():
    chat = frame(env("social.chat.send", game_pb2.ChatSend(channel="global", text="hi"), seq=1))
    assert scrub_inbound(chat).data is chat
    assert scrub_inbound(chat).redaction == NONE
    tokenless = frame(env("system.hello", events_pb2.Hello(client_name="browser")))
    assert scrub_inbound(tokenless).data is tokenless  # nothing to clear: exact bytes
    packed = compressed(chat * 3, events_pb2.COMPRESSION_ZLIB)
    assert scrub_inbound(packed).data is packed


def test_undecodable_frames_are_withheld():
    broken = hello_frame()[:-9]  # cut inside the frame: does not parse
    assert scrub_inbound(broken).redaction == WITHHELD
    assert scrub_inbound(broken).data == b""
    bomb = events_pb2.Frame(compression=events_pb2.COMPRESSION_ZLIB,
                            compressed=b"not zlib" + SECRET.encode()).SerializeToString()
    assert scrub_inbound(bomb).data == b""
    # A payload that is not a Hello at all: cleared entirely rather than trusted.
    odd = frame(events_pb2.Envelope(type="system.hello", payload=b"\xff\xff" + SECRET.encode()))
    out = scrub_inbound(odd)
    assert out.redaction == CLEARED and SECRET.encode() not in out.data


# --------------------------------------------------------------------------- format


@pytest.mark.parametrize("fields", [(0, 1, b"", 0, 0), (1234567, 2, b"\x0a\x00", 1, 2),
                                    (1, 1, b"x" * 300, 2, 300)])
def test_hand_encoded_frame_record_is_canonical_protobuf(fields):
    offset, direction, data, redaction, size = fields
    expected = encode_record(recording_pb2.Record(frame=recording_pb2.FrameRecord(
        offset_us=offset, direction=direction, data=data, redaction=redaction, size=size)))
    assert encode_frame_record(offset, direction, data, redaction, size) == expected


def test_reader_reports_truncation_and_refuses_other_formats(tmp_path):
    start = recording_pb2.SessionStart(format_version=1, player_id="p", connection_id=9)
    body = MAGIC + encode_record(recording_pb2.Record(start=start))
    body += encode_frame_record(5, recording_pb2.DIRECTION_IN, b"abc", 0, 3)
    whole = read_recording(body)
    assert [(f.offset_us, f.direction, f.data, f.player_id, f.connection_id)
            for f in whole.frames] == [(5, IN, b"abc", "p", 9)]
    assert whole.end is None and not whole.truncated
    cut = read_recording(body + encode_frame_record(6, 2, b"defgh", 0, 5)[:-2])
    assert cut.truncated and len(cut.frames) == 1
    with pytest.raises(RecordingFormatError, match="bad magic"):
        read_recording(b"GIF89a" + body)
    with pytest.raises(RecordingFormatError, match="format 2 is not supported"):
        read_recording(b"RTGREC2\n" + body[len(MAGIC):])
    with pytest.raises(RecordingFormatError, match="SessionStart"):
        read_recording(MAGIC + encode_frame_record(1, 1, b"", 0, 0))
    assert safe_name("../../etc/passwd") == "_._.._etc_passwd"
    assert safe_name(".hidden") == "_hidden"


# --------------------------------------------------------------------------- the recorder


@dataclass
class FakeConn:
    id: int
    player_id: str = ""
    session_id: str = ""
    versions: dict[str, int] = field(default_factory=dict)
    compression: int = 0
    authenticated: bool = False


class Ticker:
    def __init__(self) -> None:
        self.ns = 1_000_000_000

    def __call__(self) -> int:
        self.ns += 1_000_000  # 1 ms per reading
        return self.ns


def test_max_bytes_ends_the_file_with_a_record_saying_so(tmp_path):
    rec = Recorder(tmp_path, max_bytes=4096, instance_id="i1", monotonic_ns=Ticker())
    assert rec.start(["alice"])
    conn = FakeConn(1, "alice", authenticated=True)
    chat = frame(env("social.chat.send", game_pb2.ChatSend(channel="global", text="x" * 400)))
    for _ in range(30):
        rec.frame(conn, IN, chat)
    assert rec.status()["active"] == []  # capped: closed, and not reopened
    [path] = rec.finished
    assert os.path.getsize(path) <= 4096
    recording = read_recording(path)
    assert 5 <= len(recording.frames) < 10
    assert recording.end is not None
    assert recording.end.reason == recording_pb2.END_REASON_MAX_BYTES
    assert "4096" in recording.end.detail and recording.end.frames == len(recording.frames)
    assert recording.start.mid_session  # selected while already authenticated
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_frames_before_the_player_is_known_are_held_then_recorded(tmp_path):
    rec = Recorder(tmp_path, max_bytes=1 << 20, monotonic_ns=Ticker())
    rec.start(everyone=True)
    conn = FakeConn(2)
    rec.frame(conn, IN, hello_frame())  # in-band hello: no player yet
    conn.player_id = "bob"
    conn.authenticated = True
    welcome = frame(env("system.welcome", events_pb2.Welcome(reconnect_token=RESUME)))
    rec.frame(conn, OUT, welcome)
    rec.disconnected(conn)
    recording = read_recording(rec.finished[-1])
    assert not recording.start.mid_session
    assert [(f.direction, f.redaction) for f in recording.frames] == [(IN, CLEARED),
                                                                      (OUT, CLEARED)]
    assert recording.frames[1].offset_us > recording.frames[0].offset_us
    data = Path(rec.finished[-1]).read_bytes()
    assert SECRET.encode() not in data and RESUME.encode() not in data
    assert recording.end is not None
    assert recording.end.reason == recording_pb2.END_REASON_DISCONNECTED


def test_held_frames_of_closed_connections_are_dropped(tmp_path):
    ticker = Ticker()
    rec = Recorder(tmp_path, max_bytes=1 << 20, monotonic_ns=ticker)
    rec.start(["alice"])
    for conn_id in (20, 21):
        rec.frame(FakeConn(conn_id), IN, hello_frame())
    assert rec.status()["held"] == 2
    rec.flush(alive=lambda conn_id: conn_id == 21)
    assert rec.status()["held"] == 1
    ticker.ns += int(Recorder.HOLD_SECONDS * 1e9) + 1
    rec.flush()
    assert rec.status()["held"] == 0
    rec.frame(FakeConn(21, "mallory", authenticated=True), OUT, frame(env("system.pong")))
    assert rec.status()["active"] == [] and rec.finished == []  # not selected


def test_write_errors_are_logged_once_and_stop_recording(tmp_path, logged):
    stopped = []
    rec = Recorder(tmp_path, max_bytes=1 << 20, flush_bytes=1,
                   opener=lambda path: os.open("/dev/full", os.O_WRONLY),
                   on_stopped=lambda: stopped.append(True))
    rec.start(["alice"])
    conn = FakeConn(3, "alice", authenticated=True)
    for _ in range(5):
        rec.frame(conn, IN, frame(env("system.ping")))  # never raises
    rec.flush()
    rec.disconnected(conn)
    status = rec.status()
    assert status["recording"] is False and "No space left" in status["error"]
    assert stopped == [True]
    assert len([text for _, text in logged if "recording" in text]) == 1


def test_a_vanished_directory_is_logged_once(tmp_path, logged):
    rec = Recorder(tmp_path / "rec", max_bytes=1 << 20)
    rec.start(everyone=True)
    (tmp_path / "rec").rmdir()
    for i in range(3):
        rec.frame(FakeConn(10 + i, f"p{i}"), IN, frame(env("system.ping")))
    assert rec.status()["recording"] is False
    assert len([text for _, text in logged if "recording" in text]) == 1


def test_replay_plan_replaces_the_hello():
    start = recording_pb2.SessionStart(format_version=1, player_id="p", mid_session=True,
                                       versions={"social.chat.send": 1}, compression=2)
    body = MAGIC + encode_record(recording_pb2.Record(start=start))
    body += encode_frame_record(10, 1, frame(env("system.ping")), 0, 0)
    plan = plan_replay(read_recording(body))
    assert list(plan.hello.versions["social.chat.send"].versions) == [1]
    assert list(plan.hello.compression) == [2] and plan.hello.token == ""
    assert [offset for offset, _ in plan.frames] == [10]

    first = hello_frame()  # hello + ping in one frame: the ping stays, the hello goes
    start.mid_session = False
    body = MAGIC + encode_record(recording_pb2.Record(start=start))
    body += encode_frame_record(1, 1, scrub_inbound(first).data, CLEARED, len(first))
    plan = plan_replay(read_recording(body))
    assert plan.hello.client_name.endswith("(t)") and plan.hello.last_seq == 0
    [(_, data)] = plan.frames
    assert [e.type for e in envelopes_of(data)] == ["system.ping"]


# --------------------------------------------------------------------------- admin resource


class FakePlugin:
    def __init__(self) -> None:
        self.calls: list[Any] = []

    def status(self) -> dict[str, Any]:
        return {"recording": bool(self.calls and self.calls[-1][0] == "start")}

    def start(self, players: list[str], everyone: bool) -> dict[str, Any]:
        self.calls.append(("start", players, everyone))
        return self.status()

    def stop(self) -> dict[str, Any]:
        self.calls.append(("stop",))
        return self.status()


def render(res: RecordingResource, method: bytes, path: list[bytes], body: bytes = b"",
           token: str | None = None) -> tuple[int, Any]:
    request = DummyRequest(path)
    request.method = method
    request.content = io.BytesIO(body)
    if token is not None:
        request.requestHeaders.addRawHeader(b"authorization", f"Bearer {token}".encode())
    out = res.render(request)
    return request.responseCode or 200, json.loads(out)


def test_admin_resource_checks_token_and_input():
    plugin = FakePlugin()
    res = RecordingResource(plugin, b"admin-secret")  # type: ignore[arg-type]
    assert render(res, b"GET", [])[0] == 401
    assert render(res, b"GET", [], token="wrong")[0] == 401
    assert render(res, b"GET", [], token="admin-secret") == (200, {"recording": False})
    assert render(res, b"POST", [b"start"], b"{}", token="admin-secret")[0] == 400
    assert render(res, b"POST", [b"start"], b"[1]", token="admin-secret")[0] == 400
    assert render(res, b"POST", [b"start"], b'{"players": [3]}', token="admin-secret")[0] == 400
    assert render(res, b"GET", [b"start"], token="admin-secret")[0] == 405
    assert render(res, b"POST", [b"nope"], token="admin-secret")[0] == 404
    assert plugin.calls == []
    ok = render(res, b"POST", [b"start"], b'{"all": true}', token="admin-secret")
    assert ok == (200, {"recording": True}) and plugin.calls == [("start", [], True)]


# --------------------------------------------------------------------------- end to end


def recorder_of(running: Any) -> Any:
    """The plugin object, reached the way an operator does in the manhole."""
    return running.service.manhole_namespace()["plugins"]["recorder"]


def inbound_types(data: bytes) -> list[str]:
    return [e.type for e in envelopes_of(data)]


@pytest_twisted.inlineCallbacks
def test_record_a_chat_session_print_it_and_replay_it(start_gateway, mint, tmp_path):
    directory = tmp_path / "rec"
    config = make_config(**{"recording.directory": str(directory),
                            "recording.players": ["alice"], "auth.allow_in_band": True})
    running = yield start_gateway(config)
    registry = build_registry()
    token, fresh = mint("alice"), mint("alice", ttl=600)
    alice = sdk_client(running.url, token, token_via="hello", registry=registry)
    yield alice.connect()
    lines = []
    for i in range(3):
        got = alice.wait_for("social.chat.message", timeout=5)
        alice.send("social.chat.send", game_pb2.ChatSend(channel="global", text=f"hello {i}"))
        lines.append((yield got))
    assert [line.message.text for line in lines] == ["hello 0", "hello 1", "hello 2"]
    yield alice.refresh_token(fresh)
    pong = alice.wait_for("system.pong", timeout=5)
    alice.ping()
    yield pong
    yield alice.close()
    plugin = recorder_of(running)
    yield wait_until(lambda: plugin.status()["finished"], what="the file to end")

    [path] = plugin.status()["finished"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    raw = Path(path).read_bytes()
    assert raw.startswith(MAGIC)
    for secret in (token, fresh, token.rsplit(".", 1)[1], fresh.rsplit(".", 1)[1]):
        assert secret.encode() not in raw
    recording = read_recording(path)
    assert recording.start.player_id == "alice" and not recording.start.mid_session
    assert recording.end is not None
    assert recording.end.reason == recording_pb2.END_REASON_DISCONNECTED
    offsets = [f.offset_us for f in recording.frames]
    assert offsets == sorted(offsets)
    first = recording.frames[0]
    assert (first.direction, first.redaction) == (IN, CLEARED)
    assert inbound_types(first.data) == ["system.hello"]
    ins = [t for f in recording.frames if f.direction == IN for t in inbound_types(f.data)]
    outs = [t for f in recording.frames if f.direction == OUT for t in inbound_types(f.data)]
    assert ins.count("social.chat.send") == 3
    assert {"system.hello", "system.auth_refresh", "system.ping"} <= set(ins)
    assert outs[0] == "system.welcome"
    assert outs.count("social.chat.message") == 3
    assert {"system.auth_refreshed", "system.pong"} <= set(outs)
    refresh = next(f for f in recording.frames
                   if f.direction == IN and "system.auth_refresh" in inbound_types(f.data))
    assert refresh.redaction == CLEARED

    printed = io.StringIO()
    assert main([path], out=printed) == 0
    text = printed.getvalue()
    assert 'text: "hello 1"' in text and "social.chat.message" in text
    assert "[credentials cleared]" in text and token not in text
    assert text.splitlines()[-1].split()[1:3] == ["end", "disconnected"]
    assert len(list(format_recording(recording, registry))) == len(text.splitlines())

    # Replay into the same gateway as bob; watch what the gateway receives from him.
    seen: list[str] = []

    def watch(transport: Any, direction: str, data: bytes) -> None:
        if direction == IN and transport.connection.player_id == "bob":
            seen.extend(inbound_types(data))

    running.gateway.frame_observers.append(watch)
    out = io.StringIO()
    result = yield replay(recording, running.url, mint("bob"), speed=0, linger=0.2,
                          reactor=_reactor(), registry=registry, out=out)
    assert result.completed and result.close_code == 1000
    assert result.welcome is not None and result.welcome.player_id == "bob"
    assert seen[0] == "system.hello" and seen[1:] == ins[1:]
    assert result.received.count("social.chat.message") == 3
    assert "system.error" in result.received  # the recorded refresh has no token left
    assert 'text: "hello 2"' in out.getvalue()
    assert len(plugin.status()["finished"]) == 1  # bob is not selected: not recorded

    # Timing is kept (scaled by speed), and a refused replay ends by itself.
    reactor = _reactor()
    span = (recording.frames[-1].offset_us - recording.frames[1].offset_us) / 1e6
    began = reactor.seconds()
    result = yield replay(recording, running.url, mint("carl"), speed=2, linger=0,
                          reactor=reactor, registry=registry, out=io.StringIO())
    assert result.completed and reactor.seconds() - began >= span / 2 * 0.8
    out = io.StringIO()
    result = yield replay(recording, running.url, "not-a-token", speed=0, timeout=5,
                         reactor=reactor, registry=registry, out=out)
    assert not result.completed and result.welcome is None and result.sent == 0
    assert "no welcome" in out.getvalue()


@pytest_twisted.inlineCallbacks
def test_switch_recording_at_run_time_over_the_admin_endpoint(start_gateway, mint, tmp_path):
    config = make_config(**{"recording.directory": str(tmp_path), **QUIET})
    running = yield start_gateway(config)
    url = f"{running.admin_url}/admin/recording"

    def post(path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else b""
        return treq.post(f"{url}/{path}", data=data, persistent=False, timeout=5)

    response = yield treq.get(url, persistent=False, timeout=5)
    status = yield response.json()
    assert (response.code, status["recording"]) == (200, False)
    assert running.gateway.frame_observers == []  # nothing recorded: nothing observed
    response = yield post("start", {"players": ["carol"]})
    status = yield response.json()
    assert (response.code, status["recording"], status["players"]) == (200, True, ["carol"])

    carol = sdk_client(running.url, mint("carol"))
    dave = sdk_client(running.url, mint("dave"))
    yield carol.connect()
    yield dave.connect()
    pong = carol.wait_for("system.pong", timeout=5)
    carol.ping()
    yield pong
    response = yield post("stop")
    status = yield response.json()
    assert status["recording"] is False and running.gateway.frame_observers == []
    [first] = status["finished"]
    recording = read_recording(first)
    assert recording.start.player_id == "carol" and not recording.start.mid_session
    assert recording.end is not None
    assert recording.end.reason == recording_pb2.END_REASON_STOPPED

    # Everyone, from now on: the connected players are recorded mid-session.
    response = yield post("start", {"all": True})
    assert (yield response.json())["everyone"] is True
    pong = dave.wait_for("system.pong", timeout=5)
    dave.ping()
    yield pong
    yield dave.close()
    yield wait_until(lambda: len(recorder_of(running).status()["finished"]) == 2)
    recording = read_recording(recorder_of(running).status()["finished"][-1])
    assert recording.start.player_id == "dave" and recording.start.mid_session
    assert recording.start.versions["system.pong"] == 1
    assert [inbound_types(f.data)[0] for f in recording.frames] == ["system.ping",
                                                                     "system.pong"]
    response = yield post("start", {"players": "carol"})
    assert response.code == 400
    yield response.content()


@pytest_twisted.inlineCallbacks
def test_manhole_api_and_unwritable_directory(start_gateway, mint, tmp_path, logged):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    config = make_config(**{"recording.directory": str(blocker / "rec"),
                            "recording.players": ["*"], **QUIET})
    running = yield start_gateway(config)
    plugin = recorder_of(running)
    status = plugin.status()
    assert status["recording"] is False and "NotADirectoryError" in status["error"]
    assert running.gateway.frame_observers == []
    erin = sdk_client(running.url, mint("erin"))
    yield erin.connect()  # recording failed; the gateway did not
    pong = erin.wait_for("system.pong", timeout=5)
    erin.ping()
    yield pong
    assert len([text for _, text in logged if "recording" in text]) == 1

    # The manhole's way to switch it on: the plugin object itself.
    plugin.recorder.directory = tmp_path / "elsewhere"
    assert plugin.start(players="erin")["recording"] is True
    pong = erin.wait_for("system.pong", timeout=5)
    erin.ping()
    yield pong
    [active] = plugin.status()["active"]
    assert active["player_id"] == "erin" and active["frames"] == 2
    plugin.stop()
    recording = read_recording(plugin.status()["finished"][-1])
    assert recording.start.mid_session and len(recording.frames) == 2


@pytest_twisted.inlineCallbacks
def test_replay_gives_up_on_a_silent_server():
    from twisted.internet.protocol import Factory, Protocol

    reactor = _reactor()
    port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    try:
        start = recording_pb2.SessionStart(format_version=1, player_id="p")
        recording = read_recording(MAGIC + encode_record(recording_pb2.Record(start=start)))
        out = io.StringIO()
        began = reactor.seconds()
        result = yield replay(recording, f"ws://127.0.0.1:{port.getHost().port}/ws", "t",
                              timeout=0.3, reactor=reactor, registry=build_registry(), out=out)
        assert reactor.seconds() - began < 3
        assert not result.completed and "timed out" in out.getvalue()
    finally:
        yield port.stopListening()


def test_replay_tool_errors(tmp_path, capsys):
    assert main([str(tmp_path / "missing.rtgrec")]) == 2
    bad = tmp_path / "bad.rtgrec"
    bad.write_bytes(b"nope")
    assert main([str(bad)]) == 2
    good = tmp_path / "good.rtgrec"
    good.write_bytes(MAGIC + encode_record(recording_pb2.Record(
        start=recording_pb2.SessionStart(format_version=1, player_id="p"))))
    assert main([str(good), "--to", "ws://127.0.0.1:1/ws"]) == 2  # no --token
    err = capsys.readouterr().err
    assert "bad magic" in err and "--token is required" in err
