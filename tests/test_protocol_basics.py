"""The general rules of protocol.md over a real socket: greeting, framing, JSON,
request shape, ids, the order of checks, oversized frames and pipelining.

Every request here is written as raw bytes where the exact bytes matter, so
these tests see what `nc` would see.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from conftest import (
    PRE_AUTH_OPS,
    PROTOCOL_OPS,
    REPLY_TIMEOUT,
    Wire,
    expect_error,
    open_raw,
    open_user_wire,
    open_wire,
    running_server,
)
from tcpmq.server import Server

pytestmark = [pytest.mark.every_store, pytest.mark.over_tls]

# The ops of protocol.md that need an authenticated connection.
AUTHENTICATED_OPS = sorted(PROTOCOL_OPS - PRE_AUTH_OPS)

SMALL_FRAME = 1024


async def expect_no_id(wire: Wire, code: str) -> dict[str, Any]:
    reply = await wire.recv()
    expect_error(reply, code)
    assert "id" not in reply, reply
    return reply


async def assert_usable(wire: Wire, marker: str = "still-here") -> None:
    assert await wire.call("ping", id=marker) == {"ok": True, "id": marker}


def padded_ping(size: int, ending: bytes = b"\n") -> bytes:
    """A valid ping request of exactly `size` bytes before `ending` (JSON whitespace pads it)."""
    head, tail = b'{"op":"ping","id":1', b"}"
    line = head + b" " * (size - len(head) - len(tail)) + tail
    assert len(line) == size
    return line + ending


# --- greeting ---------------------------------------------------------------


async def test_greeting_is_exactly_the_documented_hello(server: Server) -> None:
    reader, writer = await open_raw(server.host, server.port)
    wire = Wire(reader, writer)
    try:
        line = await wire.recv_line()
        assert line.endswith(b"\n") and not line.endswith(b"\r\n")
        assert orjson.loads(line) == {
            "event": "hello",
            "server": "tcpmq",
            "version": "0.1.0",
            "protocol": 1,
            "auth": ["token", "password"],
            "max_frame_bytes": 1048576,
        }
    finally:
        await wire.close()


async def test_greeting_reports_the_configured_frame_limit(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", max_frame_bytes=SMALL_FRAME) as srv,
        open_wire(srv) as wire,
    ):
        assert wire.hello["max_frame_bytes"] == SMALL_FRAME
        assert wire.hello["event"] == "hello"


# --- framing ----------------------------------------------------------------


async def test_crlf_line_ending_is_accepted(wire: Wire) -> None:
    await wire.send_raw(b'{"op":"ping","id":"crlf"}\r\n')
    assert await wire.recv() == {"ok": True, "id": "crlf"}


async def test_replies_end_with_a_single_newline(wire: Wire) -> None:
    await wire.send_raw(b'{"op":"ping","id":1}\n{"op":"nonsense","id":2}\n')
    for _ in range(2):
        line = await wire.recv_line()
        assert line.endswith(b"\n") and line.count(b"\n") == 1 and b"\r" not in line


async def test_blank_lines_get_no_reply(wire: Wire) -> None:
    await wire.send_raw(b"\n\r\n   \n\t\t\n \t\r\n\n" + b'{"op":"ping","id":"after"}\n')
    assert await wire.recv() == {"ok": True, "id": "after"}
    await wire.send_raw(b"\n \n" + b'{"op":"ping","id":"again"}\n\n')
    assert await wire.recv() == {"ok": True, "id": "again"}


@pytest.mark.parametrize("line", [b"\x0c", b"\x0b", b" \x0c\t"], ids=repr)
async def test_other_whitespace_lines_are_not_blank(wire: Wire, line: bytes) -> None:
    # Only spaces, tabs and \r make a blank line; anything else is a (bad) frame.
    await wire.send_raw(line + b'\n{"op":"ping","id":"next"}\n')
    await expect_no_id(wire, "bad_json")
    assert await wire.recv() == {"ok": True, "id": "next"}


async def test_json_whitespace_around_the_object_is_fine(wire: Wire) -> None:
    await wire.send_raw(b'  \t{ "op" : "ping" , "id" : 5 }  \r\n')
    assert await wire.recv() == {"ok": True, "id": 5}


# --- bad JSON ---------------------------------------------------------------

BAD_JSON_LINES = [
    b"{",
    b"not json",
    b"ping",
    b'{"op":"ping"} x',
    b'{"op":"ping"}{"op":"ping"}',
    b'{"op":"ping","id":NaN}',
    b'{"op":"ping","id":Infinity}',
    b'{"op":"ping","id":-Infinity}',
    b'{"op":"ping","id":1,}',
    b"{'op':'ping'}",
    b'{"op":"ping"} // comment',
    b'/* c */ {"op":"ping"}',
    b'{op:"ping"}',
    b'{"op":"ping","id":1e400}',
    b'{"op":"ping","id":"\\ud800"}',
    b'{"op":"ping","id":"\\udc00x"}',
    b'{"op":"ping","id":"\xff"}',
    b"\xff\xfe\x00",
    b'{"op":"p\xc3"}',
    b'\xef\xbb\xbf{"op":"ping"}',
    b'{"op":"ping","id":"tab\there"}',
    b'{"op":"ping","id":01}',
    b'{"op":"ping","id":0x10}',
    b'{"op":"ping","id":"\\x41"}',
    b"\x00",
]


@pytest.mark.parametrize("line", BAD_JSON_LINES, ids=repr)
async def test_bad_json_gets_bad_json_and_keeps_the_connection(wire: Wire, line: bytes) -> None:
    await wire.send_raw(line + b"\n")
    await expect_no_id(wire, "bad_json")
    await assert_usable(wire)


async def test_many_bad_json_lines_in_a_row(wire: Wire) -> None:
    await wire.send_raw(b"".join(line + b"\n" for line in BAD_JSON_LINES))
    for _ in BAD_JSON_LINES:
        await expect_no_id(wire, "bad_json")
    await assert_usable(wire)


async def test_repeated_key_last_value_wins(wire: Wire) -> None:
    await wire.send_raw(b'{"op":"nonsense","id":1,"op":"ping","id":"last"}\n')
    assert await wire.recv() == {"ok": True, "id": "last"}


async def test_escaped_unicode_and_surrogate_pairs_are_valid(alice: Wire) -> None:
    await alice.ok("channel.create", name="u")
    await alice.ok("subscribe", channel="u")
    raw = b'{"op":"publish","channel":"u","data":"\\u00e9\\ud83d\\ude00\xe2\x9c\x93"}\n'
    await alice.send_raw(raw)
    assert (await alice.recv())["ok"] is True
    pulled = await alice.ok("pull", channel="u")
    assert pulled["messages"][0]["data"] == "\u00e9\U0001f600\u2713"


# --- request shape ----------------------------------------------------------


@pytest.mark.parametrize(
    "line", [b"[]", b'["ping"]', b"1", b'"ping"', b"null", b"true", b"[1,2]", b"{}"], ids=repr
)
async def test_non_object_or_empty_object_is_bad_request(wire: Wire, line: bytes) -> None:
    await wire.send_raw(line + b"\n")
    await expect_no_id(wire, "bad_request")
    await assert_usable(wire)


@pytest.mark.parametrize(
    "op", [None, 1, 1.5, True, ["ping"], {"op": "ping"}], ids=lambda v: repr(v)
)
async def test_non_string_op_is_bad_request(wire: Wire, op: Any) -> None:
    await wire.send_raw(orjson.dumps({"op": op, "id": 9}) + b"\n")
    reply = await wire.recv()
    error = expect_error(reply, "bad_request")
    assert error.get("field", "op") == "op", reply
    assert reply.get("id") == 9, reply
    await assert_usable(wire)


async def test_missing_op_is_bad_request_and_echoes_the_id(wire: Wire) -> None:
    await wire.send_raw(b'{"id":"no-op"}\n')
    reply = await wire.recv()
    error = expect_error(reply, "bad_request")
    assert error.get("field", "op") == "op", reply
    assert reply["id"] == "no-op"


@pytest.mark.parametrize("op", ["nonsense", "", "PING", "Ping", " ping", "ping ", "user", "user."])
async def test_unknown_op(wire: Wire, op: str) -> None:
    reply = await wire.call(op, id="u1")
    expect_error(reply, "unknown_op")
    assert reply["id"] == "u1"
    await assert_usable(wire)


async def test_unknown_op_needs_no_valid_fields(alice: Wire) -> None:
    # unknown_op is checked before the fields.
    reply = await alice.call("nonsense", bogus=1, max="x")
    expect_error(reply, "unknown_op")


@pytest.mark.parametrize(
    ("op", "fields", "unknown"),
    [
        ("ping", {"bogus": 1}, "bogus"),
        ("whoami", {"user": "alice"}, "user"),
        ("help", {"op2": 1}, "op2"),
        ("channel.create", {"name": "c", "nmae": "c"}, "nmae"),
        ("channel.list", {"name": "c"}, "name"),
        ("pull", {"channel": "c", "timeout": 1}, "timeout"),
        ("publish", {"channel": "c", "data": 1, "Data": 2}, "Data"),
        ("ack", {"channel": "c", "ids": [1], "id_list": [1]}, "id_list"),
    ],
)
async def test_unknown_field_is_bad_request_naming_it(
    alice: Wire, op: str, fields: dict[str, Any], unknown: str
) -> None:
    reply = await alice.call(op, id=3, **fields)
    error = expect_error(reply, "bad_request")
    assert error["field"] == unknown, reply
    assert reply["id"] == 3
    await assert_usable(alice)


async def test_unknown_field_before_auth_on_an_allowed_op(wire: Wire) -> None:
    error = await wire.error("ping", "bad_request", extra=True)
    assert error["field"] == "extra"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"max": "5"}, "max"),
        ({"max": True}, "max"),
        ({"max": False}, "max"),
        ({"max": None}, "max"),
        ({"max": [5]}, "max"),
        ({"max": 2.5}, "max"),
        ({"wait": "1"}, "wait"),
        ({"wait": True}, "wait"),
        ({"wait": None}, "wait"),
        ({"queue": 5}, "queue"),
        ({"queue": None}, "queue"),
        ({"queue": ["q"]}, "queue"),
    ],
    ids=repr,
)
async def test_strict_types_on_pull(alice: Wire, fields: dict[str, Any], field: str) -> None:
    # The channel does not exist: fields are checked before the op itself.
    error = await alice.error("pull", "bad_request", channel="nowhere", **fields)
    assert error["field"] == field


@pytest.mark.parametrize(
    ("op", "fields", "field"),
    [
        ("channel.create", {"name": 5}, "name"),
        ("channel.create", {"name": None}, "name"),
        ("channel.create", {}, "name"),
        ("channel.get", {"name": ["c"]}, "name"),
        ("subscribe", {"channel": True}, "channel"),
        ("subscribe", {"channel": "c", "ack_timeout": "5"}, "ack_timeout"),
        ("subscribe", {"channel": "c", "ack_timeout": True}, "ack_timeout"),
        ("publish", {"data": 1}, "channel"),
        ("publish", {"channel": "c", "messages": "abc"}, "messages"),
        ("publish", {"channel": "c", "messages": {"0": 1}}, "messages"),
        ("ack", {"channel": "c", "ids": ["1"]}, "ids.0"),
        ("ack", {"channel": "c", "ids": [1, 2, True]}, "ids.2"),
        ("ack", {"channel": "c", "ids": [1, 2.5]}, "ids.1"),
        ("nack", {"channel": "c", "ids": 1}, "ids"),
        ("nack", {"channel": "c"}, "ids"),
        ("user.create", {"name": "carol", "password": 12345678}, "password"),
        ("user.create", {"name": "carol", "password": "p" * 10, "role": 1}, "role"),
        ("login", {"user": "admin", "password": "x" * 10, "ttl": "60"}, "ttl"),
        ("login", {"user": "admin", "password": "x" * 10, "ttl": True}, "ttl"),
        ("auth", {"token": 5}, "token"),
        ("auth", {}, "token"),
    ],
    ids=repr,
)
async def test_strict_types_name_the_field(
    admin: Wire, op: str, fields: dict[str, Any], field: str
) -> None:
    error = await admin.error(op, "bad_request", **fields)
    assert error["field"] == field


async def test_integer_beyond_64_bits_is_not_an_integer(alice: Wire) -> None:
    await alice.ok("channel.create", name="c")
    await alice.ok("subscribe", channel="c")
    await alice.send_raw(b'{"op":"pull","channel":"c","max":99999999999999999999}\n')
    error = expect_error(await alice.recv(), "bad_request")
    assert error["field"] == "max"


# --- ids --------------------------------------------------------------------

VALID_IDS = [
    "abc",
    "",
    "x" * 128,
    "\u00e9t\u00e9 \U0001f600",
    0,
    7,
    -1,
    2**63 - 1,
    -(2**63),
]


@pytest.mark.parametrize("request_id", VALID_IDS, ids=repr)
async def test_valid_id_is_echoed_unchanged(wire: Wire, request_id: Any) -> None:
    reply = await wire.call("ping", id=request_id)
    assert reply == {"ok": True, "id": request_id}
    assert type(reply["id"]) is type(request_id)


@pytest.mark.parametrize("request_id", ["abc", 42], ids=repr)
async def test_valid_id_is_echoed_on_errors(wire: Wire, request_id: Any) -> None:
    reply = await wire.call("channel.list", id=request_id)
    expect_error(reply, "unauthenticated")
    assert reply["id"] == request_id


async def test_absent_id_means_no_id_key(wire: Wire) -> None:
    assert await wire.call("ping") == {"ok": True}
    reply = await wire.call("channel.list")
    expect_error(reply, "unauthenticated")
    assert "id" not in reply


INVALID_IDS = [
    b"[1]",
    b'{"a":1}',
    b"1.5",
    b"1.0",
    b"1e3",
    b"true",
    b"null",
    b'"' + b"x" * 129 + b'"',
    b'"' + b"x" * 200 + b'"',
    b"9223372036854775808",
    b"-9223372036854775809",
    b"18446744073709551615",
]


@pytest.mark.parametrize("raw_id", INVALID_IDS, ids=lambda v: repr(v)[:20])
async def test_invalid_id_is_bad_request_without_id(wire: Wire, raw_id: bytes) -> None:
    await wire.send_raw(b'{"op":"ping","id":' + raw_id + b"}\n")
    reply = await expect_no_id(wire, "bad_request")
    assert reply["error"]["field"] == "id"
    await assert_usable(wire)


async def test_id_beyond_64_bits_is_bad_request(wire: Wire) -> None:
    # Integers beyond 64 bits are read as floats, which are not valid ids.
    await wire.send_raw(b'{"op":"ping","id":123456789012345678901234567890}\n')
    reply = await expect_no_id(wire, "bad_request")
    assert reply["error"]["field"] == "id"


async def test_id_of_an_authenticated_op_is_echoed(alice: Wire) -> None:
    reply = await alice.ok("whoami", id="who")
    assert reply == {"ok": True, "id": "who", "user": "alice", "role": "user"}


# --- order of checks --------------------------------------------------------


async def test_unknown_op_before_auth_is_unknown_op(wire: Wire) -> None:
    await wire.error("channel.lsit", "unknown_op")
    await wire.error("frobnicate", "unknown_op", id=1)


@pytest.mark.parametrize("op", AUTHENTICATED_OPS)
async def test_known_op_before_auth_is_unauthenticated(wire: Wire, op: str) -> None:
    reply = await wire.call(op, id=op)
    expect_error(reply, "unauthenticated")
    assert reply["id"] == op


async def test_unauthenticated_comes_before_field_checks(wire: Wire) -> None:
    await wire.error("pull", "unauthenticated", max="5", bogus=True)
    await wire.error("publish", "unauthenticated")
    await wire.error("user.create", "unauthenticated", name="bad name!")


async def test_ping_auth_and_login_are_allowed_before_auth(wire: Wire) -> None:
    assert await wire.call("ping", id=1) == {"ok": True, "id": 1}
    await wire.error("auth", "auth_failed", token="not-a-token")
    await wire.error("login", "auth_failed", user="admin", password="wrong-password")
    # Still unauthenticated after the failures, and still usable.
    await wire.error("whoami", "unauthenticated")
    await wire.error("auth", "bad_request", token=["not", "a", "string"])


async def test_bad_json_comes_before_everything(wire: Wire) -> None:
    await wire.send_raw(b'{"op":"nonsense",}\n{"op":"channel.list","id":1\n')
    await expect_no_id(wire, "bad_json")
    await expect_no_id(wire, "bad_json")


async def test_fields_come_before_the_op_itself(alice: Wire) -> None:
    # A bad field wins over not_found for a channel that does not exist.
    error = await alice.error("publish", "bad_request", channel="missing", data=1, extra=1)
    assert error["field"] == "extra"
    await alice.error("publish", "not_found", channel="missing", data=1)


# --- frame_too_large --------------------------------------------------------


async def read_rest_after_error(wire: Wire) -> None:
    # The server closes after the frame_too_large reply, with nothing more.
    assert await wire.rest() == b""


async def test_frame_of_exactly_the_limit_is_accepted(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", max_frame_bytes=SMALL_FRAME) as srv,
        open_wire(srv) as wire,
    ):
        await wire.send_raw(padded_ping(SMALL_FRAME))
        assert await wire.recv() == {"ok": True, "id": 1}
        await wire.send_raw(padded_ping(SMALL_FRAME, b"\r\n"))
        assert await wire.recv() == {"ok": True, "id": 1}
        await assert_usable(wire)


async def test_frame_over_the_limit_gets_frame_too_large_then_close(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", max_frame_bytes=SMALL_FRAME) as srv,
        open_wire(srv) as wire,
    ):
        await wire.send_raw(padded_ping(SMALL_FRAME + 1))
        reply = await expect_no_id(wire, "frame_too_large")
        assert reply["error"]["max"] == SMALL_FRAME
        await read_rest_after_error(wire)


async def test_frames_before_the_oversized_one_are_answered_first(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", max_frame_bytes=SMALL_FRAME) as srv,
        open_wire(srv) as wire,
    ):
        data = (
            b'{"op":"ping","id":"a"}\n{"op":"nonsense","id":"b"}\n'
            + b'{"op":"ping","id":"c","pad":"'
            + b"x" * 3000
            + b'"}\n'
        )
        await wire.send_raw(data)
        assert await wire.recv() == {"ok": True, "id": "a"}
        assert (await wire.recv())["error"]["code"] == "unknown_op"
        reply = await expect_no_id(wire, "frame_too_large")
        assert reply["error"]["max"] == SMALL_FRAME
        await read_rest_after_error(wire)


async def test_unterminated_oversized_line_is_refused_without_a_newline(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", max_frame_bytes=SMALL_FRAME) as srv,
        open_wire(srv) as wire,
    ):
        # No newline is ever sent: the server must refuse while the line arrives.
        await wire.send_raw(b"x" * (SMALL_FRAME + 1))
        reply = await expect_no_id(wire, "frame_too_large")
        assert reply["error"]["max"] == SMALL_FRAME
        await read_rest_after_error(wire)


async def test_unterminated_huge_line_is_refused_early(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", max_frame_bytes=SMALL_FRAME) as srv,
        open_wire(srv) as wire,
    ):
        await wire.send_raw(b'{"op":"ping","id":"' + b"y" * (20 * SMALL_FRAME))
        reply = await expect_no_id(wire, "frame_too_large")
        assert reply["error"]["max"] == SMALL_FRAME
        await read_rest_after_error(wire)


async def test_unterminated_line_of_exactly_the_limit_waits(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", max_frame_bytes=SMALL_FRAME) as srv,
        open_wire(srv) as wire,
    ):
        line = padded_ping(SMALL_FRAME, b"")
        await wire.send_raw(line)
        await wire.send_raw(b"\r")
        await wire.send_raw(b"\n")
        assert await wire.recv() == {"ok": True, "id": 1}
        await assert_usable(wire)


async def test_frame_too_large_is_counted_in_bytes_not_characters(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", max_frame_bytes=SMALL_FRAME) as srv,
        open_wire(srv) as wire,
    ):
        # 400 three-byte characters: 400 characters, 1200 bytes.
        await wire.send_raw(b'{"op":"ping","x":"' + "\u2713".encode() * 400 + b'"}\n')
        await expect_no_id(wire, "frame_too_large")
        await read_rest_after_error(wire)


async def test_frame_limit_is_per_line(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", max_frame_bytes=SMALL_FRAME) as srv,
        open_wire(srv) as wire,
    ):
        # Many lines, each under the limit, in one write far over it.
        await wire.send_raw(padded_ping(SMALL_FRAME - 10) * 50)
        for _ in range(50):
            assert await wire.recv() == {"ok": True, "id": 1}


# --- pipelining -------------------------------------------------------------


async def test_1000_pipelined_requests_get_1000_replies_in_order(alice: Wire) -> None:
    await alice.ok("channel.create", name="pipe")
    await alice.ok("subscribe", channel="pipe")
    lines: list[bytes] = []
    # (ok, code or None, id or None) for each request, in order.
    expected: list[tuple[bool, str | None, Any]] = []
    for i in range(1000):
        if i % 10 == 0:
            lines.append(b"   \r")  # a blank line between requests: no reply
        kind = i % 7
        if kind == 0:
            lines.append(orjson.dumps({"op": "ping", "id": i}))
            expected.append((True, None, i))
        elif kind == 1:
            lines.append(orjson.dumps({"op": "ping", "id": f"s{i}"}))
            expected.append((True, None, f"s{i}"))
        elif kind == 2:
            lines.append(b'{"op":"ping",' + str(i).encode())
            expected.append((False, "bad_json", None))
        elif kind == 3:
            lines.append(orjson.dumps({"op": "nope", "id": i}))
            expected.append((False, "unknown_op", i))
        elif kind == 4:
            lines.append(orjson.dumps({"op": "ping", "id": i, "junk": 1}))
            expected.append((False, "bad_request", i))
        elif kind == 5:
            lines.append(orjson.dumps({"op": "publish", "channel": "pipe", "data": i, "id": i}))
            expected.append((True, None, i))
        else:
            lines.append(orjson.dumps({"op": "whoami", "id": [i]}))
            expected.append((False, "bad_request", None))
    assert len(expected) == 1000
    await alice.send_raw(b"\n".join(lines) + b"\n")
    for n, (ok, code, request_id) in enumerate(expected):
        reply = await alice.recv()
        assert reply["ok"] is ok, (n, reply)
        if code is not None:
            assert reply["error"]["code"] == code, (n, reply)
        if request_id is None:
            assert "id" not in reply, (n, reply)
        else:
            assert reply["id"] == request_id, (n, reply)
    # The publishes went through in order too.
    published = [i for i in range(1000) if i % 7 == 5]
    pulled = await alice.ok("pull", channel="pipe", max=1000)
    assert [m["data"] for m in pulled["messages"]] == published
    assert [m["id"] for m in pulled["messages"]] == list(range(1, len(published) + 1))


async def test_1000_pipelined_pings_in_one_write(wire: Wire) -> None:
    await wire.send_raw(b"".join(b'{"op":"ping","id":%d}\n' % i for i in range(1000)))
    for i in range(1000):
        assert await wire.recv() == {"ok": True, "id": i}


async def test_reply_behind_a_waiting_pull_comes_after_it(alice: Wire) -> None:
    await alice.ok("channel.create", name="lp")
    await alice.ok("subscribe", channel="lp")
    await alice.send_raw(
        b'{"op":"pull","channel":"lp","wait":0.3,"id":"pull"}\n{"op":"ping","id":"ping"}\n'
    )
    first = await asyncio.wait_for(alice.recv(), REPLY_TIMEOUT)
    assert first == {"ok": True, "id": "pull", "messages": []}
    assert await alice.recv() == {"ok": True, "id": "ping"}


async def test_user_deletion_bye_is_an_event_without_id(
    server: Server, admin: Wire, alice: Wire
) -> None:
    await admin.ok("user.delete", name="alice")
    bye = await alice.recv()
    assert bye["event"] == "bye"
    assert "ok" not in bye and "id" not in bye
    assert bye["error"]["code"] == "auth_failed"


async def test_connection_survives_a_long_mix_of_errors(server: Server) -> None:
    async with open_user_wire(server, "admin") as wire:
        for line in BAD_JSON_LINES[:5]:
            await wire.send_raw(line + b"\n")
            await expect_no_id(wire, "bad_json")
        await wire.error("nonsense", "unknown_op")
        await wire.error("user.get", "not_found", name="ghost")
        assert (await wire.ok("whoami"))["user"] == "admin"


async def test_a_typed_word_gets_told_how_to_say_it(wire: Wire) -> None:
    # What a person types at nc first: told to send JSON, with the request to try.
    error = expect_error(await wire.call_raw(b"help"), "bad_json")
    assert error["message"].startswith("not JSON: send one JSON object per line")
    assert '{"op":"help"}' in error["message"]
    assert '{"op":"ping"}' in expect_error(await wire.call_raw(b"PING"), "bad_json")["message"]
    # The line is not repeated back: it may hold a password.
    error = expect_error(await wire.call_raw(b"login admin s3cret-passw0rd"), "bad_json")
    assert '{"op":"login"}' in error["message"] and "s3cret" not in error["message"]
    assert await wire.call("ping") == {"ok": True}
