"""`tcpmq serve` as a systemd service: sd_notify, SIGHUP reloads, the stop, the log, the unit.

Each test runs the real `tcpmq serve` process, with $NOTIFY_SOCKET naming a
datagram socket the test binds, as systemd would for `Type=notify`.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import ssl
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest

from conftest import Wire, expect_error
from processes import clean_env, serve
from tls_files import make_tls_files

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "service-test-passw0rd"
TIMEOUT = 20.0


class NotifySocket:
    """What systemd reads: the datagrams a service sends to $NOTIFY_SOCKET."""

    def __init__(self, address: str) -> None:
        self.address = address  # as $NOTIFY_SOCKET gives it ('@' for an abstract name)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)
        self.received: list[dict[str, str]] = []

    async def expect(self, line: str) -> dict[str, str]:
        """The next message holding `line` (`KEY=VALUE`); those before it are kept too."""
        key, _, value = line.partition("=")
        async with asyncio.timeout(TIMEOUT):
            while True:
                data = await asyncio.get_running_loop().sock_recv(self.sock, 4096)
                message = dict(item.partition("=")[::2] for item in data.decode().split("\n"))
                self.received.append(message)
                if message.get(key) == value:
                    return message

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(str(tmp_path / "notify"))
    yield sock
    sock.close()


@asynccontextmanager
async def spawn(log: Path, *args: str, **env: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """`tcpmq serve ARGS` with its log in a file, not waiting for anything (the test does)."""
    with log.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tcpmq", "serve", *args, stderr=stderr, env=clean_env(**env)
        )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def port_of(status: str) -> int:
    match = re.search(r"listening on \S+:(\d+)", status)
    assert match, status
    return int(match.group(1))


async def login(host: str, port: int, **tls: object) -> Wire:
    wire = Wire(*await asyncio.open_connection(host, port, **tls))  # type: ignore[arg-type]
    assert (await wire.recv())["event"] == "hello"
    await wire.ok("login", user="admin", password=PASSWORD)
    return wire


# -- sd_notify and the stop -------------------------------------------------------


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
async def test_ready_status_watchdog_and_a_graceful_stop(tmp_path: Path, abstract: bool) -> None:
    address = f"@tcpmq-test-{os.getpid()}-{id(tmp_path)}" if abstract else str(tmp_path / "n")
    notify = NotifySocket(address)
    try:
        async with spawn(
            tmp_path / "log",
            *("--port", "0", "--data-dir", str(tmp_path / "data")),
            NOTIFY_SOCKET=address,
            WATCHDOG_USEC="200000",
            TCPMQ_ADMIN_PASSWORD=PASSWORD,
        ) as process:
            ready = await notify.expect("READY=1")
            # READY=1 comes once the port accepts: connect at once, to the port STATUS names.
            assert "listening on 127.0.0.1:" in ready["STATUS"]
            puller = await login("127.0.0.1", port_of(ready["STATUS"]))
            await notify.expect("WATCHDOG=1")

            await puller.ok("channel.create", name="jobs")
            await puller.ok("subscribe", channel="jobs", queue="q")
            await puller.send("pull", channel="jobs", queue="q", wait=60)
            watcher = await login("127.0.0.1", port_of(ready["STATUS"]))
            # A request per turn, until the pull is parked (no sleep).
            while (await watcher.ok("queue.list", channel="jobs"))["queues"][0]["consumers"] == 0:
                pass

            process.send_signal(signal.SIGTERM)
            stopping = await notify.expect("STOPPING=1")
            assert stopping["STATUS"].startswith("stopping")
            # The waiting pull is answered, then bye, then the end.
            assert await puller.recv() == {"ok": True, "messages": []}
            assert (await puller.recv())["error"]["code"] == "shutting_down"
            assert await puller.rest() == b""
            assert await asyncio.wait_for(process.wait(), TIMEOUT) == 0
            await watcher.close()
            await puller.close()
        assert all("READY" not in message for message in notify.received[1:])
    finally:
        notify.close()


async def test_without_notify_socket_nothing_is_sent_and_serve_still_runs(tmp_path: Path) -> None:
    async with serve(tmp_path / "data", "--store", "memory", TCPMQ_ADMIN_PASSWORD=PASSWORD) as srv:
        wire = await login(srv.host, srv.port)
        await wire.close()


# -- reloading --------------------------------------------------------------------


def write_config(path: Path, **sections: dict[str, object]) -> None:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {orjson.dumps(value).decode()}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")


async def test_sighup_reloads_the_tls_certificate_and_a_limit(
    tmp_path: Path, notify: NotifySocket
) -> None:
    old = make_tls_files(tmp_path, "old")
    new = make_tls_files(tmp_path, "new")
    pem = tmp_path / "server.pem"  # renewed in place, as certbot's live/ paths are
    shutil.copy(old.server_pem, pem)
    pem.chmod(0o600)
    config = tmp_path / "tcpmq.toml"
    tls = {"cert_file": str(pem), "key_file": str(pem)}
    write_config(config, tls=tls, limits={"max_channels": 1})
    async with serve(
        tmp_path / "data",
        *("--store", "memory", "--config", str(config)),
        NOTIFY_SOCKET=notify.address,
        TCPMQ_ADMIN_PASSWORD=PASSWORD,
    ) as srv:
        await notify.expect("READY=1")
        wire = await login(srv.host, srv.port, ssl=old.client_context())
        await wire.ok("channel.create", name="a")
        error = await wire.error("channel.create", "limit_exceeded", name="b")
        assert error["limit"] == "max_channels" and error["max"] == 1

        shutil.copy(new.server_pem, pem)
        write_config(config, tls=tls, limits={"max_channels": 2, "max_frame_bytes": 2**21})
        srv.process.send_signal(signal.SIGHUP)
        await notify.expect("RELOADING=1")
        await notify.expect("READY=1")

        # The limit is in force at once, on the connection already open too.
        await wire.ok("channel.create", name="b")
        error = await wire.error("channel.create", "limit_exceeded", name="c")
        assert error["max"] == 2
        # What cannot change live is said, and stays as it was.
        await srv.log_line(b"limits.max_frame_bytes changed; it takes effect at the next restart")
        assert (await wire.ok("server.info"))["limits"]["max_frame_bytes"] == 2**20
        # New connections get the new certificate: the old CA no longer verifies it.
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection(srv.host, srv.port, ssl=old.client_context())
        renewed = await login(srv.host, srv.port, ssl=new.client_context())
        issuer = dict(item[0] for item in renewed.writer.get_extra_info("peercert")["issuer"])
        assert issuer["organizationName"] == "tcpmq new CA"
        # The connection opened before keeps working.
        assert (await wire.ok("ping"))["ok"] is True
        await renewed.close()
        await wire.close()


async def test_sighup_reloads_the_log_level_and_refuses_a_bad_file(
    tmp_path: Path, notify: NotifySocket
) -> None:
    config = tmp_path / "tcpmq.toml"
    write_config(config, log={"level": "info"})
    async with serve(
        tmp_path / "data",
        *("--store", "memory", "--config", str(config)),
        NOTIFY_SOCKET=notify.address,
        TCPMQ_ADMIN_PASSWORD=PASSWORD,
    ) as srv:
        await notify.expect("READY=1")
        first = await login(srv.host, srv.port)
        await srv.log_line(b"tcpmq.audit: auth conn=")  # info is logged

        write_config(config, log={"level": "warning"})
        srv.process.send_signal(signal.SIGHUP)
        await notify.expect("READY=1")
        await srv.log_line(b"reload: log level warning")
        reloaded_at = len(srv.later_log)
        second = await login(srv.host, srv.port)  # its connect and auth: info, not logged

        # A file the broker would refuse changes nothing, and says why (an error: logged).
        write_config(config, log={"level": "loud"})
        srv.process.send_signal(signal.SIGHUP)
        await notify.expect("READY=1")
        refused = await srv.log_line(b"reload refused")
        assert b"[log] level must be one of" in refused
        assert not any(b"tcpmq.audit" in line for line in srv.later_log[reloaded_at:])
        assert (await second.ok("ping"))["ok"] is True
        await first.close()
        await second.close()


# -- configuration on a real serve --------------------------------------------------


async def test_settings_precedence_file_then_environment_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "tcpmq.toml"
    write_config(config, limits={"max_batch": 10, "max_channels": 20, "max_wait": 30.0})
    async with serve(
        tmp_path / "data",
        *("--store", "memory", "--config", str(config), "--max-wait", "32"),
        TCPMQ_LIMITS_MAX_CHANNELS="21",
        TCPMQ_LIMITS_MAX_WAIT="31",
        TCPMQ_ADMIN_PASSWORD=PASSWORD,
    ) as srv:
        wire = await login(srv.host, srv.port)
        limits = (await wire.ok("server.info"))["limits"]
        assert limits["max_batch"] == 10  # the file over the default
        assert limits["max_channels"] == 21  # the environment over the file
        assert limits["max_wait"] == 32.0  # the flag over both
        assert limits["max_queues_per_channel"] == 1000  # the default
        await wire.close()


async def test_a_bad_setting_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "tcpmq.toml"
    write_config(config, limits={"max_batch": 0})
    async with spawn(tmp_path / "log", "--config", str(config), "--port", "0") as process:
        assert await asyncio.wait_for(process.wait(), TIMEOUT) == 2
    log = (tmp_path / "log").read_text()
    assert log == f"tcpmq: {config}: [limits] max_batch must be positive, not 0\n"
    assert not (tmp_path / "data").exists()


async def test_admin_password_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "credentials" / "admin-password"
    secret.parent.mkdir(mode=0o700)
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o400)
    async with serve(tmp_path / "data", "--admin-password-file", str(secret)) as srv:
        wire = await login(srv.host, srv.port)
        await wire.close()
    assert PASSWORD.encode() not in b"".join([srv.startup_log, *srv.later_log])
    # Both a file and the variable: which one was meant? Refused.
    async with spawn(
        tmp_path / "log",
        *("--port", "0", "--store", "memory", "--admin-password-file", str(secret)),
        TCPMQ_ADMIN_PASSWORD=PASSWORD,
    ) as process:
        assert await asyncio.wait_for(process.wait(), TIMEOUT) == 2
    assert "keep one" in (tmp_path / "log").read_text()


# -- the log ------------------------------------------------------------------------


async def test_the_log_holds_no_password_or_token(tmp_path: Path) -> None:
    wrong = "not-the-passw0rd-42"
    async with serve(
        tmp_path / "data", "--log-level", "debug", TCPMQ_ADMIN_PASSWORD=PASSWORD
    ) as srv:
        wire = Wire(*await asyncio.open_connection(srv.host, srv.port))
        await wire.recv()
        expect_error(await wire.call("login", user="admin", password=wrong), "auth_failed")
        token = (await wire.ok("login", user="admin", password=PASSWORD))["token"]
        await wire.ok("user.create", name="bob", password="bobs-passw0rd-7", role="user")
        await wire.close()
        again = Wire(*await asyncio.open_connection(srv.host, srv.port))
        await again.recv()
        await again.ok("auth", token=token)
        await srv.log_line(b"by=token")
        srv.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(srv.process.wait(), TIMEOUT) == 0
        await again.close()
    log = b"".join([srv.startup_log, *srv.later_log])
    assert b"auth_failed" in log and b"user_created" in log  # the session is in the log
    for secret in (PASSWORD, wrong, "bobs-passw0rd-7", token, token.split(".")[2]):
        assert secret.encode() not in log


async def test_journal_format_when_stderr_is_the_journal(
    tmp_path: Path, notify: NotifySocket
) -> None:
    log = tmp_path / "log"
    log.touch()
    stat = log.stat()
    async with spawn(
        log,
        *("--port", "0", "--store", "memory"),
        NOTIFY_SOCKET=notify.address,
        JOURNAL_STREAM=f"{stat.st_dev}:{stat.st_ino}",
        TCPMQ_ADMIN_PASSWORD=PASSWORD,
    ) as process:
        ready = await notify.expect("READY=1")
        wire = Wire(*await asyncio.open_connection("127.0.0.1", port_of(ready["STATUS"])))
        await wire.recv()
        await wire.error("login", "auth_failed", user="admin", password="wrong-passw0rd")
        await wire.close()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), TIMEOUT) == 0
    lines = log.read_text().splitlines()
    assert any(line.startswith("<6>tcpmq.server: tcpmq listening on") for line in lines)
    assert any(line.startswith("<6>tcpmq.audit: auth_failed") for line in lines)
    assert all(re.match(r"<[0-7]>tcpmq[\w.]*: ", line) for line in lines), lines


# -- the unit file -------------------------------------------------------------------

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (it ships with systemd)"
)
UNIT = ROOT / "systemd" / "tcpmq.service"


@needs_systemd_analyze
async def test_the_unit_is_sandboxed_to_an_exposure_of_at_most_2() -> None:
    process = await asyncio.create_subprocess_exec(
        str(SYSTEMD_ANALYZE),
        "security",
        "--offline=true",
        "--no-pager",
        str(UNIT),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    match = re.search(rb"Overall exposure level for tcpmq.service: (\d+\.\d+)", out)
    assert match, out.decode() + err.decode()
    assert float(match.group(1)) <= 2.0, out.decode()


@needs_systemd_analyze
async def test_the_unit_verifies(tmp_path: Path) -> None:
    tcpmq = Path(sys.executable).parent / "tcpmq"
    assert tcpmq.exists(), "the venv's tcpmq script"
    text = UNIT.read_text()
    assert "ExecStart=/opt/tcpmq/venv/bin/tcpmq serve" in text
    (tmp_path / "tcpmq.service").write_text(text.replace("/opt/tcpmq/venv/bin/tcpmq", str(tcpmq)))
    process = await asyncio.create_subprocess_exec(
        str(SYSTEMD_ANALYZE),
        "verify",
        str(tmp_path / "tcpmq.service"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, out.decode() + err.decode()
    assert b"tcpmq.service" not in err, err.decode()  # no warning about the unit either


def test_the_unit_is_what_the_broker_expects() -> None:
    settings = {}
    for line in UNIT.read_text().splitlines():
        key, equals, value = line.partition("=")
        if equals and not line.startswith("#"):
            settings.setdefault(key, []).append(value)
    assert settings["Type"] == ["notify"]
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert settings["User"] == ["tcpmq"] and settings["StateDirectory"] == ["tcpmq"]
    assert settings["ConfigurationDirectory"] == ["tcpmq"]
    assert any(value.startswith("admin-password:") for value in settings["LoadCredential"])
    assert "--admin-password-file %d/admin-password" in settings["ExecStart"][0]
    assert settings["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert "@system-service" in settings["SystemCallFilter"]
    assert settings["CapabilityBoundingSet"] == [""]


# -- deploy/ -------------------------------------------------------------------------

INSTALL = ROOT / "deploy" / "install.sh"


async def run_script(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_deploy_scripts_parse_and_are_shellcheck_clean() -> None:
    code, _, err = await run_script("bash", "-n", str(INSTALL))
    assert code == 0, err
    hook = ROOT / "deploy" / "certbot-deploy-hook.sh"
    code, _, err = await run_script("sh", "-n", str(hook))
    assert code == 0, err
    if shutil.which("shellcheck") is not None:
        code, out, err = await run_script("shellcheck", str(INSTALL), str(hook))
        assert code == 0, out + err


async def test_install_script_dry_run_says_what_it_would_do() -> None:
    code, out, err = await run_script("bash", str(INSTALL), "--dry-run", "--wheel", "x.whl")
    assert code == 0, err
    lines = out.splitlines()
    assert all(line.startswith(("+ ", "install.sh: ")) for line in lines), out
    actions = "\n".join(line for line in lines if line.startswith("+ "))
    for expected in (
        "/opt/tcpmq/venv/bin/pip install --quiet --upgrade x.whl",
        "/etc/tcpmq/credentials",
        "tcpmq.toml /etc/tcpmq/tcpmq.toml",
        "admin-password (mode 0600)",
        "tcpmq config check /etc/tcpmq/tcpmq.toml",
        "tcpmq.service /etc/systemd/system/tcpmq.service",
        "systemctl enable tcpmq.service",
    ):
        if "/etc/tcpmq/" in expected and "exists: kept" in out:  # on an installed machine
            continue
        assert expected in actions, out
    assert "useradd --system" in actions or "user tcpmq exists" in out


def test_cloud_init_runs_the_install_script() -> None:
    text = (ROOT / "deploy" / "cloud-init.yaml").read_text()
    assert text.startswith("#cloud-config\n")
    assert "deploy/install.sh" in text
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        return  # PyYAML is not a test dependency: parsed where it is installed
    document = yaml.safe_load(text)
    assert document["runcmd"] and document["write_files"]
