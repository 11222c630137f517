"""Summarise a py-spy ``--format raw`` profile: self and inclusive time per function.

    py-spy record --format raw --output prof.raw --pid PID
    python bench/pyspy_summary.py prof.raw [--top 40] [--under hub.py:flush]

Each raw line is ``frame;frame;...;frame COUNT`` with frames written as
``function (file:line)``.  Self time goes to the innermost frame; inclusive
time counts a function once per stack.  ``--under`` keeps only stacks that
pass through a frame containing that text (e.g. ``flush (gateway/hub.py``).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::(?P<line>\d+))?\)$")


def key(frame: str, by_line: bool) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m["file"]
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    name = f"{m['func']} ({path}"
    if by_line and m["line"]:
        name += f":{m['line']}"
    return name + ")"


#: (category, substrings): a sample goes to the category of its innermost matching frame.
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("kernel: socket send()", ("untilConcludes",)),
    ("kernel: epoll_ctl add/remove writer", ("EPollReactor._remove", "EPollReactor._add")),
    ("kernel: epoll_wait", ("EPollReactor.doPoll (twisted/internet/epollreactor.py:2",)),
    ("autobahn: log.debug arguments (hltype/hlval)", ("hltype", "hlval", "_no_op", "PrettyPrinter",
                                                      "pprint", "_qn (", "hl (")),
    ("twisted: transport.write (buffer, startWriting)", ("FileDescriptor.write",
                                                         "ConnectionMixin.write",
                                                         "FileDescriptor.startWriting",
                                                         "EPollReactor.addWriter")),
    ("twisted: doWrite (python side)", ("FileDescriptor.doWrite", "writeSomeData",
                                        "FileDescriptor.stopWriting", "EPollReactor.removeWriter",
                                        "_postLoseConnection")),
    ("autobahn: sendMessage/sendFrame framing", ("WebSocketProtocol.sendMessage",
                                                 "WebSocketProtocol.sendFrame",
                                                 "create_websocket_frame")),
    ("autobahn: sendPreparedMessage/sendData", ("WebSocketProtocol.sendData",
                                                "WebSocketProtocol.sendPreparedMessage")),
    ("gateway: ws.send_prepared / send_frame", ("GatewayProtocol.send_prepared",
                                                "GatewayProtocol.send_frame")),
    ("gateway: hub._take_shared", ("Hub._take_shared",)),
    ("gateway: hub.flush loop", ("Hub.flush", "Connection.authenticated", "Connection.has_pending",
                                 "Connection.count_shared", "Hub._prepare", "Hub._emit",
                                 "GatewayFactory._prepare", "prepareMessage")),
    ("gateway: publish loop (Delivery/Gateway.publish)", ("Delivery.", "Gateway.publish",
                                                          "EventSpec.", "Hub.share",
                                                          "Hub.subscribers")),
    ("baseline: broadcast loop", ("main.<locals>.broadcast", "bench_tick_frame")),
    ("gateway: sweep (heartbeat)", ("Gateway.sweep",)),
    ("inbound: reading and handling", ("doRead (", "dataReceived", "Gateway.received")),
    ("tick scheduler", ("TickScheduler", "TickBroadcaster")),
    ("reactor dispatch (loop, log context)", ("doPoll", "callWithLogger", "callWithContext",
                                              "_doReadOrWrite", "mainLoop", "runUntilCurrent",
                                              "LoopingCall", "maybeDeferred", "Deferred")),
]


def categorise(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, needles in CATEGORIES:
            if any(n in frame for n in needles):
                return name
    return "other"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--under", default="", help="only stacks through a frame containing this")
    parser.add_argument("--by-line", action="store_true", help="split functions by line")
    parser.add_argument("--us-per-event", type=float, default=0.0,
                        help="measured CPU us per delivered event: also print the categories "
                             "in us per event")
    args = parser.parse_args(argv)

    cats: Counter[str] = Counter()
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    with open(args.raw) as fh:
        for line in fh:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count_s = line.rpartition(" ")
            try:
                count = int(count_s)
            except ValueError:
                continue
            frames = stack.split(";")
            if args.under and not any(args.under in f for f in frames):
                continue
            total += count
            keys = [key(f, args.by_line) for f in frames if not f.startswith("process ")
                    and not f.startswith("thread ")]
            if keys:
                self_t[keys[-1]] += count
            cats[categorise(frames)] += count
            for k in set(keys):
                incl[k] += count
    if not total:
        print("no samples", file=sys.stderr)
        return 1
    print(f"{total} samples" + (f" under {args.under!r}" if args.under else ""))
    print("\n-- by category (innermost matching frame)")
    for k, v in cats.most_common():
        extra = f"  {v / total * args.us_per_event:6.2f} us/event" if args.us_per_event else ""
        print(f"{v / total * 100:6.2f}%{extra}  {k}")
    print(f"\n-- self time (top {args.top})")
    for k, v in self_t.most_common(args.top):
        print(f"{v / total * 100:6.2f}%  {k}")
    print(f"\n-- inclusive time (top {args.top})")
    for k, v in incl.most_common(args.top):
        print(f"{v / total * 100:6.2f}%  {k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
