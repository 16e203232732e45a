"""The config file, the environment and the flags (configfile.py), and `tcpmq config check`."""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from pathlib import Path

import pytest

from processes import run_cli
from tcpmq import configfile
from tcpmq.config import ConfigError, Limits, ServerConfig
from tcpmq.configfile import from_environment, from_flags, load, read_file, resolve, settings
from tcpmq.reload import LIVE_LIMITS, plan

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "systemd" / "tcpmq.toml"


def toml_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tcpmq.toml"
    path.write_text(text)
    return path


def changed(value: object) -> object:
    """A valid value other than `value`, for any setting's default."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value * 2 + 1
    return value  # strings are choices: the default is the one sure to be valid


def test_every_field_of_every_section_is_settable_in_the_file(tmp_path: Path) -> None:
    # Generic: a field added to ServerConfig or one of its sections is covered
    # here without a change, and must be settable without one in configfile.py.
    tls = {"cert_file": "/c.pem", "key_file": "/k.pem", "client_ca_file": "/ca.pem"}
    server = {
        "plain_listen": "127.0.0.1:7879",
        "admin_password_file": "/run/pw",
        "metrics_listen": "127.0.0.1:9878",
        "metrics_token_file": "/run/metrics-token",
        "default_channel_access": "public",
        # A node of a shared store: the one store a secret file is for.
        "store": "redis://127.0.0.1:6379/0?prefix=t:",
        "secret_file": "/run/secret",
    }
    lines, expected = [], {}
    defaults = configfile.flatten(ServerConfig())
    for setting in settings():
        key = (setting.section, setting.name)
        if setting.section == "tls":
            value: object = tls[setting.name]
        elif setting.name in server:
            value = server[setting.name]
        elif isinstance(defaults[key], Path):
            value = f"/tmp/{setting.name}"
        else:
            value = changed(defaults[key])
        lines.append(f"[{setting.section}]\n{setting.name} = {configfile._toml_value(value)}")
        expected[key] = value
    config = resolve(read_file(toml_file(tmp_path, "\n".join(_merge_sections(lines)))))
    for key, value in configfile.flatten(config).items():
        if isinstance(value, Path):
            value = str(value)
        if isinstance(value, tuple):
            value = "{}:{}".format(*value)
        assert value == expected[key], key


def _merge_sections(lines: list[str]) -> list[str]:
    """`[a]\\nk = v` pieces, one header per section (TOML refuses a table defined twice)."""
    by_section: dict[str, list[str]] = {}
    for piece in lines:
        header, body = piece.split("\n", 1)
        by_section.setdefault(header, []).append(body)
    return [f"{header}\n" + "\n".join(bodies) for header, bodies in by_section.items()]


def test_sections_are_found_from_the_dataclasses() -> None:
    hints = typing.get_type_hints(ServerConfig)
    nested = {name for name, kind in hints.items() if "Config" in str(kind) or kind is Limits}
    assert set(configfile.sections()) == {"server"} | nested
    assert {s.name for s in settings() if s.section == "limits"} == {
        f.name for f in dataclasses.fields(Limits)
    }


def test_environment_names_are_unique_and_not_the_clients() -> None:
    names = [setting.env for setting in settings()]
    assert len(names) == len(set(names))
    client = {"TCPMQ_URL", "TCPMQ_TOKEN", "TCPMQ_PASSWORD", "TCPMQ_CA", "TCPMQ_CERT", "TCPMQ_KEY"}
    assert not client & set(names)
    # Today's variable keeps working.
    assert "TCPMQ_DATA_DIR" in names


def test_precedence_defaults_file_environment_flags(tmp_path: Path) -> None:
    path = toml_file(tmp_path, "[limits]\nmax_batch = 10\nmax_channels = 20\nmax_wait = 30\n")
    environ = {"TCPMQ_LIMITS_MAX_CHANNELS": "21", "TCPMQ_LIMITS_MAX_WAIT": "31"}
    flags = from_flags({"limits_max_wait": 32.0, "host": None}, {})
    config = load(path, environ, flags)
    assert config.limits.max_batch == 10
    assert config.limits.max_channels == 21
    assert config.limits.max_wait == 32.0
    assert config.host == "127.0.0.1"
    assert config.limits.max_users == Limits().max_users


def test_environment_values_are_parsed_by_type() -> None:
    config = resolve(
        from_environment(
            {
                "TCPMQ_DATA_DIR": "/srv/tcpmq",
                "TCPMQ_ALLOW_PLAINTEXT": "yes",
                "TCPMQ_STORAGE_FSYNC_INTERVAL": "0.25",
                "TCPMQ_LOG_LEVEL": "debug",
            }
        )
    )
    assert config.data_dir == Path("/srv/tcpmq")
    assert config.allow_plaintext is True
    assert config.storage.fsync_interval == 0.25
    assert config.log.level == "debug"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[limits]\nmax_bacth = 5\n", "max_bacth: unknown setting (did you mean max_batch?)"),
        ("[limts]\nmax_batch = 5\n", "[limts]: unknown section (did you mean limits?)"),
        ('[limits]\nmax_batch = "5"\n', "[limits] max_batch: expected an integer, not '5'"),
        ("[limits]\nmax_batch = 5.5\n", "[limits] max_batch: expected an integer, not 5.5"),
        ("[server]\nallow_plaintext = 1\n", "[server] allow_plaintext: expected true or false"),
        ("[limits]\nmax_batch = -1\n", "[limits] max_batch must be positive, not -1"),
        ('[storage]\nfsync = "sometimes"\n', "[storage] fsync must be always, interval or never"),
        ('[server]\nplain_listen = "nowhere"\n', 'plain_listen: expected an address "HOST:PORT"'),
        ('[tls]\ncert_file = "/c.pem"\n', "key_file not set: cert_file and key_file go together"),
        ("limits = 3\n", "limits must be a section"),
        ("[limits\n", "not valid TOML"),
    ],
)
def test_bad_files_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = toml_file(tmp_path, text)
    with pytest.raises(ConfigError) as refused:
        load(path, {})
    assert str(refused.value).startswith(str(path)) or "go together" in message
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"TCPMQ_LIMITS_MAX_BATCH": "many"}, "TCPMQ_LIMITS_MAX_BATCH: expected an integer"),
        ({"TCPMQ_LIMITS_MAX_BATCH": "0"}, "TCPMQ_LIMITS_MAX_BATCH must be positive, not 0"),
        ({"TCPMQ_ALLOW_PLAINTEXT": "maybe"}, "TCPMQ_ALLOW_PLAINTEXT: expected true or false"),
    ],
)
def test_bad_environment_values_name_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve(from_environment(environ))


def test_the_effective_settings_are_a_config_file_giving_them_again(tmp_path: Path) -> None:
    config = resolve(
        read_file(
            toml_file(
                tmp_path,
                '[server]\nhost = "::"\nplain_listen = "[::1]:7879"\n'
                '[tls]\ncert_file = "/etc/tcpmq/c.pem"\nkey_file = "/run/k"\n'
                "[limits]\nmax_batch = 7\n",
            )
        )
    )
    text = configfile.as_toml(config)
    assert "# client_ca_file =" in text
    assert resolve(read_file(toml_file(tmp_path, text))) == config


def test_a_reload_changes_the_live_limits_and_names_the_rest() -> None:
    running = ServerConfig()
    new = dataclasses.replace(
        running,
        port=9000,
        limits=dataclasses.replace(Limits(), max_batch=5, max_frame_bytes=2**21),
        log=dataclasses.replace(running.log, level="debug"),
    )
    changes = plan(running, new)
    assert changes.limits == {"max_batch": 5}
    assert changes.log_level == "debug"
    assert changes.restart == ["server.port", "limits.max_frame_bytes"]
    assert not changes.tls
    # The live ones are limits, by name: a rename would silently make one restart-only.
    assert {f.name for f in dataclasses.fields(Limits)} >= LIVE_LIMITS


# -- tcpmq config check -----------------------------------------------------------


async def test_config_check_accepts_the_example_and_prints_every_setting() -> None:
    code, out, err = await run_cli("config", "check", str(EXAMPLE))
    assert code == 0, err
    assert out.startswith(f"# {EXAMPLE}: ok.")
    printed = tomllib.loads(out)
    example = tomllib.loads(EXAMPLE.read_text())
    for section, values in example.items():
        for key, value in values.items():
            assert printed[section][key] == value, (section, key)
    assert set(printed["limits"]) == {f.name for f in dataclasses.fields(Limits)}


async def test_config_check_refuses_a_bad_file_in_one_line(tmp_path: Path) -> None:
    path = toml_file(tmp_path, "[limits]\nmax_frame_bytes = 0\n")
    code, out, err = await run_cli("config", "check", str(path))
    assert code == 2 and out == ""
    assert err == f"tcpmq: {path}: [limits] max_frame_bytes must be positive, not 0\n"
    code, _, err = await run_cli("config", "check", str(tmp_path / "missing.toml"))
    assert code == 2 and "No such file" in err
