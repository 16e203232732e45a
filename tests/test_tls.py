"""TLS: the listener, mutual TLS, the clear-text rules, the client library and the CLI over TLS.

Certificates are made at test time by trustme (tls_files.py). The protocol
suite itself also runs over TLS (the `over_tls` setups in conftest); this
module covers what only TLS has.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization

from conftest import (
    ADMIN_PASSWORD,
    REPLY_TIMEOUT,
    Wire,
    serving,
    until_pull_waits,
)
from processes import CLI_TIMEOUT, clean_env, serve
from proxy import relay_to
from tcpmq.client import Backoff, ConnectionLost, connect
from tcpmq.config import ConfigError, Limits, ServerConfig, TlsConfig
from tcpmq.exposure import is_loopback, refuse_exposed_plaintext
from tcpmq.server import Server
from tls_files import TlsFiles, make_tls_files
from tls_stream import open_tls_stream

FAST = Backoff(initial=0.005, max_delay=0.05)


@asynccontextmanager
async def tls_server(
    data_dir: Path,
    tls: TlsConfig,
    *,
    plain_listen: tuple[str, int] | None = None,
    store: str = "memory",
    **limits: Any,
) -> AsyncIterator[Server]:
    config = ServerConfig(
        port=0,
        data_dir=data_dir,
        store=store,
        limits=Limits(**limits),
        tls=tls,
        plain_listen=plain_listen,
    )
    async with serving(config) as server:
        yield server


def server_tls(files: TlsFiles, *, mutual: bool = False) -> TlsConfig:
    return TlsConfig(files.server_pem, files.server_pem, files.ca_pem if mutual else None)


def url_of(server: Server, host: str = "127.0.0.1") -> str:
    return f"tcpmqs://{host}:{server.port}"


@pytest.fixture(scope="module")
def other_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """Certificates from a CA nobody here trusts."""
    return make_tls_files(tmp_path_factory.mktemp("other-tls"), "other")


@asynccontextmanager
async def raw_tls_wire(server: Server, context: ssl.SSLContext) -> AsyncIterator[Wire]:
    """A raw connection over asyncio's own TLS, as `openssl s_client` would make."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", server.port, ssl=context, server_hostname="127.0.0.1"
    )
    wire = Wire(reader, writer)
    try:
        wire.hello = await wire.recv()
        yield wire
    finally:
        await wire.close()


# -- the client library over TLS -----------------------------------------------------


async def test_a_whole_session_over_tls(tmp_path: Path, tls_files: TlsFiles) -> None:
    async with (
        tls_server(tmp_path / "data", server_tls(tls_files)) as server,
        connect(url_of(server), user="admin", password=ADMIN_PASSWORD, ca=tls_files.ca_pem) as c,
    ):
        await c.channel_create("jobs")
        await c.subscribe("jobs", "workers")
        await c.publish("jobs", {"n": 1})
        [message] = await c.pull("jobs", "workers")
        assert message.data == {"n": 1}
        await c.ack("jobs", [message.id], "workers")
        assert (await c.whoami()).user == "admin"
        # A large message crosses many TLS records, both ways.
        big = "x" * 900_000
        await c.publish("jobs", big)
        [message] = await c.pull("jobs", "workers")
        assert message.data == big


