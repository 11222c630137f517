"""A predicting client for the bot world: steer your avatar, watch the bots.

Start a gateway with the example (from the root of the rtgateway checkout)::

    twistd --nodaemon --pidfile= rtgateway --config examples/StateProviders/rtgateway.toml

then, in another terminal::

    python examples/StateProviders/client.py --token "$(rtgateway-token alice)"

It walks the avatar in a circle, predicting each step locally with the same
``step`` function the server runs (plugins/botworld.py), reconciles with the
server's state when it arrives, and prints once a second where the avatar
is (predicted and authoritative), how many bots are in view, and the bytes
received.  Remote entities would be drawn from ``state.interpolator``.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # run from anywhere in the checkout

from gateway.client import GatewayClient, registry_for  # noqa: E402
from gateway.client.prediction import Reconciler, StateClient, StateReplica  # noqa: E402
from gateway.plugin import discover  # noqa: E402
from gateway.state.events import state_event_specs  # noqa: E402

PLUGINS_DIR = str(HERE / "plugins")


def load_game() -> Any:
    """The shared game module (the dropin), imported the way the gateway imports it."""
    discover([PLUGINS_DIR])
    return importlib.import_module("plugins.botworld")


class PredictingPlayer:
    """A StateClient plus prediction and reconciliation of the player's avatar."""

    def __init__(self, client: GatewayClient, game: Any, *, zone: float = 200.0) -> None:
        self.game = game
        self.zone = zone
        self.state = StateClient(client)
        self.predictor: Reconciler[Any, bytes] = Reconciler(
            lambda avatar, data: game.step(avatar, data, zone), game.Avatar(zone / 2, zone / 2))
        self.state.on_update.append(self._reconcile)
        self.corrections: list[float] = []

    @property
    def entity(self) -> int | None:
        return self.state.replica.schema.entity_id

    def authoritative(self, replica: StateReplica) -> Any | None:
        eid = self.entity
        if eid is None or eid not in replica.entities:
            return None
        view = replica.view(eid)
        return self.game.Avatar(view.x, view.y, view.vx, view.vy)

    def _reconcile(self, replica: StateReplica) -> None:
        server = self.authoritative(replica)
        if server is None:
            return
        before = self.predictor.state
        after = self.predictor.reconcile(server, replica.input_seq)
        self.corrections.append(math.hypot(after.x - before.x, after.y - before.y))

    def move(self, dx: float, dy: float) -> None:
        data = self.game.encode_input(dx, dy)
        seq = self.state.send_input(data)
        self.predictor.predict(seq, data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8080/ws")
    parser.add_argument("--token", required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)

    from twisted.internet import reactor, task

    game = load_game()
    client = GatewayClient(args.url, args.token, reactor=reactor,
                           registry=registry_for(state_event_specs()))
    player = PredictingPlayer(client, game)
    angle = [0.0]

    def walk() -> None:
        if client.online and player.state.replica.synced:
            angle[0] += 0.05
            player.move(math.cos(angle[0]), math.sin(angle[0]))

    def report() -> None:
        replica = player.state.replica
        if not replica.synced:
            print("waiting for the first snapshot...")
            return
        server = player.authoritative(replica)
        p = player.predictor.state
        bots = sum(1 for s in replica.entities.values() if s[1] == game.KIND_BOT)
        print(f"tick {replica.tick}: predicted ({p.x:6.2f}, {p.y:6.2f}) "
              f"server ({server.x if server else 0:6.2f}, {server.y if server else 0:6.2f}) "
              f"bots in view {bots:3d}, updates {replica.updates}")

    def started(_welcome: object) -> None:
        task.LoopingCall(walk).start(game.INPUT_DT)
        task.LoopingCall(report).start(1.0, now=False)
        reactor.callLater(args.seconds, lambda: client.close().addBoth(lambda _: reactor.stop()))

    def failed(failure: Any) -> None:
        print(f"could not connect: {failure.getErrorMessage()}")
        reactor.stop()

    client.connect().addCallbacks(started, failed)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
