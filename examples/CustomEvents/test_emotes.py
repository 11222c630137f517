"""The emotes example, end to end: a real gateway loading plugins/emotes.py as a dropin.

Run it from the root of the rtgateway checkout::

    pytest examples/CustomEvents
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer

from gateway.client.client import GatewayClient, ServerError
from gateway.codes import ErrorCode
from gateway.config import ConfigError
from gateway.events import EventRegistry
from gateway.plugin import discover
from tests.conftest import test_config as gateway_config  # renamed: not a test

HERE = Path(__file__).resolve().parent
PLUGINS_DIR = str(HERE / "plugins")
ROOT = HERE.parents[1]


def emotes_config(**options):
    """A test gateway that loads the example's plugins directory, with [plugin.emotes] options."""
    plugin_options = {f"plugin.emotes.{key}": value for key, value in options.items()}
    return gateway_config(**{"plugins.paths": [PLUGINS_DIR], **plugin_options})


def emote_registry() -> EventRegistry:
    """The client-side registry, built as client.py builds it: from the plugin's own specs."""
    [emotes] = [p for p in discover([PLUGINS_DIR]) if p.name == "emotes"]
    registry = EventRegistry()
    registry.register(*emotes.instance().event_specs())
    return registry


@pytest.fixture
def emotes_pb2():
    """The generated messages, as the gateway imports them (discovery imports the module)."""
    discover([PLUGINS_DIR])
    return importlib.import_module("plugins.emotes_pb2")


@defer.inlineCallbacks
def connect(running, token):
    from twisted.internet import reactor

    client = GatewayClient(running.url, token, reactor=reactor, registry=emote_registry())
    yield client.connect()
    return client


@pytest_twisted.inlineCallbacks
def test_an_emote_reaches_everyone_with_the_senders_identity(start_gateway, mint, emotes_pb2):
    running = yield start_gateway(emotes_config())
    alice = yield connect(running, mint("alice"))
    bob = yield connect(running, mint("bob"))
    bob_sees = bob.wait_for("game.emote", timeout=5)
    alice_sees = alice.wait_for("game.emote", timeout=5)

    alice.send("game.emote.request", emotes_pb2.EmoteRequest(emote="wave"))

    for seen in ((yield bob_sees), (yield alice_sees)):
        assert seen.message.from_player == "alice"  # the token's sub, not anything sent
        assert seen.message.emote == "wave"
        assert seen.message.target_player == ""
        assert seen.message.sent_at_us > 0
    yield alice.close()
    yield bob.close()


@pytest_twisted.inlineCallbacks
def test_an_emote_not_in_the_allowed_list_fails_validation(start_gateway, mint, emotes_pb2):
    running = yield start_gateway(emotes_config())
    alice = yield connect(running, mint("alice"))
    refused = alice.wait_for("system.error", timeout=5)

    alice.send("game.emote.request", emotes_pb2.EmoteRequest(emote="moonwalk"))

    error = (yield refused).message
    assert error.code == ErrorCode.VALIDATION_FAILED == 5
    assert error.event_type == "game.emote.request"
    assert "moonwalk" in error.message

    refused = alice.wait_for("system.error", timeout=5)
    alice.send("game.emote.request", emotes_pb2.EmoteRequest(emote="bow", target_player="alice"))
    error = (yield refused).message
    assert (error.code, error.message) == (ErrorCode.VALIDATION_FAILED, "emoting at yourself")
    yield alice.close()


@pytest_twisted.inlineCallbacks
def test_a_targeted_emote_goes_to_that_player_and_an_unknown_target_is_refused(
    start_gateway, mint, emotes_pb2
):
    running = yield start_gateway(emotes_config())
    alice = yield connect(running, mint("alice"))
    bob = yield connect(running, mint("bob"))
    bob_sees = bob.wait_for("game.emote", timeout=5)

    answer = yield alice.request(
        "game.emote.request", emotes_pb2.EmoteRequest(emote="bow", target_player="bob")
    )
    assert answer.message.target_player == "bob"
    seen = (yield bob_sees).message
    assert (seen.from_player, seen.emote, seen.target_player) == ("alice", "bow", "bob")

    with pytest.raises(ServerError) as refused:
        yield alice.request(
            "game.emote.request", emotes_pb2.EmoteRequest(emote="bow", target_player="nobody")
        )
    assert refused.value.code == ErrorCode.BAD_REQUEST
    assert refused.value.error.message == "that player is not online"
    yield alice.close()
    yield bob.close()


@pytest_twisted.inlineCallbacks
def test_the_plugin_config_is_applied(start_gateway, mint, emotes_pb2):
    running = yield start_gateway(emotes_config(allowed=["wave"], cooldown=60.0, burst=1))
    [plugin] = [p for p in running.service.plugins if p.name == "emotes"]
    assert plugin.config.allowed == ("wave",)
    assert running.gateway.registry["game.emote.request"].rate_limit == (1 / 60, 1)
    alice = yield connect(running, mint("alice"))

    with pytest.raises(ServerError) as not_allowed:  # allowed by default, not by this config
        yield alice.request("game.emote.request", emotes_pb2.EmoteRequest(emote="dance"))
    assert not_allowed.value.code == ErrorCode.VALIDATION_FAILED

    with pytest.raises(ServerError) as cooling_down:  # "dance" used the one-emote burst
        yield alice.request("game.emote.request", emotes_pb2.EmoteRequest(emote="wave"))
    assert cooling_down.value.code == ErrorCode.RATE_LIMITED
    yield alice.close()


@pytest_twisted.inlineCallbacks
def test_a_bad_option_stops_start_up_naming_it(start_gateway):
    with pytest.raises(ConfigError, match=r"^plugin\.emotes\.cooldown: must be 0 or greater"):
        yield start_gateway(emotes_config(cooldown=-1.0))
    with pytest.raises(ConfigError, match=r"^plugin\.emotes\.cooldown: must be a number"):
        yield start_gateway(emotes_config(cooldown="soon"))


@pytest_twisted.inlineCallbacks
def test_the_dropin_directory_belongs_to_its_gateway_only(start_gateway):
    with_emotes = yield start_gateway(emotes_config())
    without = yield start_gateway()
    assert "game.emote" in with_emotes.gateway.registry
    assert "game.emote" not in without.gateway.registry
    assert "emotes" not in {p.name for p in without.service.plugins}
    assert "emotes" not in {p.name for p in discover()}


@pytest_twisted.inlineCallbacks
def test_client_script(start_gateway, mint):
    """client.py runs as the README says, and another player sees its emote."""
    from twisted.internet import utils

    running = yield start_gateway(emotes_config())
    bob = yield connect(running, mint("bob"))
    bob_sees = bob.wait_for("game.emote", timeout=30)
    env = dict(os.environ, PYTHONPATH=str(ROOT))  # as if rtgateway were installed
    args = [str(HERE / "client.py"), "--url", running.url, "--token", mint("alice"), "wave"]

    out, err, code = yield utils.getProcessOutputAndValue(sys.executable, args, env=env)

    assert code == 0, err.decode()
    assert out.decode().splitlines() == ["connected as alice", "alice: wave"]
    assert (yield bob_sees).message.from_player == "alice"
    yield bob.close()
