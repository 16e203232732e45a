"""The points of protocol.md a client written from the document alone asked about.

Each section checks one promise over a real socket with raw bytes, as `nc`
would see it: the nesting limit, which message of a batch an error names,
`min`/`max` on range errors, the integer range, `server.info`, where an
invalid `id` sits in the order of checks, how `\\r\\n` counts toward
`max_frame_bytes`, what `max_queue_bytes` counts, how large a pull reply can
be, and that a re-created channel starts its ids at 1. Pure tests of the
wire functions behind them close the file.
"""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import orjson
import pytest

from conftest import (
    Wire,
    create_user,
    expect_error,
    open_user_wire,
    open_wire,
    running_server,
)
from tcpmq import wire as wire_format
from tcpmq.config import Limits
from tcpmq.errors import BadRequest, TcpmqError
from tcpmq.info import server_info

pytestmark = [pytest.mark.every_store, pytest.mark.over_tls]

PROTOCOL_MD = Path(__file__).resolve().parent.parent / "protocol.md"
MAX_DEPTH = 128  # protocol.md, "Nesting"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
SMALL_FRAME = 1024
# The fixed limits protocol.md lists beside the settings, by name and value.
FIXED_LIMITS = {
    "max_depth": 128,
    "max_id_chars": 128,
    "max_token_chars": 4096,
    "min_password_chars": 8,
    "max_password_chars": 1024,
}


def nested(levels: int, leaf: bytes = b"0") -> bytes:
    """A JSON value nesting arrays `levels` deep around `leaf` (0 levels: the leaf)."""
    return b"[" * levels + leaf + b"]" * levels


def nested_value(levels: int) -> Any:
    value: Any = 0
    for _ in range(levels):
        value = [value]
    return value


def publish_line(data: bytes, channel: bytes = b"c") -> bytes:
    return b'{"op":"publish","channel":"' + channel + b'","data":' + data + b"}"


def assert_too_deep(reply: dict[str, Any], field: str | None, echoed: object = None) -> None:
    error = expect_error(reply, "bad_request")
    assert error["limit"] == "max_depth", error
    assert error["max"] == MAX_DEPTH, error
    assert error.get("field") == field, error
    assert "min" not in error, error
    # Found as the line is read, before the id: the reply cannot echo one. A
    # publish's data is checked with its fields, after the id.
    assert reply.get("id") == echoed, reply


def assert_range(error: dict[str, Any], field: str, **bounds: int | float) -> None:
    """The error names `field` and carries exactly the `min`/`max` given."""
    assert error["code"] == "bad_request", error
    assert error["field"] == field, error
    assert {key: error[key] for key in ("min", "max") if key in error} == bounds, error


async def channel_with_queue(wire: Wire, channel: str = "c") -> None:
    await wire.ok("channel.create", name=channel)
    await wire.ok("subscribe", channel=channel)


async def pull_line(wire: Wire, channel: str = "c", **fields: Any) -> bytes:
    """The raw reply line of a pull (without its newline)."""
    await wire.send("pull", channel=channel, **fields)
    line = await wire.recv_line()
    assert line.endswith(b"\n") and orjson.loads(line)["ok"] is True, line
    return line[:-1]


# --- nesting -----------------------------------------------------------------


async def test_data_may_nest_127_levels(alice: Wire) -> None:
    # The request object is level 1, so data of 127 levels makes 128.
    await channel_with_queue(alice)
    reply = await alice.call_raw(publish_line(nested(127)))
    assert reply["ok"] is True, reply
    messages = (await alice.ok("pull", channel="c"))["messages"]
    assert messages[0]["data"] == nested_value(127)


async def test_data_nested_128_levels_is_too_deep(alice: Wire) -> None:
    await channel_with_queue(alice)
    line = publish_line(nested(128))[:-1] + b',"id":"deep"}'
    assert_too_deep(await alice.call_raw(line), "data", echoed="deep")
    # Nothing was published, and the connection goes on.
    assert (await alice.ok("pull", channel="c"))["messages"] == []
    assert await alice.call("ping", id="after") == {"ok": True, "id": "after"}


