"""The shipped configuration files agree with gateway/config.py.

conf/rtgateway.toml must load, and must document every option: adding a field
to a config section without documenting it fails here.  The systemd unit must
run twistd the way docs/Operations.md describes.  Config errors name the key.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest

from gateway import config
from gateway.config import Config, ConfigError, ShutdownConfig

ROOT = Path(__file__).resolve().parent.parent
TOML = ROOT / "conf" / "rtgateway.toml"
UNIT = ROOT / "conf" / "rtgateway.service"

# Options conf/rtgateway.toml intentionally sets to something other than the
# default, for production.  Every other option it sets must show the default.
PRODUCTION_VALUES = {
    "server.listen",
    "admin.token_env",
    "auth.algorithms",
    "auth.keys",
    "recording.directory",
}

# "[section]" or "[[section]]", commented out or not.
_HEADER = re.compile(r"^\s*#?\s*\[\[?\s*([A-Za-z0-9_.<>-]+)\s*\]\]?\s*$")
# "name =" at the start of a line, commented out or not.
_OPTION = re.compile(r"^\s*#?\s*([A-Za-z_][A-Za-z0-9_]*)\s*=")


@dataclasses.dataclass
class Documented:
    headers: dict[str, str]  # section -> comment block above its first header
    options: dict[tuple[str, str], str]  # (section, name) -> comment block above


def _comment_block(lines: list[str], index: int) -> str:
    """The comment lines directly above ``lines[index]`` (up to a blank line)."""
    block: list[str] = []
    i = index - 1
    while i >= 0:
        line = lines[i].strip()
        if not line.startswith("#") or _OPTION.match(line) or _HEADER.match(line):
            break
        block.append(line.lstrip("#").strip())
        i -= 1
    return " ".join(reversed(block))


def _documented(text: str) -> Documented:
    lines = text.splitlines()
    section = ""
    headers: dict[str, str] = {}
    options: dict[tuple[str, str], str] = {}
    for index, line in enumerate(lines):
        header = _HEADER.match(line)
        if header:
            section = header.group(1)
            headers.setdefault(section, _comment_block(lines, index))
            continue
        option = _OPTION.match(line)
        if option and section:
            options.setdefault((section, option.group(1)), _comment_block(lines, index))
    return Documented(headers, options)


def _sections() -> list[tuple[str, type]]:
    """(name, dataclass) of every [section] of Config; [plugin.*] excluded."""
    hints = typing.get_type_hints(Config)
    return [
        (f.name, hints[f.name])
        for f in dataclasses.fields(Config)
        if dataclasses.is_dataclass(hints[f.name])
    ]


def _table_array_item(tp: typing.Any) -> type | None:
    """KeyConfig for ``tuple[KeyConfig, ...]``: options written as [[section.name]]."""
    if typing.get_origin(tp) is tuple:
        item = typing.get_args(tp)[0]
        if dataclasses.is_dataclass(item):
            return typing.cast(type, item)
    return None


def _all_options() -> list[tuple[str, str]]:
    """(section, name) of every documented option, [[auth.keys]] fields included."""
    out: list[tuple[str, str]] = []
    for section, cls in _sections():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            item = _table_array_item(hints[f.name])
            if item is None:
                out.append((section, f.name))
            else:
                out.extend((f"{section}.{f.name}", sub.name) for sub in dataclasses.fields(item))
    return out


# --------------------------------------------------------------------------- rtgateway.toml


def test_example_config_loads() -> None:
    cfg = config.load(TOML)
    assert not cfg.dev_mode
    assert cfg.server.listen == "tcp:8080:interface=0.0.0.0"
    [key] = cfg.auth.keys
    assert key.algorithm == "HS256"
    assert key.secret_env == "RTGATEWAY_JWT_SECRET"


def test_every_option_is_documented_under_its_section() -> None:
    doc = _documented(TOML.read_text(encoding="utf-8"))
    missing = [f"{s}.{n}" for s, n in _all_options() if (s, n) not in doc.options]
    assert not missing, f"options not documented in conf/rtgateway.toml: {missing}"


def test_every_section_has_a_header() -> None:
    doc = _documented(TOML.read_text(encoding="utf-8"))
    sections = {s for s, _ in _all_options()}
    assert not sections - doc.headers.keys()
    assert any(h.startswith("plugin.") for h in doc.headers), "no [plugin.<name>] example"


def test_every_option_states_its_default() -> None:
    doc = _documented(TOML.read_text(encoding="utf-8"))
    undocumented = [
        f"{s}.{n}" for s, n in _all_options() if "default:" not in doc.options[s, n].lower()
    ]
    assert not undocumented, f"comment does not state the default: {undocumented}"
    for section, cls in _sections():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if _table_array_item(hints[f.name]) is not None:
                assert "default:" in doc.headers[f"{section}.{f.name}"].lower()


def test_shown_values_are_the_defaults_except_production_ones() -> None:
    """A default changed in config.py must be changed in the example too."""
    loaded = config.load(TOML)
    defaults = Config()
    differs = set()
    for section, cls in _sections():
        for f in dataclasses.fields(cls):
            shown = getattr(getattr(loaded, section), f.name)
            if shown != getattr(getattr(defaults, section), f.name):
                differs.add(f"{section}.{f.name}")
    assert differs == PRODUCTION_VALUES


# --------------------------------------------------------------------------- systemd unit


def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        name, _, value = line.partition("=")
        settings.setdefault(name.strip(), []).append(value.strip())
    return settings


def test_systemd_unit() -> None:
    unit = _unit_settings()
    [exec_start] = unit["ExecStart"]
    assert "--nodaemon" in exec_start.split()
    assert "--pidfile=" in exec_start.split()
    assert "rtgateway --config" in exec_start
    assert exec_start.index("--nodaemon") < exec_start.index(" rtgateway ")
    assert unit["User"] == ["rtgateway"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["NoNewPrivileges"] == ["yes"]
    assert unit["Type"] == ["simple"]
    assert unit["KillSignal"] == ["SIGTERM"]
    [timeout] = unit["TimeoutStopSec"]
    assert float(timeout) > ShutdownConfig().grace_seconds + 5


# --------------------------------------------------------------------------- errors name the key


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[limits]\nbogus = 1\n", "limits.bogus"),
        ('[limits]\nmax_message_size = "x"\n', "limits.max_message_size"),
        ("[tick]\nnormal_hz = 7\n", "tick.normal_hz"),
        ('[server]\nlisten = "tcp:8080:interface=0.0.0.0"\n', "auth.keys"),
        ("[bogus]\nx = 1\n", "bogus"),
    ],
)
def test_config_error_names_the_key(tmp_path: Path, toml: str, key: str) -> None:
    path = tmp_path / "rtgateway.toml"
    path.write_text(toml, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: ")


def test_overrides() -> None:
    # max_frame_size must not exceed max_message_size, so both are lowered.
    cfg = config.load(
        None,
        {
            "limits.max_message_size": "2048",
            "limits.max_frame_size": "2048",
            "server.listen": "tcp:9000:interface=127.0.0.1",  # not TOML: a string
            "compression.algorithms": '["zlib"]',
        },
    )
    assert cfg.limits.max_message_size == 2048
    assert cfg.limits.max_frame_size == 2048
    assert cfg.server.listen == "tcp:9000:interface=127.0.0.1"
    assert cfg.compression.algorithms == ("zlib",)


def test_override_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "rtgateway.toml"
    path.write_text("[limits]\nmax_connections = 5\n", encoding="utf-8")
    assert config.load(path).limits.max_connections == 5
    assert config.load(path, {"limits.max_connections": "7"}).limits.max_connections == 7


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"limits.max_message_size": "512"}, "limits.max_message_size"),
        ({"limits.bogus": "1"}, "limits.bogus"),
        ({"heartbeat.interval": "fast"}, "heartbeat.interval"),
    ],
)
def test_override_error_names_the_key(overrides: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(None, overrides)
    assert info.value.key == key


def test_string_override_keeps_text_that_looks_like_a_number() -> None:
    # --set server.instance_id=42 means the string "42", not a type error.
    assert config.load(None, {"server.instance_id": "42"}).server.instance_id == "42"
