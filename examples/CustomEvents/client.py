"""Play an emote against a running gateway and print the emotes this player sees.

From the root of the rtgateway checkout, with the daemon started with
examples/CustomEvents/rtgateway.toml (see README.md)::

    python examples/CustomEvents/client.py --token "$(rtgateway-token --sub alice)" wave
    python examples/CustomEvents/client.py --token "$(rtgateway-token --sub bob)" --watch 30
    python examples/CustomEvents/client.py --token "$(rtgateway-token --sub alice)" --target bob bow
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Generator
from typing import Any

from twisted.internet import defer, task

from gateway.client.client import GatewayClient
from gateway.client.session import Incoming
from gateway.events import EventRegistry

# Run as a script, this file's directory is sys.path[0], and rtgateway's `plugins`
# package (like twisted.plugins) adds every `plugins/` directory on sys.path to its
# search path: ./plugins/emotes.py imports as plugins.emotes, as in the gateway.
from plugins import emotes, emotes_pb2
from protocol import events_pb2


def emote_registry() -> EventRegistry:
    """The client side needs the same specs as the server to encode and decode the events."""
    registry = EventRegistry()
    registry.register(*emotes.EmotesPlugin().event_specs())
    return registry


def show(incoming: Incoming) -> None:
    emote = incoming.message
    assert isinstance(emote, emotes_pb2.Emote)
    to = f" at {emote.target_player}" if emote.target_player else ""
    print(f"{emote.from_player}: {emote.emote}{to}", flush=True)


def show_error(incoming: Incoming) -> None:
    error = incoming.message
    assert isinstance(error, events_pb2.Error)
    print(f"refused ({error.code}): {error.message}", flush=True)


@defer.inlineCallbacks
def run(
    reactor: Any, url: str, token: str, emote: str, target: str, watch: float
) -> Generator[defer.Deferred[Any], Any, None]:
    client = GatewayClient(url, token, reactor=reactor, registry=emote_registry())
    client.on("game.emote", show)
    client.on("system.error", show_error)
    welcome = yield client.connect()
    print(f"connected as {welcome.player_id}", flush=True)
    if emote:
        request = emotes_pb2.EmoteRequest(emote=emote, target_player=target)
        client.send("game.emote.request", request)
    yield task.deferLater(reactor, watch, lambda: None)  # print what arrives meanwhile
    yield client.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("emote", nargs="?", default="", help="e.g. wave (none: only watch)")
    parser.add_argument("--token", required=True, help="a player token (rtgateway-token)")
    parser.add_argument("--url", default="ws://127.0.0.1:8080/ws")
    parser.add_argument("--target", default="", help="only this player sees it")
    parser.add_argument(
        "--watch",
        type=float,
        default=1.0,
        help="seconds to keep printing emotes before closing (default 1)",
    )
    args = parser.parse_args(argv)
    task.react(run, (args.url, args.token, args.emote, args.target, args.watch))


if __name__ == "__main__":
    main(sys.argv[1:])