async def test_a_too_deep_message_of_a_batch_is_named_by_its_index(alice: Wire) -> None:
    await channel_with_queue(alice)
    # An element of `messages` is level 3: 126 more levels are allowed.
    fine = nested(126)
    line = b'{"op":"publish","channel":"c","messages":["a",' + fine + b"," + nested(127) + b"]}"
    assert_too_deep(await alice.call_raw(line), "messages.2")
    # The batch is refused whole.
    channel = (await alice.ok("channel.get", name="c"))["channel"]
    assert channel["published"] == 0
    line = b'{"op":"publish","channel":"c","messages":["a",' + fine + b"]}"
    assert (await alice.call_raw(line))["message_ids"] == [1, 2]


@pytest.mark.parametrize("levels", [1100, 5000])
async def test_deeper_than_the_parser_goes_is_the_same_error(alice: Wire, levels: int) -> None:
    # orjson parses at most 1024 levels: such a line is too deep, not bad JSON.
    await alice.ok("channel.create", name="c")
    assert_too_deep(await alice.call_raw(publish_line(nested(levels))), None)
    await alice.send_raw(b'{"op":"ping","x":' + b"[" * levels + b"\n")
    assert_too_deep(await alice.recv(), None)
    assert await alice.call("ping", id=1) == {"ok": True, "id": 1}


@pytest.mark.parametrize("levels", [MAX_DEPTH, 200, 640, 700])
async def test_nesting_is_checked_before_the_json(wire: Wire, levels: int) -> None:
    # protocol.md: a too deep line gets max_depth, valid JSON or not.
    assert_too_deep(await wire.call_raw(b'{"op":"ping","x":' + b"[" * levels), None)
    assert_too_deep(await wire.call_raw(b"[" * (levels + 1) + b"}"), None)


async def test_a_shallow_invalid_line_is_bad_json(wire: Wire) -> None:
    # Brackets in a string do not nest, even in a string left open.
    for line in (b'{"op":"ping","x":"' + b"[" * 300, b'{"x":[[' + b'"\\"[",' * 300 + b"]]"):
        expect_error(await wire.call_raw(line), "bad_json")
    expect_error(await wire.call_raw(b"[" * MAX_DEPTH), "bad_json")


async def test_nesting_is_checked_before_everything_else(wire: Wire) -> None:
    deep = nested(MAX_DEPTH)
    # Before authentication, before the id, before the op and the fields.
    assert_too_deep(await wire.call_raw(b'{"op":"pull","id":true,"x":' + deep + b"}"), "x")
    assert_too_deep(await wire.call_raw(b'{"op":"nonsense","x":' + deep + b"}"), "x")
    assert_too_deep(await wire.call_raw(b'{"x":' + deep + b"}"), "x")
    assert_too_deep(await wire.call_raw(nested(MAX_DEPTH + 1)), None)


async def test_brackets_in_strings_do_not_nest(alice: Wire) -> None:
    await channel_with_queue(alice)
    text = "[{" * 3000
    await alice.ok("publish", channel="c", data=text)
    assert (await alice.ok("pull", channel="c"))["messages"][0]["data"] == text


async def test_a_wide_shallow_batch_is_not_too_deep(alice: Wire) -> None:
    await channel_with_queue(alice)
    batch = [{"n": i, "tags": ["a", "b"], "meta": {"k": [i]}} for i in range(1000)]
    reply = await alice.ok("publish", channel="c", messages=batch)
    assert reply["message_ids"] == list(range(1, 1001))


# --- min and max on range errors ---------------------------------------------


async def test_pull_max_below_one_names_min(alice: Wire) -> None:
    assert_range(await alice.error("pull", "bad_request", channel="c", max=0), "max", min=1)


