"""Fuzzing over real sockets: hostile lines never get `internal`, never stop the server.

Three tiers:
- the fuzzer's framing oracle (`split_lines`, protocol.md's rules written out)
  agrees with the server's decoder however the bytes are split;
- hypothesis-made lines (JSON of every shape, requests of real ops with
  wrong fields, raw bytes), split at hypothesis-chosen boundaries, each get
  exactly one reply, in order, never `internal`, and a ping after them is
  answered;
- a bounded slice of the fuzzer (tcpmq.fuzz) against an in-process server on
  each store, and its command line against a `tcpmq serve` process.

TCPMQ_SLOW=1 runs the command line for a minute, checking the server's memory.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import PROTOCOL_OPS, REPLY_TIMEOUT, running_server
from processes import clean_env
from tcpmq.client import Client, connect
from tcpmq.errors import ErrorCode
from tcpmq.frame import FrameDecoder
from tcpmq.fuzz import (
    Budget,
    ContractBroken,
    FrameMaker,
    Tally,
    check_replies,
    fuzz,
    split_lines,
)
from tcpmq.server import Server

# The fuzz server's limits: a small frame limit makes lines near it cheap.
FUZZ_LIMITS: dict[str, Any] = {
    "max_frame_bytes": 16384,
    "max_queue_messages": 2000,
    "max_queue_bytes": 4 * 1024 * 1024,
    "max_channels": 100,
}
ERROR_CODES = {code.value for code in ErrorCode}


# --- the oracle ------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=40) | st.sampled_from([b"", b" \t", b"\r", b"x\r\r"])),
    cuts=st.lists(st.integers(min_value=0, max_value=2000)),
    limit=st.integers(min_value=1, max_value=30),
)
def test_oracle_agrees_with_the_server_decoder(
    lines: list[bytes], cuts: list[int], limit: int
) -> None:
    stream = b"\n".join(lines)
    framing = split_lines(stream, limit)
    decoder = FrameDecoder(limit)
    frames: list[bytes] = []
    bounds = sorted({0, len(stream), *(cut for cut in cuts if cut < len(stream))})
    for start, end in itertools.pairwise(bounds):
        frames.extend(decoder.feed(stream[start:end]))
    assert frames == framing.lines
    assert (decoder.error is not None) == framing.too_large


# --- the fuzzer's reply checker ------------------------------------------------------

PING = b'{"op":"ping","id":"p"}'
PONG = b'{"ok":true,"id":"p"}'
BAD_JSON = b'{"ok":false,"error":{"code":"bad_json","message":"m"}}'
INTERNAL = b'{"ok":false,"error":{"code":"internal","message":"m"}}'


@pytest.mark.parametrize(
    ("replies", "why"),
    [
        ([BAD_JSON], "a reply missing"),
        ([BAD_JSON, PONG, PONG], "more replies than lines"),
        ([PONG, BAD_JSON], "replies swapped: the echoed id is not its line's"),
        ([BAD_JSON, b'{"ok":false,"error":{"code":"oops","message":"m"}}'], "unknown code"),
        ([BAD_JSON, b'{"event":"bye","error":{"code":"bored"}}'], "undocumented bye"),
        ([b"not json", PONG], "not JSON"),
    ],
)
def test_the_checker_refuses_broken_replies(replies: list[bytes], why: str) -> None:
    with pytest.raises(ContractBroken):
        check_replies(Tally(), [b"garbage", PING], replies, too_large=False, complete=True)


def test_the_checker_counts_internal_and_keeps_the_line() -> None:
    tally = Tally()
    assert check_replies(tally, [b"garbage", PING], [INTERNAL, PONG], False, complete=True)
    assert (tally.internal, tally.internal_lines, tally.frames) == (1, [b"garbage"], 2)


def test_the_checker_takes_a_documented_bye_or_frame_too_large_as_the_end() -> None:
    bye = b'{"event":"bye","error":{"code":"shutting_down","message":"m"}}'
    assert not check_replies(Tally(), [b"x", PING], [bye], too_large=False, complete=True)
    too_large = b'{"ok":false,"error":{"code":"frame_too_large","message":"m","max":9}}'
    assert not check_replies(Tally(), [b"x"], [BAD_JSON, too_large], too_large=True, complete=True)


# --- hypothesis-made lines over a socket ----------------------------------------

_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
_json = st.recursive(
    _leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
_raw_values = st.sampled_from(
    [b"NaN", b"-Infinity", b"1e999", b'"\\ud800"', b'"\xff"', b'"a\x01b"', b"[" * 200, b"01"]
)


@st.composite
def _requests(draw: st.DrawFn) -> bytes:
    """A request of a real op: its fields named as the protocol does, with any values."""
    op = draw(st.sampled_from(sorted(PROTOCOL_OPS)))
    names = draw(
        st.lists(
            st.sampled_from(
                [
                    *("id", "channel", "queue", "name", "max", "wait", "ids", "data"),
                    *("messages", "ack_timeout", "token", "user", "password", "ttl", "role"),
                    "bogus",
                ]
            ),
            max_size=5,
        )
    )
    parts = [b'"op":' + orjson.dumps(op)]
    for name in names:
        value = draw(_raw_values) if draw(st.booleans()) else _dumps(draw(_json))
        parts.append(orjson.dumps(name) + b":" + value)
    return b"{" + b",".join(parts) + b"}"


def _dumps(value: Any) -> bytes:
    # The standard encoder writes any integer, and lone surrogates as invalid UTF-8.
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


_lines = st.one_of(
    _requests(),
    _json.map(_dumps),
    st.binary(max_size=64),
    st.text(max_size=40).map(lambda text: text.encode("utf-8", "surrogatepass")),
)


async def _exchange(server: Server, token: str | None, stream: bytes, cuts: list[int]) -> None:
    """Send `stream` (ending in a ping with id "last") cut at `cuts`; check every reply."""
    framing = split_lines(stream, server.config.limits.max_frame_bytes)
    assert not framing.too_large and not framing.tail
    reader, writer = await asyncio.open_connection(server.host, server.port, limit=1 << 24)
    try:
        assert orjson.loads(await reader.readline())["event"] == "hello"
        if token is not None:
            writer.write(orjson.dumps({"op": "auth", "token": token}) + b"\n")
            assert orjson.loads(await reader.readline())["ok"] is True
        bounds = sorted({0, len(stream), *(cut % len(stream) for cut in cuts)})
        for start, end in itertools.pairwise(bounds):
            writer.write(stream[start:end])
            await writer.drain()
        for line in framing.lines:
            reply = orjson.loads(await asyncio.wait_for(reader.readline(), REPLY_TIMEOUT))
            assert "event" not in reply, reply
            if reply["ok"] is False:
                assert reply["error"]["code"] in ERROR_CODES - {"internal"}, (line, reply)
            if "id" in reply:
                assert orjson.loads(line)["id"] == reply["id"], (line, reply)
        assert reply == {"ok": True, "id": "last"}
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.every_store
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lines=st.lists(_lines, min_size=1, max_size=12),
    cuts=st.lists(st.integers(min_value=0), max_size=30),
    authenticated=st.booleans(),
)
async def test_any_lines_split_anywhere_get_one_reply_each(
    server: Server, lines: list[bytes], cuts: list[int], authenticated: bool
) -> None:
    stream = b"".join(line.replace(b"\n", b"") + b"\n" for line in lines)
    stream += b'{"op":"ping","id":"last"}\n'
    token = server.mint_token("admin") if authenticated else None
    await _exchange(server, token, stream, cuts)


@pytest.mark.every_store
async def test_a_stream_sent_byte_by_byte(server: Server) -> None:
    maker = FrameMaker(random.Random(7), server.config.limits.max_frame_bytes)
    lines = [line for line in (maker.request() for _ in range(40)) if b"\n" not in line]
    stream = b"\n".join(lines) + b'\n{"op":"ping","id":"last"}\n'
    await _exchange(server, server.mint_token("admin"), stream, list(range(len(stream))))


# --- the fuzzer ---------------------------------------------------------------------


def _admin_of(server: Server) -> Any:
    url = f"tcpmq://{server.host}:{server.port}"

    async def admin() -> Client:
        return await connect(url, token=server.mint_token("admin"))

    return url, admin


@pytest.mark.every_store
async def test_a_fuzz_slice_gets_no_internal_and_every_reply(tmp_path: Path) -> None:
    async with running_server(tmp_path / "data", **FUZZ_LIMITS) as server:
        url, admin = _admin_of(server)
        tally = Tally()
        # Raises if a reply breaks the contract or the server stops answering.
        # A budget in lines, not seconds, so that a slow machine runs the same slice.
        await fuzz(url, admin, Budget(frames=10_000, seconds=50.0), tally, seed=1, workers=3)
        assert tally.internal == 0, tally.internal_lines
        assert tally.frames > 0
        # The slice reached past the parser into the ops, before and after auth.
        for code in ("ok", "bad_json", "bad_request", "unauthenticated", "not_found"):
            assert tally.codes[code] > 0, tally.codes
        # The server still works for a well-behaved client.
        async with connect(url, token=server.mint_token("admin")) as client:
            await client.ping()


async def _fuzz_command(*args: str, time_limit: float) -> tuple[int, dict[str, Any]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "tcpmq.fuzz", *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(),
    )
    out, err = await asyncio.wait_for(process.communicate(), time_limit)
    assert process.returncode is not None
    # The summary is the last JSON object on stdout.
    summary = orjson.loads(out[out.index(b"\n{") :])
    assert isinstance(summary, dict), (out, err)
    return process.returncode, summary


async def test_the_fuzz_command_runs_against_its_own_server(tmp_path: Path) -> None:
    status, summary = await _fuzz_command(
        *("--frames", "5000", "--seconds", "40", "--seed", "3", "--store", "memory"),
        *("--data-dir", str(tmp_path / "data")),
        time_limit=55,
    )
    assert status == 0, summary
    assert summary["internal"] == 0 and summary["failure"] is None, summary
    assert summary["frames"] >= 5000 and summary["server_alive_at_end"], summary


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_fuzz_soak_memory_stays_flat(tmp_path: Path) -> None:
    status, summary = await _fuzz_command(
        *("--frames", "100000000", "--seconds", "120", "--progress-every", "10"),
        *("--data-dir", str(tmp_path / "data")),
        time_limit=240,
    )
    assert status == 0, summary
    assert summary["internal"] == 0, summary
    # Coarse: what the fuzz lines can make the server keep is bounded by its
    # small limits, so its memory must not keep growing with the frames.
    assert summary["rss_end"] < 2 * summary["rss_start"] + 64 * 2**20, summary
