"""rtgateway-catalog: the committed docs/EventCatalog.md is current, and the rendering is right."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from gateway.events import Category, Delivery, Direction, EventRegistry, EventSpec, Priority
from gateway.plugin import discover
from gateway.tools import catalog
from protocol import events_pb2

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "docs" / "EventCatalog.md"


def test_the_committed_catalog_is_up_to_date():
    built = catalog.build()
    generated = catalog.render(built.registry, built.plugins)
    current = COMMITTED.read_text(encoding="utf-8") if COMMITTED.exists() else ""
    if current != generated:
        diff = difflib.unified_diff(
            current.splitlines(keepends=True),
            generated.splitlines(keepends=True),
            "docs/EventCatalog.md (committed)",
            "generated",
        )
        pytest.fail(
            "docs/EventCatalog.md is out of date with the event registry: run "
            "`rtgateway-catalog --output docs/EventCatalog.md` (from a checkout without the "
            "package installed: `python -m gateway.tools.catalog --output docs/EventCatalog.md`) "
            "and commit it.\n" + "".join(list(diff)[:60]),
            pytrace=False,
        )


def _oneof_message():
    """A message with a real oneof and a proto3 `optional` field, in a private pool."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="catalog_test.proto", package="t", syntax="proto3"
    )
    msg = proto.message_type.add(name="Pick")
    msg.oneof_decl.add(name="choice")
    msg.oneof_decl.add(name="_note")
    string = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    msg.field.add(name="left", number=1, type=string, label=optional, oneof_index=0)
    msg.field.add(name="right", number=2, type=string, label=optional, oneof_index=0)
    msg.field.add(
        name="note", number=3, type=string, label=optional, oneof_index=1, proto3_optional=True
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Pick"))


def _tiny_registry(reverse: bool = False) -> EventRegistry:
    specs = [
        EventSpec(
            type="game.hello",
            versions={1: events_pb2.Ping, 2: events_pb2.Hello},
            upgraders={1: lambda m: events_pb2.Hello()},
            downgraders={2: lambda m: events_pb2.Ping()},
            category=Category.GAME,
            priority=Priority.HIGH,
            direction=Direction.CLIENT_TO_SERVER,
            delivery=Delivery.RELIABLE,
            rate_limit=(2.5, 3),
            description="A | pipe in the description.",
            owner="tiny",
        ),
        EventSpec(
            type="system.welcome",
            versions={1: events_pb2.Welcome},
            category=Category.SYSTEM,
            priority=Priority.CRITICAL,
            direction=Direction.SERVER_TO_CLIENT,
            delivery=Delivery.UNRELIABLE,
        ),
        EventSpec(type="game.pick", versions={1: _oneof_message()}, owner="tiny"),
    ]
    registry = EventRegistry()
    registry.register(*(reversed(specs) if reverse else specs))
    return registry


def test_render_a_tiny_registry():
    text = catalog.render(_tiny_registry(), {"tiny": "0.3", "idle": "1.0"})
    lines = text.splitlines()

    # Grouped by category in the Category enum's order, types sorted within a group.
    headings = [line for line in lines if line.startswith("## ") or line.startswith("### ")]
    assert headings[:7] == [
        "## Plugins",
        "## Summary",
        "## system",
        "### system.welcome",
        "## game",
        "### game.hello",
        "### game.pick",
    ]
    assert "| tiny | 0.3 | `game.hello`, `game.pick` |" in lines
    assert not any(line.startswith("| idle") for line in lines)  # no events, not listed
    assert "| [`game.hello`](#gamehello) | game | tiny | client-to-server | reliable | high |" in (
        lines
    )
    # The spec's own table: owner, versions, category, priority, direction, delivery, rate.
    assert "A | pipe in the description." in lines  # a paragraph: nothing to escape
    assert "| tiny | 1, 2 | game | high | client-to-server | reliable | 2.5/s, burst 3 |" in lines
    assert "| core | 1 | system | critical | server-to-client | unreliable | none |" in lines
    # Each version's message, field by field, with types, labels and numbers.
    assert "**v1**: `rtgateway.v1.Ping`" in lines
    assert "**v2**: `rtgateway.v1.Hello`" in lines
    assert "| 1 | `nonce` | `uint64` | |" in lines
    assert (
        "| 3 | `versions` | `map<string, rtgateway.v1.VersionList>` "
        "(see [`rtgateway.v1.VersionList`](#rtgatewayv1versionlist)) | map |"
    ) in lines
    assert (
        "| 4 | `compression` | [`enum rtgateway.v1.Compression`](#rtgatewayv1compression) "
        "| repeated |"
    ) in lines
    assert "| 10 | `limits` | [`rtgateway.v1.Limits`](#rtgatewayv1limits) | |" in lines
    assert "| 9 | `versions` | `map<string, uint32>` | map |" in lines
    assert "| 1 | `left` | `string` | oneof choice |" in lines
    assert "| 3 | `note` | `string` | optional |" in lines
    # Nested messages and enums once each, in their own sections; map entries never.
    messages = lines[lines.index("## Messages") : lines.index("## Enums")]
    assert [line for line in messages if line.startswith("### ")] == [
        "### rtgateway.v1.Limits",
        "### rtgateway.v1.VersionList",
    ]
    assert "VersionsEntry" not in text
    assert text.count("### rtgateway.v1.Compression") == 1
    assert "| `COMPRESSION_LZ4` | 2 |" in lines
    # Deterministic: the same text whatever the registration order; no timestamps.
    assert catalog.render(_tiny_registry(reverse=True), {"tiny": "0.3", "idle": "1.0"}) == text
    assert text.endswith("|\n") and not text.endswith("\n\n")


def test_build_registry_is_the_daemons():
    registry = catalog.build_registry()
    assert registry["system.hello"].owner == "core"
    assert registry["social.chat.send"].owner == "chat"  # owner filled in as load_plugins does
    assert registry["social.chat.send"].rate_limit == (2.0, 5)  # ChatConfig defaults


def test_main_output_and_check(tmp_path, capsys):
    out = tmp_path / "catalog.md"
    assert catalog.main(["--output", str(out)]) == 0
    assert catalog.main(["--check", str(out)]) == 0
    out.write_text(out.read_text().replace("### system.hello", "### system.hallo"))
    assert catalog.main(["--check", str(out)]) == 1
    err = capsys.readouterr().err
    assert "-### system.hallo" in err and "+### system.hello" in err
    assert "run: rtgateway-catalog --output docs/EventCatalog.md" in err
    assert catalog.main(["--check", str(tmp_path / "missing.md")]) == 1
    assert catalog.main(["--output", str(out), "--check", str(out)]) == 2  # one or the other


def test_main_prints_to_stdout(capsys):
    assert catalog.main([]) == 0
    assert capsys.readouterr().out.startswith("# Event catalog\n")


def test_config_adds_a_deployments_dropins_and_options(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # plugins.paths in the example config is relative to the checkout
    config = tmp_path / "rtgateway.toml"
    config.write_text(
        (ROOT / "examples/CustomEvents/rtgateway.toml")
        .read_text()
        .replace("cooldown = 1.0", "cooldown = 4.0")
    )
    assert catalog.main(["--config", str(config)]) == 0
    text = capsys.readouterr().out
    assert "### game.emote.request" in text
    assert "| emotes | 1 | game | normal | client-to-server | reliable | 0.25/s, burst 2 |" in text
    assert "emotes" not in {p.name for p in discover()}  # the dropin directory did not stick


def test_config_errors_exit_2(tmp_path, capsys):
    config = tmp_path / "rtgateway.toml"
    config.write_text("[plugin.chat]\nmax_length = 'long'\n")
    assert catalog.main(["--config", str(config)]) == 2
    assert "plugin.chat.max_length: must be an integer" in capsys.readouterr().err
    config.write_text("[plugin.nosuch]\nx = 1\n")
    assert catalog.main(["--config", str(config)]) == 2
    assert "plugin.nosuch: no installed plugin has this name" in capsys.readouterr().err