async def test_integers_beyond_63_bits_name_max(alice: Wire) -> None:
    # From 2^63 to 2^64-1 JSON integers are read as integers: out of range.
    big = b"9223372036854775808"
    reply = await alice.call_raw(b'{"op":"pull","channel":"c","max":' + big + b"}")
    assert_range(expect_error(reply, "bad_request"), "max", max=INT64_MAX)
    reply = await alice.call_raw(b'{"op":"ack","channel":"c","ids":[1,' + big + b"]}")
    assert_range(expect_error(reply, "bad_request"), "ids.1", max=INT64_MAX)
    reply = await alice.call_raw(b'{"op":"ack","channel":"c","ids":[1,0]}')
    assert_range(expect_error(reply, "bad_request"), "ids.1", min=1)


async def test_an_integer_beyond_64_bits_is_not_an_integer(alice: Wire) -> None:
    reply = await alice.call_raw(b'{"op":"pull","channel":"c","max":18446744073709551616}')
    assert_range(expect_error(reply, "bad_request"), "max")


async def test_login_ttl_range(wire: Wire) -> None:
    error = await wire.error("login", "bad_request", user="admin", password="x", ttl=0)
    assert_range(error, "ttl", min=1)
    error = await wire.error("login", "bad_request", user="admin", password="x", ttl=2**63)
    assert_range(error, "ttl", max=INT64_MAX)


async def test_string_and_list_lengths_name_their_bounds(admin: Wire) -> None:
    error = await admin.error("auth", "bad_request", token="t" * 4097)
    assert_range(error, "token", max=4096)
    error = await admin.error("user.create", "bad_request", name="u", password="short")
    assert_range(error, "password", min=8)
    error = await admin.error("user.create", "bad_request", name="u", password="p" * 1025)
    assert_range(error, "password", max=1024)
    error = await admin.error("publish", "bad_request", channel="c", messages=[])
    assert_range(error, "messages", min=1)
    error = await admin.error("ack", "bad_request", channel="c", ids=[])
    assert_range(error, "ids", min=1)


async def test_ranges_set_by_settings_give_both_bounds(alice: Wire) -> None:
    error = await alice.error("pull", "bad_request", channel="c", max=1001)
    assert_range(error, "max", min=1, max=1000)
    error = await alice.error("pull", "bad_request", channel="c", wait=300.5)
    assert_range(error, "wait", min=0, max=300)
    for ack_timeout in (0, -1, 43201):
        error = await alice.error("subscribe", "bad_request", channel="c", ack_timeout=ack_timeout)
        assert_range(error, "ack_timeout", min=0.1, max=43200)


async def test_an_id_out_of_range_names_both_bounds(wire: Wire) -> None:
    reply = await wire.call_raw(b'{"op":"ping","id":9223372036854775808}')
    assert_range(expect_error(reply, "bad_request"), "id", min=INT64_MIN, max=INT64_MAX)
    assert "id" not in reply


# --- server.info -------------------------------------------------------------


async def test_server_info(tmp_path: Path, store: str) -> None:
    async with (
        running_server(tmp_path / "data", max_batch=7, max_wait=12.5) as srv,
        open_user_wire(srv, "admin") as admin,
    ):
        await create_user(admin, "alice")
        async with open_user_wire(srv, "alice") as alice:
            reply = await alice.ok("server.info", id="i")
    assert set(reply) == {
        *("ok", "id", "server", "version", "protocol", "store"),
        *("default_channel_access", "limits"),
    }
    assert reply["id"] == "i"
    assert (reply["server"], reply["version"], reply["protocol"]) == ("tcpmq", "0.1.0", 1)
    assert reply["store"] == store
    limits = reply["limits"]
    # Every setting by name with this server's value, then the fixed limits.
    settings = {spec.name: getattr(Limits(), spec.name) for spec in fields(Limits)}
    settings.update(max_batch=7, max_wait=12.5)
    assert limits == settings | FIXED_LIMITS