async def test_the_name_localhost_in_the_certificate_is_verified_too(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    async with (
        tls_server(tmp_path / "data", server_tls(tls_files)) as server,
        connect(url_of(server, "localhost"), ca=tls_files.ca_pem, anonymous=True) as client,
    ):
        await client.ping()


async def test_an_ssl_context_of_ones_own(tmp_path: Path, tls_files: TlsFiles) -> None:
    async with (
        tls_server(tmp_path / "data", server_tls(tls_files)) as server,
        connect(url_of(server), ssl_context=tls_files.client_context(), anonymous=True) as client,
    ):
        await client.ping()


async def test_the_raw_protocol_over_tls_is_the_same_protocol(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    async with (
        tls_server(tmp_path / "data", server_tls(tls_files)) as server,
        raw_tls_wire(server, tls_files.client_context()) as wire,
    ):
        assert wire.hello["event"] == "hello"
        assert await wire.call("ping", id=1) == {"ok": True, "id": 1}
        reply = await wire.ok("login", user="admin", password=ADMIN_PASSWORD)
        assert reply["user"] == "admin"
        assert (await wire.ok("whoami"))["user"] == "admin"


async def test_reconnects_use_the_same_tls_settings(tmp_path: Path, tls_files: TlsFiles) -> None:
    async with (
        tls_server(tmp_path / "data", server_tls(tls_files)) as server,
        relay_to("127.0.0.1", server.port) as relay,
        connect(
            f"tcpmqs://127.0.0.1:{relay.port}",
            token=server.mint_token("admin"),
            ca=tls_files.ca_pem,
            reconnect=FAST,
        ) as client,
    ):
        await client.channel_create("c")
        await client.subscribe("c")
        sensor = asyncio.create_task(client.pull("c", wait=60))
        await until_pull_waits(server, "c", "admin")
        relay.cut()
        with pytest.raises(ConnectionLost):
            await sensor
        # Waits for the new connection: a TLS handshake with the same CA, then auth.
        assert (await client.whoami()).user == "admin"


@pytest.mark.parametrize(
    ("url", "options", "complaint"),
    [
        ("tcpmq://127.0.0.1", {"ca": "ca.pem"}, "need a tcpmqs:// URL"),
        ("tcpmq://127.0.0.1", {"ssl_context": ssl.create_default_context()}, "tcpmqs://"),
        ("tcpmqs://127.0.0.1", {"key": "k.pem"}, "needs its certificate"),
        ("tcpmqs://127.0.0.1", {"ca": "/nonexistent/ca.pem"}, "No such file"),
        (
            "tcpmqs://127.0.0.1",
            {"ca": "x", "ssl_context": ssl.create_default_context()},
            "not both",
        ),
    ],
)
def test_tls_options_are_checked_at_once(url: str, options: Any, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        connect(url, **options)


def test_a_file_that_is_not_pem_is_refused_at_once(tmp_path: Path) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ValueError, match="TLS files"):
        connect("tcpmqs://127.0.0.1", ca=junk)


# -- refusals ----------------------------------------------------------------------


async def test_a_server_from_an_unknown_ca_is_refused(
    tmp_path: Path, tls_files: TlsFiles, other_files: TlsFiles
) -> None:
    async with tls_server(tmp_path / "data", server_tls(tls_files)) as server:
        with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
            await connect(url_of(server), ca=other_files.ca_pem, anonymous=True)
        # By default only the system's CAs are trusted, and trustme's is not among them.
        with pytest.raises(ssl.SSLCertVerificationError):
            await connect(url_of(server), anonymous=True)


async def test_a_certificate_for_another_name_is_refused(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    elsewhere = tmp_path / "elsewhere.pem"
    tls_files.ca.issue_cert("broker.example.com").private_key_and_cert_chain_pem.write_to_path(
        str(elsewhere)
    )
    async with tls_server(tmp_path / "data", TlsConfig(elsewhere, elsewhere)) as server:
        with pytest.raises(ssl.SSLCertVerificationError, match=r"Hostname mismatch|IP address"):
            await connect(url_of(server), ca=tls_files.ca_pem, anonymous=True)


async def test_mutual_tls_requires_a_client_certificate_of_the_ca(
    tmp_path: Path, tls_files: TlsFiles, other_files: TlsFiles
) -> None:
    async with tls_server(tmp_path / "data", server_tls(tls_files, mutual=True)) as server:
        async with connect(
            url_of(server), ca=tls_files.ca_pem, cert=tls_files.client_pem, anonymous=True
        ) as client:
            await client.ping()
        # Without a certificate, or with one from another CA: no greeting, an error.
        for cert in (None, other_files.client_pem):
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await connect(url_of(server), ca=tls_files.ca_pem, cert=cert, anonymous=True)
        assert len(server.connections) == 0


async def test_clear_text_on_the_tls_port_gets_no_greeting(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    async with tls_server(tmp_path / "data", server_tls(tls_files)) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(b'{"op":"ping"}\n')
            data = await asyncio.wait_for(reader.read(), REPLY_TIMEOUT)
            assert b"hello" not in data  # a TLS alert, if anything, then the close
        finally:
            writer.close()


async def test_a_client_that_never_handshakes_is_closed_after_the_auth_timeout(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    async with tls_server(tmp_path / "data", server_tls(tls_files), auth_timeout=0.1) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            assert await asyncio.wait_for(reader.read(), REPLY_TIMEOUT) == b""
        finally:
            writer.close()


async def test_handshakes_in_progress_are_bounded_by_max_connections(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    async with tls_server(tmp_path / "data", server_tls(tls_files), max_connections=2) as server:
        silent = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
        try:
            # Both silent sockets hold a handshake slot: the third is closed at once.
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                assert await asyncio.wait_for(reader.read(), REPLY_TIMEOUT) == b""
            except ConnectionResetError:
                pass  # closed at once: a reset is as good as an EOF
            finally:
                writer.close()
            for _, silent_writer in silent:
                silent_writer.close()
            while server._handshakes.running:  # noqa: ASYNC110 - nothing announces it
                await asyncio.sleep(0)
            # Their slots come back once they are gone.
            async with connect(url_of(server), ca=tls_files.ca_pem, anonymous=True) as client:
                await client.ping()
        finally:
            for _, silent_writer in silent:
                silent_writer.close()


# -- every request answered before the close, over TLS ---------------------------------


@pytest.mark.parametrize("how", ["close_notify", "fin"])
async def test_a_login_sent_before_eof_is_answered(
    tmp_path: Path, tls_files: TlsFiles, how: str
) -> None:
    # The password is still being hashed when the client ends its side.
    async with tls_server(tmp_path / "data", server_tls(tls_files)) as server:
        reader, writer = await open_tls_stream(
            "127.0.0.1", server.port, tls_files.client_context(), limit=1 << 20
        )
        wire = Wire(reader, writer)
        try:
            await wire.recv()  # hello
            login = {"op": "login", "user": "admin", "password": ADMIN_PASSWORD, "id": 1}
            await wire.send_raw(orjson.dumps(login) + b'\n{"op":"whoami","id":2}\n')
            if how == "close_notify":
                writer.write_eof()
            else:
                with writer.transport.get_extra_info("socket").dup() as sock:
                    sock.shutdown(socket.SHUT_WR)
            first, second = (orjson.loads(line) for line in (await wire.rest()).splitlines())
            assert first["ok"] is True and first["id"] == 1 and first["user"] == "admin"
            assert second == {"ok": True, "id": 2, "user": "admin", "role": "admin"} | {
                k: second[k] for k in second if k not in ("ok", "id", "user", "role")
            }
        finally:
            await wire.close()


async def test_a_durable_publish_sent_before_close_notify_is_answered(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    data_dir = tmp_path / "data"
    async with tls_server(data_dir, server_tls(tls_files), store="log") as server:
        reader, writer = await open_tls_stream(
            "127.0.0.1", server.port, tls_files.client_context(), limit=1 << 20
        )
        wire = Wire(reader, writer)
        try:
            await wire.recv()
            await wire.ok("auth", token=server.mint_token("admin"))
            await wire.ok("channel.create", name="c")
            await wire.ok("subscribe", channel="c")
            lines = b"".join(
                orjson.dumps({"op": "publish", "channel": "c", "data": n, "id": n}) + b"\n"
                for n in range(100)
            )
            await wire.send_raw(lines)
            writer.write_eof()  # close_notify right behind them
            replies = [orjson.loads(line) for line in (await wire.rest()).splitlines()]
            assert [r["id"] for r in replies] == list(range(100))
            assert all(r["ok"] for r in replies)
        finally:
            await wire.close()
    # Acknowledged means on disk: a restart finds all of them.
    async with (
        tls_server(data_dir, server_tls(tls_files), store="log") as server,
        connect(url_of(server), ca=tls_files.ca_pem, token=server.mint_token("admin")) as c,
    ):
        assert [q.depth for q in await c.queue_list("c")] == [100]


# -- listeners and the clear-text rule -------------------------------------------------


async def test_a_plain_loopback_listener_beside_tls_serves_the_same_app(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    async with tls_server(
        tmp_path / "data", server_tls(tls_files), plain_listen=("127.0.0.1", 0)
    ) as server:
        assert server.plain_address is not None
        host, port = server.plain_address
        reader, writer = await asyncio.open_connection(host, port)
        plain = Wire(reader, writer)
        try:
            assert (await plain.recv())["event"] == "hello"
            await plain.ok("auth", token=server.mint_token("admin"))
            await plain.ok("channel.create", name="both")
            await plain.ok("subscribe", channel="both")
            async with connect(
                url_of(server), ca=tls_files.ca_pem, token=server.mint_token("admin")
            ) as client:
                await client.publish("both", "over tls")
            reply = await plain.ok("pull", channel="both")
            assert [m["data"] for m in reply["messages"]] == ["over tls"]
        finally:
            await plain.close()


@pytest.mark.parametrize(
    "config",
    [
        ServerConfig(host="0.0.0.0", port=0, store="memory"),
        ServerConfig(host="", port=0, store="memory"),
        ServerConfig(host="::", port=0, store="memory"),
    ],
    ids=["0.0.0.0", "every-interface", "::"],
)
async def test_clear_text_on_a_public_address_is_refused_before_binding(
    config: ServerConfig, tmp_path: Path
) -> None:
    server = Server(replace(config, data_dir=tmp_path / "data"), admin_password="x" * 12)
    with pytest.raises(ConfigError, match="in clear text"):
        await server.start()
    assert not (tmp_path / "data").exists()  # nothing opened, nothing bound


def test_the_clear_text_rule(tls_files: TlsFiles) -> None:
    tls = server_tls(tls_files)
    allowed = [
        ServerConfig(host="127.0.0.1"),
        ServerConfig(host="localhost"),
        ServerConfig(host="::1"),
        ServerConfig(host="0.0.0.0", tls=tls),
        ServerConfig(host="0.0.0.0", tls=tls, plain_listen=("127.0.0.1", 0)),
        ServerConfig(host="0.0.0.0", allow_plaintext=True),
        ServerConfig(host="0.0.0.0", tls=tls, plain_listen=("0.0.0.0", 0), allow_plaintext=True),
    ]
    for config in allowed:
        refuse_exposed_plaintext(config)  # no error
    with pytest.raises(ConfigError, match="--plain-listen"):
        refuse_exposed_plaintext(ServerConfig(tls=tls, plain_listen=("10.1.2.3", 0)))
    with pytest.raises(ConfigError, match="beside a TLS one"):
        ServerConfig(plain_listen=("127.0.0.1", 0))


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("192.0.2.1", False),
        ("no-such-host.invalid", False),
    ],
)
def test_which_hosts_are_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


async def test_bad_tls_files_are_refused_at_start(tmp_path: Path, tls_files: TlsFiles) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("junk\n")
    # An encrypted key is refused, not prompted for (a service has no one at its terminal).
    issued = tls_files.ca.issue_cert("127.0.0.1")
    key = serialization.load_pem_private_key(issued.private_key_pem.bytes(), None)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
        + issued.cert_chain_pems[0].bytes()
    )
    cases = [
        (TlsConfig(encrypted, encrypted), "is encrypted"),
        (TlsConfig(tmp_path / "missing.pem", tls_files.server_pem), "--tls-cert"),
        (TlsConfig(junk, junk), "not a PEM certificate chain"),
        (TlsConfig(tls_files.ca_pem, tls_files.client_pem), "not a PEM certificate chain"),
        (TlsConfig(tls_files.server_pem, tls_files.server_pem, junk), "--tls-client-ca"),
    ]
    for tls, complaint in cases:
        server = Server(ServerConfig(port=0, data_dir=tmp_path / "d", store="memory", tls=tls))
        with pytest.raises(ConfigError, match=complaint):
            await server.start()


# -- tcpmq serve and the CLI, as processes ----------------------------------------------


async def run_tcpmq(*args: str, **env: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tcpmq",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(**env),
    )
    out, err = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_tcpmq_serve_with_tls_and_the_cli_over_it(
    tmp_path: Path, tls_files: TlsFiles, other_files: TlsFiles
) -> None:
    pem = str(tls_files.server_pem)
    async with serve(
        tmp_path / "data",
        *("--store", "memory", "--tls-cert", pem, "--tls-key", pem),
        *("--plain-listen", "127.0.0.1:0"),
        TCPMQ_ADMIN_PASSWORD=ADMIN_PASSWORD,
    ) as server:
        log = server.startup_log.decode()
        assert "(TLS 1.2+)" in log, log
        assert ", and in clear text on 127.0.0.1:" in log, log
        url = f"tcpmqs://127.0.0.1:{server.port}"
        code, out, err = await run_tcpmq("--url", url, "--ca", str(tls_files.ca_pem), "ping")
        assert (code, err) == (0, ""), err
        assert out.startswith(f"pong from {url}")
        # Who am I, with the CA from the environment and a password login.
        code, out, err = await run_tcpmq(
            "--url",
            url,
            "--user",
            "admin",
            "whoami",
            TCPMQ_CA=str(tls_files.ca_pem),
            TCPMQ_PASSWORD=ADMIN_PASSWORD,
        )
        assert (code, err) == (0, ""), err
        assert "admin (admin)" in out
        # A CA that did not sign the server's certificate: exit 3, one line that says why.
        code, out, err = await run_tcpmq("--url", url, "--ca", str(other_files.ca_pem), "ping")
        assert code == 3
        assert err.count("\n") == 1 and "certificate verify failed" in err and "--ca" in err
        # TLS options with a tcpmq:// URL are a usage error, not clear text in disguise.
        code, _, err = await run_tcpmq(
            "--url", url.replace("tcpmqs", "tcpmq"), "--ca", str(tls_files.ca_pem), "ping"
        )
        assert code == 2 and "tcpmqs://" in err
        # Clear text to the TLS port: no greeting comes, and the message says what to try.
        plain = url.replace("tcpmqs", "tcpmq")
        code, _, err = await run_tcpmq("--url", plain, "--timeout", "0.2", "ping")
        assert code == 3 and "use tcpmqs://" in err


async def test_the_cli_names_a_wrong_hostname(tmp_path: Path, tls_files: TlsFiles) -> None:
    elsewhere = tmp_path / "elsewhere.pem"
    tls_files.ca.issue_cert("broker.example.com").private_key_and_cert_chain_pem.write_to_path(
        str(elsewhere)
    )
    async with tls_server(tmp_path / "data", TlsConfig(elsewhere, elsewhere)) as server:
        code, _, err = await run_tcpmq(
            "--url", url_of(server), "--ca", str(tls_files.ca_pem), "ping"
        )
    assert code == 3
    assert "another name" in err and err.count("\n") == 1


async def test_tcpmq_serve_with_mutual_tls_logs_it(tmp_path: Path, tls_files: TlsFiles) -> None:
    pem = str(tls_files.server_pem)
    async with serve(
        tmp_path / "data",
        *("--store", "memory", "--tls-cert", pem, "--tls-key", pem),
        *("--tls-client-ca", str(tls_files.ca_pem)),
        TCPMQ_ADMIN_PASSWORD=ADMIN_PASSWORD,
    ) as server:
        assert b"client certificates required" in server.startup_log
        url = f"tcpmqs://127.0.0.1:{server.port}"
        ca = str(tls_files.ca_pem)
        code, _, err = await run_tcpmq("--url", url, "--ca", ca, "ping")
        assert code == 3 and "client certificate" in err, err
        cert = str(tls_files.client_pem)
        code, _, err = await run_tcpmq("--url", url, "--ca", ca, "--cert", cert, "ping")
        assert code == 0, err


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (("--host", "0.0.0.0"), "passwords and tokens would cross the network in clear text"),
        (("--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.pem"), "--tls-cert"),
        (("--tls-cert", "/nonexistent.pem"), "go together"),
    ],
)
async def test_tcpmq_serve_refuses_unsafe_or_broken_settings(
    tmp_path: Path, args: tuple[str, ...], complaint: str
) -> None:
    code, _, err = await run_tcpmq(
        "serve", "--store", "memory", "--port", "0", "--data-dir", str(tmp_path), *args
    )
    assert code == 2
    assert err.count("\n") == 1 and complaint in err, err
    assert os.listdir(tmp_path) == []
