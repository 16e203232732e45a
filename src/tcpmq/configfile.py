"""The server's settings from a TOML file, the environment and the command line.

Every field of `ServerConfig` is a setting, found with `dataclasses.fields`,
so a field added there is settable everywhere with no change here. A field
whose type is a dataclass (`limits`, `storage`, `tls`, `log`) is a section of
its own, `[limits]`, ...; the others are in `[server]`. A setting's
environment variable is `TCPMQ_<NAME>` in `[server]` (`TCPMQ_DATA_DIR`,
`TCPMQ_PORT`) and `TCPMQ_<SECTION>_<NAME>` elsewhere (`TCPMQ_LIMITS_MAX_BATCH`,
`TCPMQ_LOG_LEVEL`): unique whatever the sections hold, and apart from the
client's `TCPMQ_CERT`, `TCPMQ_KEY`, ...

Precedence, lowest first: the defaults, the file, the environment, the
flags (`resolve`). Every bad value (an unknown section or key, a wrong
type, a value out of range) is a `ConfigError` naming where it came from: the
file and key, the variable, or the flag.

I/O: this module reads the config file, nothing else (a password file or a
TLS key is read by the server when it starts).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ConfigError, ServerConfig

#: The section of ServerConfig's own (not nested) fields.
SERVER = "server"
ENV_PREFIX = "TCPMQ_"
#: Printed instead of a secret's value.
HIDDEN = "(hidden)"
# A setting is a secret when its metadata says so or its name ends in one of
# these words; a *_file setting is the path to a secret, which may be shown.
_SECRET_WORDS = ("password", "secret", "token")


@dataclass(frozen=True)
class Setting:
    """One settable field: `[section] name`."""

    section: str
    name: str
    #: The field's type, resolved (`int`, `Path | None`, `tuple[str, int] | None`, ...).
    kind: Any
    required: bool
    secret: bool

    @property
    def env(self) -> str:
        prefix = "" if self.section == SERVER else f"{self.section}_"
        return f"{ENV_PREFIX}{prefix}{self.name}".upper()

    @property
    def dest(self) -> str:
        """Its `tcpmq serve` flag's argparse dest (a setting need not have a flag)."""
        return self.name if self.section == SERVER else f"{self.section}_{self.name}"


#: (section, name) -> (value, where it came from): one source of settings.
Layer = dict[tuple[str, str], tuple[object, str]]


def _optional(kind: Any) -> tuple[Any, bool]:
    """`X | None` -> (X, True); anything else -> (it, False)."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        rest = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        if len(rest) == 1:
            return rest[0], True
    return kind, False


def _fields(cls: type, section: str) -> list[Setting]:
    hints = typing.get_type_hints(cls)
    found = []
    for spec in dataclasses.fields(cls):
        required = (
            spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
        )
        secret = bool(spec.metadata.get("secret")) or spec.name.endswith(_SECRET_WORDS)
        found.append(Setting(section, spec.name, hints[spec.name], required, secret))
    return found


@functools.cache
def sections() -> dict[str, type]:
    """Section name -> its dataclass: `server` first, then one per nested dataclass field."""
    found: dict[str, type] = {SERVER: ServerConfig}
    for name, kind in typing.get_type_hints(ServerConfig).items():
        inner, _ = _optional(kind)
        if dataclasses.is_dataclass(inner) and isinstance(inner, type):
            found[name] = inner
    return found


@functools.cache
def settings() -> tuple[Setting, ...]:
    """Every setting, section by section, in the dataclasses' order."""
    nested = sections()
    found = [s for s in _fields(ServerConfig, SERVER) if s.name not in nested]
    for section, cls in nested.items():
        if section != SERVER:
            found += _fields(cls, section)
    return tuple(found)


# -- sources ---------------------------------------------------------------------