async def test_server_info_needs_authentication(wire: Wire) -> None:
    reply = await wire.call("server.info", id=1)
    expect_error(reply, "unauthenticated")
    assert reply["id"] == 1


async def test_server_info_takes_no_fields(alice: Wire) -> None:
    error = await alice.error("server.info", "bad_request", verbose=True)
    assert error["field"] == "verbose"


async def test_help_lists_server_info(alice: Wire) -> None:
    ops = {entry["op"]: entry for entry in (await alice.ok("help"))["ops"]}
    assert ops["server.info"]["fields"] == ""
    assert ops["server.info"]["summary"]


# --- the id in the order of checks -------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b'{"id":true}',  # no op at all
        b'{"op":"nonsense","id":[1]}',  # an unknown op
        b'{"op":5,"id":1.5}',  # op not a string
        b'{"op":"pull","id":{"a":1},"max":"x"}',  # needs auth, and a bad field
        b'{"op":"ping","id":"' + b"x" * 129 + b'"}',
    ],
    ids=lambda line: repr(line)[:30],
)
async def test_an_invalid_id_is_reported_before_the_op(wire: Wire, line: bytes) -> None:
    reply = await wire.call_raw(line)
    error = expect_error(reply, "bad_request")
    assert error["field"] == "id"
    assert "id" not in reply


async def test_after_a_valid_id_the_op_is_checked(wire: Wire) -> None:
    reply = await wire.call_raw(b'{"id":7}')
    assert expect_error(reply, "bad_request")["field"] == "op"
    assert reply["id"] == 7


async def test_a_line_that_is_not_an_object_has_no_id(wire: Wire) -> None:
    reply = await wire.call_raw(b'[{"op":"ping","id":1}]')
    expect_error(reply, "bad_request")
    assert "id" not in reply


# --- \r\n and max_frame_bytes ------------------------------------------------


def padded_ping(size: int) -> bytes:
    """A ping request of exactly `size` bytes (spaces inside the JSON pad it)."""
    head, tail = b'{"op":"ping","id":1', b"}"
    return head + b" " * (size - len(head) - len(tail)) + tail


async def test_the_line_ending_does_not_count(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", max_frame_bytes=SMALL_FRAME) as srv,
        open_wire(srv) as wire,
    ):
        # A \r inside the line is content (JSON whitespace), counted like a space.
        inner_cr = padded_ping(SMALL_FRAME)[:-2] + b"\r}"
        for line in (padded_ping(SMALL_FRAME), inner_cr):
            for ending in (b"\n", b"\r\n"):
                await wire.send_raw(line + ending)
                assert await wire.recv() == {"ok": True, "id": 1}


@pytest.mark.parametrize(
    "line",
    [
        padded_ping(SMALL_FRAME) + b"\r\r\n",
        b"\r" + padded_ping(SMALL_FRAME) + b"\n",
        padded_ping(SMALL_FRAME)[:-1] + b"\r}\r\n",
    ],
    ids=["second-cr-before-the-ending", "leading-cr", "inner-cr"],
)
async def test_any_other_cr_counts(tmp_path: Path, line: bytes) -> None:
    async with (
        running_server(tmp_path / "data", max_frame_bytes=SMALL_FRAME) as srv,
        open_wire(srv) as wire,
    ):
        await wire.send_raw(line)
        reply = expect_error(await wire.recv(), "frame_too_large")
        assert reply["max"] == SMALL_FRAME


# --- what max_queue_bytes counts ---------------------------------------------

# protocol.md: a ready message counts as `{"id":…,"data":…,"published_at":…,
# "publisher":…,"attempt":`, the data (compact) plus 54 bytes plus the id's
# digits, `published_at` (12 to 17 characters today) and the quoted publisher.
STORED_OVERHEAD = 54
SHORTEST_STAMP, LONGEST_STAMP = len("1764355320.0"), len("1764355320.123456")


