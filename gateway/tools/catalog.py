"""``rtgateway-catalog``: the event catalog, generated from the event registry.

The registry is built exactly as the daemon builds it: the system events,
then every discovered plugin (``instance()``, ``configure()``,
``event_specs()``) in dependency order.  The Markdown lists, per event type,
its owner, versions, category, default priority, direction, delivery class,
per-type rate limit, description and the fields of each version's message,
read from the protobuf descriptors; messages and enums used by those fields
are listed once at the end.  The output is deterministic (sorted, no
timestamps), so the committed ``docs/EventCatalog.md`` can be checked in CI::

    rtgateway-catalog --output docs/EventCatalog.md   # regenerate
    rtgateway-catalog --check docs/EventCatalog.md    # exit 1 with a diff when stale

``--config`` adds a deployment's ``plugins.paths`` and ``[plugin.<name>]``
options (rate limits often come from them), so a game can generate the
catalog of its own events the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.descriptor import (  # type: ignore[import-untyped,unused-ignore]
    Descriptor,
    EnumDescriptor,
    FieldDescriptor,
)

from gateway.config import Config, ConfigError, load, parse_section
from gateway.events import Category, EventRegistry, EventSpec
from gateway.plugin import PluginError, discover, order
from gateway.system_events import register as register_system_events

__all__ = ["Catalog", "build", "build_registry", "main", "render"]

PROG = "rtgateway-catalog"
EXIT_STALE = 1
EXIT_ERROR = 2
REGENERATE = "rtgateway-catalog --output docs/EventCatalog.md"

_SCALARS = {
    FieldDescriptor.TYPE_DOUBLE: "double",
    FieldDescriptor.TYPE_FLOAT: "float",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_FIXED64: "fixed64",
    FieldDescriptor.TYPE_FIXED32: "fixed32",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_SFIXED32: "sfixed32",
    FieldDescriptor.TYPE_SFIXED64: "sfixed64",
    FieldDescriptor.TYPE_SINT32: "sint32",
    FieldDescriptor.TYPE_SINT64: "sint64",
}


@dataclass
class Catalog:
    """A built registry plus the versions of the plugins that filled it."""

    registry: EventRegistry
    plugins: dict[str, str] = field(default_factory=dict)  # name -> version


def build(config: Config | None = None) -> Catalog:
    """The registry a daemon started with ``config`` would have (None: built-ins only)."""
    registry = EventRegistry()
    register_system_events(registry)
    paths = config.plugins.paths if config is not None else ()
    disabled = config.plugins.disabled if config is not None else ()
    found = [p.instance() if hasattr(p, "instance") else p for p in discover(paths)]
    names = {p.name for p in found}
    for table_name in config.plugin if config is not None else ():
        if table_name not in names:
            raise ConfigError(f"plugin.{table_name}", "no installed plugin has this name")
    versions: dict[str, str] = {}
    for plugin in order(found, disabled):
        table = config.plugin.get(plugin.name) if config is not None else None
        plugin.configure(_plugin_config(plugin, table))
        for s in plugin.event_specs():
            owned = s if s.owner != "core" else dataclasses.replace(s, owner=plugin.name)
            registry.register(owned)
        versions[plugin.name] = str(getattr(plugin, "version", ""))
    return Catalog(registry, versions)


def build_registry(config: Config | None = None) -> EventRegistry:
    """The event registry of a daemon started with ``config`` (None: built-ins only)."""
    return build(config).registry


def _plugin_config(plugin: Any, table: Mapping[str, Any] | None) -> Any:
    """Parse ``[plugin.<name>]`` as load_plugins does (no table: the dataclass defaults)."""
    cls = getattr(plugin, "config_class", None)
    if cls is None:
        if table:
            raise ConfigError(f"plugin.{plugin.name}", "this plugin takes no options")
        return None
    return parse_section(f"plugin.{plugin.name}", cls, table or {})


# --------------------------------------------------------------------------- rendering


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.lower())
    return text.replace(" ", "-")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip()


def _number(value: float) -> str:
    return f"{value:g}"


def _descriptor(message_class: Any) -> Descriptor:
    descriptor: Descriptor = message_class.DESCRIPTOR
    return descriptor


def _rate(s: EventSpec) -> str:
    if s.rate_limit is None:
        return "none"
    per_second, burst = s.rate_limit
    return f"{_number(per_second)}/s, burst {burst}"


def _map_entry(f: FieldDescriptor) -> Descriptor | None:
    """The synthetic ``...Entry`` message of a map field, or None for other fields."""
    entry = f.message_type
    if entry is not None and entry.GetOptions().map_entry:
        return entry
    return None


def _is_map(f: FieldDescriptor) -> bool:
    return _map_entry(f) is not None


def _type_name(f: FieldDescriptor) -> str:
    entry = _map_entry(f)
    if entry is not None:
        key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
        return f"map<{_type_name(key)}, {_type_name(value)}>"
    if f.enum_type is not None:
        return f"enum {f.enum_type.full_name}"
    if f.message_type is not None:
        return str(f.message_type.full_name)
    return _SCALARS.get(f.type, f"type {f.type}")


def _label(f: FieldDescriptor) -> str:
    if _is_map(f):
        return "map"
    if f.is_repeated:
        return "repeated"
    oneof = f.containing_oneof
    if oneof is not None:
        if oneof.name == f"_{f.name}" and len(oneof.fields) == 1:
            return "optional"  # proto3 `optional`: a synthetic one-field oneof
        return f"oneof {oneof.name}"
    return ""


def _referenced(f: FieldDescriptor) -> Iterable[Descriptor | EnumDescriptor]:
    """Message and enum types a field uses (a map's entry itself is not listed)."""
    entry = _map_entry(f)
    if entry is not None:
        for inner in entry.fields:
            yield from _referenced(inner)
    elif f.message_type is not None:
        yield f.message_type
    elif f.enum_type is not None:
        yield f.enum_type


def _row(*cells: str) -> str:
    return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"


def _field_table(message: Descriptor) -> list[str]:
    fields = sorted(message.fields, key=lambda f: f.number)
    if not fields:
        return ["(no fields)", ""]
    lines = ["| # | Field | Type | Label |", "|--:|---|---|---|"]
    for f in fields:
        shown = f"`{_type_name(f)}`"
        named = list(_referenced(f))
        if named and not _is_map(f):
            shown = f"[{shown}](#{_slug(named[0].full_name)})"
        elif named:  # a map whose values are messages or enums
            links = ", ".join(f"[`{n.full_name}`](#{_slug(n.full_name)})" for n in named)
            shown += f" (see {links})"
        lines.append(_row(str(f.number), f"`{f.name}`", shown, _label(f)))
    lines.append("")
    return lines


def _collect(
    roots: Iterable[Descriptor],
) -> tuple[dict[str, Descriptor], dict[str, EnumDescriptor]]:
    """Every message and enum reachable from ``roots`` through fields, by full name."""
    messages: dict[str, Descriptor] = {}
    enums: dict[str, EnumDescriptor] = {}
    todo = list(roots)
    seen: set[str] = set()
    while todo:
        message = todo.pop()
        if message.full_name in seen:
            continue
        seen.add(message.full_name)
        for f in message.fields:
            for used in _referenced(f):
                if isinstance(used, Descriptor):
                    messages.setdefault(used.full_name, used)
                    todo.append(used)
                else:
                    enums.setdefault(used.full_name, used)
    return messages, enums


def _by_category(registry: EventRegistry) -> list[tuple[Category, list[EventSpec]]]:
    groups: list[tuple[Category, list[EventSpec]]] = []
    for category in Category:
        specs = sorted((s for s in registry if s.category is category), key=lambda s: s.type)
        if specs:
            groups.append((category, specs))
    return groups


def render(registry: EventRegistry, plugins: Mapping[str, str] | None = None) -> str:
    """The catalog as Markdown.  ``plugins``: name -> version, for the plugin table."""
    groups = _by_category(registry)
    out: list[str] = [
        "# Event catalog",
        "",
        "<!-- Generated by rtgateway-catalog from the event registry: do not edit by hand. -->",
        f"<!-- Regenerate: {REGENERATE} -->",
        "",
        "Every event type in the gateway's event registry: the system events, then each loaded",
        "plugin's `event_specs()`. A game's own plugins add theirs the same way, and",
        "`rtgateway-catalog --config rtgateway.toml` includes them.",
        "",
        "- **Direction**: who may send it. A client sending a `server-to-client` type gets",
        "  `system.error` code 3.",
        "- **Delivery**: `reliable` events are sequenced, kept until acknowledged and replayed",
        "  after a resume; `unreliable` ones may be dropped or superseded by a newer one.",
        "- **Priority**: the default outbound priority (`critical` > `high` > `normal` > `low`).",
        "- **Rate limit**: the per-connection limit for this type, on top of the connection-wide",
        "  `limits.messages_per_second`; over it, the event is dropped with `system.error` code 7.",
        "- **Versions**: a client offers the versions it speaks in `system.hello`; the gateway",
        "  converts between versions, and handlers always see the newest.",
        "",
    ]
    if plugins:
        out += ["## Plugins", "", "| Plugin | Version | Event types |", "|---|---|---|"]
        for name in sorted(plugins):
            types = ", ".join(f"`{s.type}`" for s in registry if s.owner == name)
            if types:  # a plugin without events of its own is not part of this catalog
                out.append(f"| {name} | {_cell(plugins[name]) or '-'} | {types} |")
        out.append("")
    out += [
        "## Summary",
        "",
        "| Type | Category | Owner | Direction | Delivery | Priority |",
        "|---|---|---|---|---|---|",
    ]
    for category, specs in groups:
        for s in specs:
            out.append(
                f"| [`{s.type}`](#{_slug(s.type)}) | {category.value} | {s.owner} "
                f"| {s.direction.value} | {s.delivery.value} | {s.priority.name.lower()} |"
            )
    out.append("")
    payloads: list[Descriptor] = []
    for category, specs in groups:
        out += [f"## {category.value}", ""]
        for s in specs:
            out += _render_spec(s)
            payloads += [_descriptor(s.versions[v]) for v in sorted(s.versions)]
    messages, enums = _collect(payloads)
    if messages:
        out += ["## Messages", "", "Message types used by the fields above.", ""]
        for name in sorted(messages):
            out += [f"### {name}", ""]
            out += _field_table(messages[name])
    if enums:
        out += ["## Enums", ""]
        for name in sorted(enums):
            out += [f"### {name}", "", "| Value | Number |", "|---|--:|"]
            for value in sorted(enums[name].values, key=lambda v: (v.number, v.name)):
                out.append(f"| `{value.name}` | {value.number} |")
            out.append("")
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n"


def _render_spec(s: EventSpec) -> list[str]:
    versions = ", ".join(str(v) for v in sorted(s.versions))
    out = [f"### {s.type}", ""]
    if s.description:
        out += [s.description, ""]
    out += [
        "| Owner | Versions | Category | Priority | Direction | Delivery | Rate limit |",
        "|---|---|---|---|---|---|---|",
        f"| {s.owner} | {versions} | {s.category.value} | {s.priority.name.lower()} "
        f"| {s.direction.value} | {s.delivery.value} | {_rate(s)} |",
        "",
    ]
    for v in sorted(s.versions):
        descriptor = _descriptor(s.versions[v])
        out += [f"**v{v}**: `{descriptor.full_name}`", ""]
        out += _field_table(descriptor)
    return out


# --------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Generate the Markdown catalog of every event type the gateway registers.",
        epilog=f"The committed catalog is regenerated with: {REGENERATE}",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="include this deployment's plugins.paths and [plugin.<name>] options",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--output", metavar="PATH", help="write the catalog to PATH")
    where.add_argument(
        "--check",
        metavar="PATH",
        help="exit 1 with a diff when PATH differs from the generated catalog",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``rtgateway-catalog``; returns the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    try:
        config = load(args.config) if args.config else None
        catalog = build(config)
    except (ConfigError, PluginError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    text = render(catalog.registry, catalog.plugins)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8", newline="\n")
        return 0
    if args.check:
        return _check(Path(args.check), text)
    sys.stdout.write(text)
    return 0


def _check(path: Path, text: str) -> int:
    try:
        current = path.read_text(encoding="utf-8")
    except OSError as exc:
        print(f"{PROG}: {path}: cannot read ({exc.strerror}); run: {REGENERATE}", file=sys.stderr)
        return EXIT_STALE
    if current == text:
        return 0
    diff = difflib.unified_diff(
        current.splitlines(keepends=True),
        text.splitlines(keepends=True),
        fromfile=f"{path} (committed)",
        tofile=f"{path} (generated)",
    )
    sys.stderr.writelines(diff)
    print(f"{PROG}: {path} is out of date; run: {REGENERATE}", file=sys.stderr)
    return EXIT_STALE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