def read_file(path: Path) -> Layer:
    """The settings of the TOML file at `path`.

    Raises:
        ConfigError: unreadable, not TOML, or an unknown section or key, or a
            value of the wrong type.
    """
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    known = _by_section()
    layer: Layer = {}
    for section, table in document.items():
        if section not in known:
            raise ConfigError(
                f"{path}: [{section}]: unknown section{_suggest(section, known)} "
                f"(the sections: {', '.join(known)})"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {section} must be a section, [{section}]")
        for name, value in table.items():
            setting = known[section].get(name)
            if setting is None:
                raise ConfigError(
                    f"{path}: [{section}] {name}: unknown setting{_suggest(name, known[section])}"
                )
            origin = f"{path}: [{section}] {name}"
            layer[section, name] = (_convert(value, setting.kind, origin, text=False), origin)
    return layer


def from_environment(environ: Mapping[str, str]) -> Layer:
    """The settings given by `TCPMQ_*` variables (others, the client's, are not read here)."""
    layer: Layer = {}
    for setting in settings():
        text = environ.get(setting.env)
        if text is not None:
            value = _convert(text, setting.kind, setting.env, text=True)
            layer[setting.section, setting.name] = (value, setting.env)
    return layer


def from_flags(values: Mapping[str, object], flag_names: Mapping[str, str]) -> Layer:
    """The settings given as flags: `values` by argparse dest (None: not given).

    Flags are typed by argparse already; `flag_names` names each dest's flag
    for messages (else `--dest-with-dashes`).
    """
    layer: Layer = {}
    for setting in settings():
        value = values.get(setting.dest)
        if value is not None:
            origin = flag_names.get(setting.dest, "--" + setting.dest.replace("_", "-"))
            value = _convert(value, setting.kind, origin, text=False)
            layer[setting.section, setting.name] = (value, origin)
    return layer


# -- the result ------------------------------------------------------------------


def resolve(*layers: Layer) -> ServerConfig:
    """The `ServerConfig` of `layers`, later ones overriding earlier ones, over the defaults.

    Raises:
        ConfigError: a value out of range, or a section missing a setting it needs.
    """
    merged: Layer = {}
    for layer in layers:
        merged.update(layer)
    by_section = _by_section()
    top: dict[str, object] = {}
    for section, cls in sections().items():
        given = {name: value for (s, name), (value, _) in merged.items() if s == section}
        if section == SERVER:
            top.update(given)
            continue
        if not given and _optional(typing.get_type_hints(ServerConfig)[section])[1]:
            continue  # an optional section left out: None (TLS off)
        needed = [s.name for s in by_section[section].values() if s.required]
        missing = [name for name in needed if name not in given]
        if missing:
            origins = ", ".join(origin for (s, _), (_, origin) in merged.items() if s == section)
            raise ConfigError(
                f"[{section}] {' and '.join(missing)} not set: {' and '.join(needed)} go "
                f"together (given: {origins})"
            )
        top[section] = _build(cls, given, section, merged)
    config: ServerConfig = _build(ServerConfig, top, SERVER, merged)
    return config


def load(path: Path | None, environ: Mapping[str, str], flags: Layer | None = None) -> ServerConfig:
    """Defaults < the file at `path` (if any) < `environ`'s TCPMQ_* < `flags`."""
    layers = [read_file(path)] if path is not None else []
    return resolve(*layers, from_environment(environ), flags or {})


def as_toml(config: ServerConfig) -> str:
    """`config` as a TOML file that `read_file` accepts; secrets hidden, unset ones commented."""
    lines: list[str] = []
    for section in sections():
        holder = value_of(config, section)
        lines += ["", f"[{section}]" if holder is not None else f"# [{section}] is not set"]
        for setting in settings():
            if setting.section != section:
                continue
            value = None if holder is None else getattr(holder, setting.name)
            if value is None:
                lines.append(f"# {setting.name} =")
            else:
                shown = HIDDEN if setting.secret else value
                lines.append(f"{setting.name} = {_toml_value(shown)}")
    return "\n".join(lines[1:]) + "\n"


def value_of(config: ServerConfig, section: str) -> Any:
    """The object holding `section`'s settings in `config` (None for an unset optional one)."""
    return config if section == SERVER else getattr(config, section)


def flatten(config: ServerConfig) -> dict[tuple[str, str], object]:
    """Every setting's value in `config`, by (section, name); an unset section's are None."""
    values: dict[tuple[str, str], object] = {}
    for setting in settings():
        holder = value_of(config, setting.section)
        values[setting.section, setting.name] = (
            None if holder is None else getattr(holder, setting.name)
        )
    return values


# -- helpers ---------------------------------------------------------------------


def _by_section() -> dict[str, dict[str, Setting]]:
    known: dict[str, dict[str, Setting]] = {section: {} for section in sections()}
    for setting in settings():
        known[setting.section][setting.name] = setting
    return known


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _build(cls: type, values: dict[str, object], section: str, merged: Layer) -> Any:
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        raise ConfigError(_blame(str(exc), section, merged)) from None


def _blame(message: str, section: str, merged: Layer) -> str:
    """`message` (a dataclass's refusal) prefixed with where the value it names came from."""
    named = [
        (message.find(name), name, origin)
        for (s, name), (_, origin) in merged.items()
        if s == section and name in message
    ]
    if not named:
        return f"[{section}] {message}"
    _, name, origin = min(named)
    if message.startswith(name + " "):
        return f"{origin} {message[len(name) + 1 :]}"
    return f"{origin}: {message}"


def _convert(value: object, kind: Any, origin: str, *, text: bool) -> object:
    """`value` (from TOML, or an environment variable's text) as a value of type `kind`."""
    kind, _ = _optional(kind)
    try:
        return _as(value, kind, text)
    except (TypeError, ValueError):
        shown = repr(value) if isinstance(value, str) else _toml_value(value)
        raise ConfigError(f"{origin}: expected {_describe(kind)}, not {shown}") from None


def _as(value: object, kind: Any, text: bool) -> object:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if text and isinstance(value, str) and value.lower() in _BOOLS:
            return _BOOLS[value.lower()]
        raise TypeError
    if isinstance(value, bool):
        raise TypeError  # True is an int to Python, never to a setting
    if kind is int:
        if isinstance(value, int):
            return value
        if text and isinstance(value, str):
            return int(value)
        raise TypeError
    if kind is float:
        if isinstance(value, int | float):
            return float(value)
        if text and isinstance(value, str):
            return float(value)
        raise TypeError
    if kind is str:
        if isinstance(value, str):
            return value
        raise TypeError
    if kind is Path:
        if isinstance(value, Path):
            return value
        if isinstance(value, str) and value:
            return Path(value)
        raise TypeError
    if typing.get_origin(kind) is tuple:
        return _as_tuple(value, typing.get_args(kind), text)
    raise TypeError(f"settings of type {kind} cannot be read")


def _as_tuple(value: object, parts: tuple[Any, ...], text: bool) -> tuple[object, ...]:
    if isinstance(value, tuple):
        value = list(value)
    if parts == (str, int) and isinstance(value, str):
        return parse_address(value)
    if isinstance(value, list) and len(value) == len(parts):
        return tuple(_as(item, part, text) for item, part in zip(value, parts, strict=True))
    raise TypeError


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:7878` for IPv6) as (host, port)."""
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT, not {text!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


_BOOLS = {"true": True, "yes": True, "on": True, "1": True}
_BOOLS |= {"false": False, "no": False, "off": False, "0": False}


def _describe(kind: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if kind in names:
        return names[kind]
    if kind is Path:
        return "a path (a non-empty string)"
    if typing.get_origin(kind) is tuple and typing.get_args(kind) == (str, int):
        return 'an address "HOST:PORT"'
    return str(kind)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int):
        host = f"[{value[0]}]" if ":" in str(value[0]) else str(value[0])
        return _toml_value(f"{host}:{value[1]}")
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    text = str(value)
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in escaped) + '"'