def stored_size(data: bytes, message_id: int, stamp_chars: int, publisher: str) -> int:
    return len(data) + STORED_OVERHEAD + len(str(message_id)) + stamp_chars + len(publisher) + 2


async def test_the_stored_form_of_a_message(alice: Wire) -> None:
    await channel_with_queue(alice)
    sent = b'{ "a" : [1, 2.50, "\\u00e9"],\n"b": null }'.replace(b"\n", b" ")
    compact = orjson.dumps(orjson.loads(sent))
    await alice.call_raw(publish_line(sent))
    line = await pull_line(alice)
    message = line[len(b'{"ok":true,"messages":[') : -len(b"]}")]
    stored = message[: -len(b"1}")]
    assert stored.startswith(b'{"id":1,"data":' + compact + b',"published_at":')
    assert stored.endswith(b',"publisher":"alice","attempt":')
    stamp = re.search(rb'"published_at":([0-9.]+),', stored)
    assert stamp is not None
    assert len(stored) == stored_size(compact, 1, len(stamp[1]), "alice")


async def test_max_queue_bytes_counts_the_stored_form(tmp_path: Path) -> None:
    limit = 400
    async with (
        running_server(tmp_path / "data", max_queue_bytes=limit) as srv,
        open_user_wire(srv, "admin") as admin,
    ):
        await channel_with_queue(admin, "fits")
        # At most `limit` bytes however long the publish time's digits are.
        length = limit - stored_size(b"", 1, LONGEST_STAMP, "admin")
        data = b'"' + b"x" * (length - 2) + b'"'
        assert (await admin.call_raw(publish_line(data, b"fits")))["ok"] is True
        # The queue is full: any further message is refused, and nothing is added.
        error = expect_error(await admin.call_raw(publish_line(b"1", b"fits")), "limit_exceeded")
        assert (error["limit"], error["max"]) == ("max_queue_bytes", limit)
        # A message counts until acked: pulled, it still takes its room.
        [pulled] = orjson.loads(await pull_line(admin, "fits"))["messages"]
        error = expect_error(await admin.call_raw(publish_line(b"1", b"fits")), "limit_exceeded")
        assert error["limit"] == "max_queue_bytes"
        await admin.ok("ack", channel="fits", ids=[pulled["id"]])
        assert (await admin.call_raw(publish_line(b"1", b"fits")))["ok"] is True

        await channel_with_queue(admin, "over")
        # At least `limit` + 1 bytes however short the publish time's digits are.
        length = limit + 1 - stored_size(b"", 1, SHORTEST_STAMP, "admin")
        data = b'"' + b"x" * (length - 2) + b'"'
        error = expect_error(await admin.call_raw(publish_line(data, b"over")), "limit_exceeded")
        assert error["limit"] == "max_queue_bytes"


# --- how large a pull reply can be -------------------------------------------


async def test_a_reply_of_several_messages_stays_below_the_frame(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", max_frame_bytes=SMALL_FRAME) as srv,
        open_user_wire(srv, "admin") as admin,
    ):
        await channel_with_queue(admin)
        for size in (100, 200, 300, 150, 250, 50, 400, 10):
            await admin.ok("publish", channel="c", data="x" * size)
        echoed = b',"id":"pull-id"'
        while True:
            line = await pull_line(admin, max=100, id="pull-id")
            count = len(orjson.loads(line)["messages"])
            if count == 0:
                break
            if count > 1:
                assert len(line) <= SMALL_FRAME - 232 + len(echoed), line


async def test_a_message_too_large_for_a_reply_once_stored_is_refused(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", max_frame_bytes=SMALL_FRAME) as srv,
        open_user_wire(srv, "admin") as admin,
    ):
        await channel_with_queue(admin)
        # The largest data one frame can carry: the line is exactly the limit,
        # but stored with id, time and publisher it would not fit a reply.
        data = b'"' + b"x" * (SMALL_FRAME - 38 - 2) + b'"'
        assert len(publish_line(data)) == SMALL_FRAME
        error = expect_error(await admin.call_raw(publish_line(data)), "limit_exceeded")
        assert (error["limit"], error["max"]) == ("max_frame_bytes", SMALL_FRAME)
        # protocol.md: the stored form may take max_frame_bytes - 280 bytes.
        length = SMALL_FRAME - 280 - stored_size(b"", 1, LONGEST_STAMP, "admin")
        data = b'"' + b"x" * (length - 2) + b'"'
        assert (await admin.call_raw(publish_line(data)))["ok"] is True
        await admin.ok("publish", channel="c", data="next")
        line = await pull_line(admin, max=10, id=1)
        head = b'{"ok":true,"id":1,"messages":['
        assert line.startswith(head) and line.endswith(b"]}")
        message = line[len(head) : -2]
        assert orjson.loads(message)["data"] == orjson.loads(data)  # one message only
        echoed = len(b',"id":1')
        assert len(line) == len(message) + 25 + echoed
        # Within the frame: 253 bytes to spare, less the attempt's digits and the id.
        assert len(line) <= SMALL_FRAME - 253 + echoed


async def test_numbers_may_grow_when_the_server_encodes_them(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", max_frame_bytes=SMALL_FRAME) as srv,
        open_user_wire(srv, "admin") as admin,
    ):
        await channel_with_queue(admin)
        data = b"[" + b",".join([b"1e15"] * 20) + b"]"
        assert (await admin.call_raw(publish_line(data)))["ok"] is True
        line = await pull_line(admin)
        delivered = b"[" + b",".join([b"1000000000000000.0"] * 20) + b"]"
        assert b'"data":' + delivered + b"," in line
        # protocol.md: such an array grows to at most 3.8 times its size...
        assert len(delivered) <= 3.8 * len(data)
        # ... so one that fits in a frame as sent may be refused as stored.
        count = (SMALL_FRAME - 38 - 2 + 1) // 5
        data = b"[" + b",".join([b"1e15"] * count) + b"]"
        assert len(publish_line(data)) <= SMALL_FRAME
        error = expect_error(await admin.call_raw(publish_line(data)), "limit_exceeded")
        assert error["limit"] == "max_frame_bytes"


# --- ids of a re-created channel ---------------------------------------------


async def test_a_re_created_channel_starts_its_ids_at_one(alice: Wire) -> None:
    await channel_with_queue(alice)
    assert (await alice.ok("publish", channel="c", messages=[1, 2, 3]))["message_ids"] == [1, 2, 3]
    await alice.ok("channel.delete", name="c")
    await alice.ok("channel.create", name="c")
    channel = (await alice.ok("channel.get", name="c"))["channel"]
    assert (channel["published"], channel["queues"]) == (0, [])
    await alice.ok("subscribe", channel="c")
    assert (await alice.ok("publish", channel="c", data="new"))["message_ids"] == [1]
    messages = (await alice.ok("pull", channel="c", max=10))["messages"]
    assert [(m["id"], m["data"]) for m in messages] == [(1, "new")]


# --- the documentation agrees with the server --------------------------------


def test_the_server_info_example_is_what_a_default_server_answers() -> None:
    text = PROTOCOL_MD.read_text()
    section = text.split("\n### server.info\n", 1)[1].split("\n### ", 1)[0]
    reply = re.search(r"^< (\{.*\})$", section, re.MULTILINE)
    assert reply is not None
    documented = orjson.loads(reply[1])
    assert documented == {"ok": True, "id": 1, **server_info(Limits(), "log")}


def test_every_limit_server_info_reports_is_documented() -> None:
    limits_chapter = PROTOCOL_MD.read_text().split("\n## Limits\n", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `([a-z_]+)`(?:, `([a-z_]+)`)? \|", limits_chapter, re.M)
    names = {name for pair in documented for name in pair if name}
    reported = server_info(Limits(), "log")["limits"]
    assert isinstance(reported, dict)
    assert set(reported) <= names


# --- pure: wire functions ----------------------------------------------------


def parse_error(frame: bytes) -> dict[str, Any]:
    with pytest.raises(TcpmqError) as caught:
        wire_format.parse_frame(frame)
    return caught.value.to_wire()


@pytest.mark.parametrize("levels", [0, 1, 126, 127])
def test_parse_frame_accepts_up_to_the_limit(levels: int) -> None:
    request = wire_format.parse_frame(publish_line(nested(levels)))
    assert request["data"] == nested_value(levels)
    assert wire_format.encode_data(request["data"]) == nested(levels)


@pytest.mark.parametrize(
    ("value", "field", "levels"),
    [
        (nested_value(128), "data", 127),
        ([{"a": []}, nested_value(127)], "data", 127),
        (nested_value(127), "messages.1", 126),
        (nested_value(300), "data", 127),  # beyond what orjson encodes
    ],
    ids=["128", "mixed", "message", "300"],
)
def test_encode_data_refuses_deeper(value: object, field: str, levels: int) -> None:
    # A publish's data is checked as it is encoded, where it is cheap.
    with pytest.raises(BadRequest) as caught:
        wire_format.encode_data(value, field, levels)
    error = caught.value.to_wire()
    assert error["limit"] == "max_depth" and error["field"] == field, error


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        (b'{"op":"ping","data":' + nested(128) + b"}", "data"),
        (b'{"op":"pull","messages":[1,' + nested(127) + b"]}", "messages.1"),
        (b'{"messages":' + nested(128) + b"}", "messages.0"),
        (b'{"a":1,"b":{"c":' + nested(127) + b"}}", "b"),
        (nested(129), None),
        (b"[" * 2000, None),  # deeper than orjson parses, and unfinished
        (b"{" + b'"a":{' * 3000, None),
        (b"[" * 129, None),  # invalid JSON, but too deep first
        (b"[" * 129 + b"]" * 128 + b"}", None),
        (b'["\\"",' * 129, None),  # escaped quotes end no string
    ],
    ids=lambda value: repr(value)[:40],
)
def test_parse_frame_refuses_deeper(frame: bytes, field: str | None) -> None:
    error = parse_error(frame)
    assert error == {
        "code": "bad_request",
        "message": error["message"],
        "limit": "max_depth",
        "max": MAX_DEPTH,
        **({"field": field} if field else {}),
    }


def test_depth_check_only_walks_lines_with_many_brackets(monkeypatch: pytest.MonkeyPatch) -> None:
    walked: list[object] = []

    def walk(value: object, levels: int) -> bool:
        walked.append(value)
        return False

    monkeypatch.setattr(wire_format, "_deeper", walk)
    small = publish_line(b'"' + b"x" * 98 + b'"')
    long_flat = publish_line(b'{"text":"' + b"y" * 5000 + b'","n":[1,2,3]}')
    objects = b'{"op":"publish","channel":"c","messages":[' + b",".join([b'{"a":[1]}'] * 1000)
    for frame in (small, long_flat, publish_line(nested(MAX_DEPTH - 1)), objects + b"]}"):
        request = wire_format.parse_frame(frame)
        if "data" in request:
            wire_format.encode_data(request["data"])
        else:
            wire_format.encode_messages(request["messages"])
    assert walked == []
    # The data of a publish is walked at encoding, only when it may be too deep.
    wire_format.encode_data(wire_format.parse_frame(publish_line(nested(MAX_DEPTH)))["data"])
    assert walked
    walked.clear()
    wire_format.parse_frame(b'{"op":"ping","x":' + nested(MAX_DEPTH) + b"}")
    assert walked


def test_encode_data_names_its_field() -> None:
    assert wire_format.encode_data({"a": [1]}) == b'{"a":[1]}'
    with pytest.raises(BadRequest) as caught:
        wire_format.encode_data(object())
    assert caught.value.to_wire()["field"] == "data"
    with pytest.raises(BadRequest) as caught:
        wire_format.encode_data(2**64, "messages.4")
    assert caught.value.to_wire()["field"] == "messages.4"


def test_encode_messages_names_the_message() -> None:
    values: list[Any] = [1, "a", None, {"b": [2.5]}]
    assert wire_format.encode_messages(values) == [orjson.dumps(v) for v in values]
    for bad in (object(), 2**64, nested_value(300)):
        with pytest.raises(BadRequest) as caught:
            wire_format.encode_messages([*values, bad, "after"])
        assert caught.value.to_wire()["field"] == "messages.4"


@pytest.mark.parametrize(
    ("op", "fields", "field", "bounds"),
    [
        ("pull", {"channel": "c", "max": 0}, "max", {"min": 1}),
        ("pull", {"channel": "c", "max": 2**63}, "max", {"max": INT64_MAX}),
        ("pull", {"channel": "c", "max": INT64_MAX}, None, {}),
        ("pull", {"channel": "c", "wait": -0.5}, "wait", {"min": 0}),
        ("ack", {"channel": "c", "ids": [3, 0]}, "ids.1", {"min": 1}),
        ("ack", {"channel": "c", "ids": [2**63]}, "ids.0", {"max": INT64_MAX}),
        ("ack", {"channel": "c", "ids": []}, "ids", {"min": 1}),
        ("login", {"user": "u", "password": "p", "ttl": 0}, "ttl", {"min": 1}),
        ("login", {"user": "u", "password": ""}, "password", {"min": 1}),
        ("auth", {"token": "t" * 4097}, "token", {"max": 4096}),
        ("user.create", {"name": "u", "password": "1234567"}, "password", {"min": 8}),
        ("user.create", {"name": "u", "password": "p" * 1025}, "password", {"max": 1024}),
        ("publish", {"channel": "c", "messages": []}, "messages", {"min": 1}),
        # The ack timeout's range is a setting: the handler checks it, not the format.
        ("subscribe", {"channel": "c", "ack_timeout": 0}, None, {}),
    ],
    ids=repr,
)
def test_decode_fields_range_errors(
    op: str, fields: dict[str, Any], field: str | None, bounds: dict[str, int]
) -> None:
    if field is None:
        wire_format.decode_fields(op, fields)
        return
    with pytest.raises(BadRequest) as caught:
        wire_format.decode_fields(op, fields)
    error = caught.value.to_wire()
    assert error["field"] == field
    assert {key: error[key] for key in ("min", "max") if key in error} == bounds


def test_take_id_range() -> None:
    assert wire_format.take_id({"id": INT64_MIN}) == b',"id":-9223372036854775808'
    for rid in (INT64_MAX + 1, INT64_MIN - 1):
        with pytest.raises(BadRequest) as caught:
            wire_format.take_id({"id": rid})
        error = caught.value.to_wire()
        assert (error["field"], error["min"], error["max"]) == ("id", INT64_MIN, INT64_MAX)


# --- pure: server_info -------------------------------------------------------


def test_server_info_reports_every_setting_and_fixed_limit() -> None:
    limits = Limits(max_frame_bytes=4096, auth_timeout=2.5)
    info = server_info(limits, "memory")
    assert info["server"] == "tcpmq"
    assert info["version"] == "0.1.0"
    assert info["protocol"] == 1
    assert info["store"] == "memory"
    reported = info["limits"]
    assert isinstance(reported, dict)
    assert list(reported) == [spec.name for spec in fields(Limits)] + list(FIXED_LIMITS)
    assert reported["max_frame_bytes"] == 4096 and reported["auth_timeout"] == 2.5
    assert {name: reported[name] for name in FIXED_LIMITS} == FIXED_LIMITS
    orjson.dumps(info)  # plain JSON values only
