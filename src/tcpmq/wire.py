"""Wire format: request models, the request decoder, and reply encoders. No I/O.

A request line goes through three steps, each raising a `TcpmqError` with the
code protocol.md assigns to that kind of failure:

1. `parse_frame` turns the line into a JSON object (`bad_request` for a line
   nested deeper than `MAX_DEPTH`, valid JSON or not, then `bad_json`, then
   `bad_request` for a value that is not an object);
2. `take_id` and `take_op` remove `id` and `op` from it (`bad_request`,
   `unknown_op`), so a reply can echo the id even if the fields are wrong;
3. `decode_fields` validates the remaining fields against the op's frozen
   pydantic model (`bad_request` naming the field).

Replies are assembled from bytes: `reply_head(id)` is encoded once per request,
and a result is either a dict (encoded with orjson) or the already-encoded
fields of the hot-path replies (pull), spliced in without another pass.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import accumulate
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from . import PROTOCOL_VERSION, __version__
from .errors import BadJson, BadRequest, TcpmqError, UnknownOp

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
NAME_RE = re.compile(NAME_PATTERN)
NAME_RULE = "names are 1-64 characters of A-Z a-z 0-9 _ . - starting with a letter or digit"
# Request ids are for the client's own bookkeeping; 128 characters fits a UUID
# with a prefix and keeps echoed ids from amplifying replies.
MAX_ID_CHARS = 128
MAX_TOKEN_CHARS = 4096
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024
# Every integer of a request (ids included) fits a signed 64-bit integer, so
# any client language can hold it; pydantic's strict int alone takes any size.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# How deeply a request may nest objects and arrays, the request object being
# level 1. orjson refuses to encode more than 254 levels and to parse more
# than 1024, so without a limit of our own a deep message failed with
# whichever it met first. 128 is far beyond any real message and keeps a
# message's data (level 2 and below) well within what orjson encodes.
MAX_DEPTH = 128
# A line that nests MAX_DEPTH + 1 levels has at least that many opening and
# as many closing brackets: shorter lines need no depth check at all.
_MIN_TOO_DEEP_BYTES = 2 * (MAX_DEPTH + 1)

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Password = Annotated[
    str, StringConstraints(min_length=MIN_PASSWORD_CHARS, max_length=MAX_PASSWORD_CHARS)
]
Role = Literal["user", "admin"]
Access = Literal["private", "public"]
Right = Literal["publish", "subscribe"]
# At least one right when given; omitted, a grant gives and a revoke takes all.
Rights = Annotated[list[Right], Field(min_length=1, max_length=2)]
# Bounds are inclusive (ge/le, never gt/lt), because an error reports them as
# `min`/`max` and a client reads those as the first and last values allowed.
PositiveInt = Annotated[int, Field(ge=1, le=INT64_MAX)]
MessageId = PositiveInt


class Request(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class NoFields(Request):
    pass


class AuthRequest(Request):
    token: Annotated[str, StringConstraints(max_length=MAX_TOKEN_CHARS)]


class LoginRequest(Request):
    user: Name
    password: Annotated[str, StringConstraints(min_length=1, max_length=MAX_PASSWORD_CHARS)]
    ttl: PositiveInt | None = None


class UserCreateRequest(Request):
    name: Name
    password: Password
    role: Role = "user"


class NameRequest(Request):
    name: Name


Overflow = Literal["reject", "drop_oldest", "drop_new"]


class ChannelCreateRequest(Request):
    name: Name
    # Without it: the server's `default_channel_access`.
    access: Access | None = None


class ChannelGrantRequest(Request):
    name: Name
    user: Name
    rights: Rights | None = None


class ChannelUpdateRequest(Request):
    name: Name
    access: Access


class SubscribeRequest(Request):
    channel: Name
    queue: Name | None = None
    # The range is a server setting, checked (and reported) by the handler.
    ack_timeout: float | None = None
    # The queue's overflow policy and limits (the handler checks the limits
    # against the server's); omitted: unchanged, or a new queue's default.
    overflow: Overflow | None = None
    max_messages: PositiveInt | None = None
    max_bytes: PositiveInt | None = None


class QueueUpdateRequest(Request):
    channel: Name
    queue: Name
    overflow: Overflow | None = None
    max_messages: PositiveInt | None = None
    max_bytes: PositiveInt | None = None


class QueueListRequest(Request):
    # Without a channel: every queue of every channel.
    channel: Name | None = None


class QueueRequest(Request):
    channel: Name
    queue: Name


class PeekRequest(Request):
    channel: Name
    queue: Name | None = None
    max: PositiveInt = 1


class HelpRequest(Request):
    # An op's name, such as "pull" or "channel.create" (not a Name: ops have dots).
    name: Annotated[str, StringConstraints(max_length=64)] | None = None


class UserPasswdRequest(Request):
    name: Name | None = None
    password: Password


class UserRequest(Request):
    name: Name | None = None


class BackupRequest(Request):
    # A directory on the broker's machine; PATH_MAX on Linux.
    path: Annotated[str, StringConstraints(min_length=1, max_length=4096)]


class PublishRequest(Request):
    channel: Name
    # `data` may legitimately be null, so "absent" is a separate sentinel.
    data: Any = Field(default_factory=lambda: _ABSENT)
    messages: Annotated[list[Any], Field(min_length=1)] | None = None


class PullRequest(Request):
    channel: Name
    queue: Name | None = None
    max: PositiveInt = 1
    wait: Annotated[float, Field(ge=0)] = 0.0


class AckRequest(Request):
    channel: Name
    queue: Name | None = None
    # fail_fast: a list of bad ids costs one error, not one per element.
    ids: Annotated[list[MessageId], Field(min_length=1, fail_fast=True)]


class _Absent:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<absent>"


_ABSENT: Any = _Absent()


def is_absent(value: object) -> bool:
    return value is _ABSENT


@dataclass(frozen=True, slots=True)
class OpSpec:
    model: type[Request]
    fields: str
    summary: str


OPS: dict[str, OpSpec] = {
    "ping": OpSpec(NoFields, "", "check that the server answers"),
    "auth": OpSpec(AuthRequest, "token", "authenticate with a token"),
    "login": OpSpec(LoginRequest, "user, password, ttl?", "authenticate and get a token"),
    "whoami": OpSpec(NoFields, "", "show the authenticated user"),
    "help": OpSpec(HelpRequest, "name?", "list the ops, or show one"),
    "server.info": OpSpec(NoFields, "", "show the server's version, store and limits"),
    "user.create": OpSpec(UserCreateRequest, "name, password, role?", "create a user"),
    "user.list": OpSpec(NoFields, "", "list users"),
    "user.get": OpSpec(NameRequest, "name", "show a user"),
    "user.delete": OpSpec(NameRequest, "name", "delete a user, its queues and sessions"),
    "user.passwd": OpSpec(
        UserPasswdRequest, "name?, password", "change a password (and revoke the tokens)"
    ),
    "user.revoke_tokens": OpSpec(UserRequest, "name?", "refuse every token issued so far"),
    "channel.create": OpSpec(ChannelCreateRequest, "name, access?", "create a channel"),
    "channel.list": OpSpec(NoFields, "", "list channels"),
    "channel.get": OpSpec(NameRequest, "name", "show a channel with its queues and grants"),
    "channel.delete": OpSpec(NameRequest, "name", "delete a channel and its queues"),
    "channel.grant": OpSpec(
        ChannelGrantRequest, "name, user, rights?", "give a user publish/subscribe rights"
    ),
    "channel.revoke": OpSpec(
        ChannelGrantRequest, "name, user, rights?", "take rights (and queues) from a user"
    ),
    "channel.update": OpSpec(
        ChannelUpdateRequest, "name, access", "make a channel private or public"
    ),
    "subscribe": OpSpec(
        SubscribeRequest,
        "channel, queue?, ack_timeout?, overflow?, max_messages?, max_bytes?",
        "add a queue to a channel",
    ),
    "queue.list": OpSpec(
        QueueListRequest, "channel?", "list the queues of a channel, or of every channel"
    ),
    "queue.delete": OpSpec(QueueRequest, "channel, queue", "delete a queue (unsubscribe)"),
    "queue.purge": OpSpec(QueueRequest, "channel, queue", "drop every ready message of a queue"),
    "queue.update": OpSpec(
        QueueUpdateRequest,
        "channel, queue, overflow?, max_messages?, max_bytes?",
        "change what a full queue does, and its limits",
    ),
    "stats": OpSpec(NoFields, "", "show rates, connections, queues and the store (admins)"),
    "store.backup": OpSpec(
        BackupRequest, "path", "write a consistent copy of the data dir into path (admins)"
    ),
    "publish": OpSpec(
        PublishRequest, "channel, data | messages", "put messages into every queue of a channel"
    ),
    "pull": OpSpec(PullRequest, "channel, queue?, max?, wait?", "take messages from a queue"),
    "peek": OpSpec(PeekRequest, "channel, queue?, max?", "show ready messages without taking them"),
    "ack": OpSpec(AckRequest, "channel, queue?, ids", "acknowledge delivered messages"),
    "nack": OpSpec(AckRequest, "channel, queue?, ids", "return delivered messages to the queue"),
}


# The fields each op's model knows: any other is refused before validation.
_FIELD_NAMES: dict[str, frozenset[str]] = {
    op: frozenset(spec.model.model_fields) for op, spec in OPS.items()
}


def check_containers(frame: bytes, maximum: int) -> None:
    """Refuse a line that opens more than `maximum` objects and arrays.

    Parsing costs the server CPU by the objects it makes: a 1 MiB line of
    `[]` is 350,000 lists, ~100 ms, which no turn budget can split. Each
    container takes at least 2 bytes, so only lines longer than
    2 * `maximum` need this; brackets inside strings are not counted.

    Raises:
        BadRequest: with limit `max_containers`.
    """
    if frame.count(b"[") + frame.count(b"{") > maximum and _containers(frame) > maximum:
        raise BadRequest(
            f"request has more than {maximum} objects and arrays",
            limit="max_containers",
            maximum=maximum,
        )


# Before authentication only auth, login and ping are taken, and none has a
# field that is an object or an array: a line may hold this many, enough for
# the errors a person typing makes, and costs microseconds to parse.
PREAUTH_CONTAINERS = 128


def check_preauth_containers(frame: bytes) -> None:
    """Refuse an unauthenticated line with more than PREAUTH_CONTAINERS objects
    and arrays, before it is parsed. A too deep one is left to `parse_frame`,
    whose error names the field (parsing stops at orjson's depth limit).

    Raises:
        BadRequest: with limit `max_containers`.
    """
    most = PREAUTH_CONTAINERS
    if (
        frame.count(b"[") + frame.count(b"{") > most
        and _containers(frame) > most
        and _line_depth(frame) <= MAX_DEPTH
    ):
        raise BadRequest(
            f"request has more than {most} objects and arrays (before authentication)",
            limit="max_containers",
            maximum=most,
        )


def parse_frame(frame: bytes) -> dict[str, Any]:
    """Decode one frame into the request object (lines longer than twice
    `max_containers` have passed `check_containers` first).

    Raises:
        BadJson: not JSON, or not UTF-8.
        BadRequest: nested deeper than `MAX_DEPTH`, or not an object.
    """
    try:
        value = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        # Nesting is checked before validity, so a too deep line gets the same
        # error either way. (orjson gives up on a deep line with whatever error
        # it meets first: "depth limit exceeded" past 1024 levels, sometimes
        # "failed to allocate memory" on unclosed brackets.)
        if frame.count(b"{") + frame.count(b"[") > MAX_DEPTH and _line_depth(frame) > MAX_DEPTH:
            raise _too_deep(None) from None
        raise BadJson(_not_json(frame, exc)) from None
    if len(frame) >= _MIN_TOO_DEEP_BYTES and _may_be_too_deep(value, frame):
        _check_depth(value)
    if not isinstance(value, dict):
        raise BadRequest("a request must be a JSON object")
    return value


# A publish's message data is checked as it is encoded (see `encode_data`),
# where the encoded length of each message rules out nearly all of the walk.
_CHECKED_AT_ENCODING = frozenset({"data", "messages"})


# A line of words, as a person types at nc or telnet: `help`, `PING`, `channel.list`.
_WORDS = re.compile(rb"[A-Za-z][A-Za-z0-9_.]*(?:[ \t]+\S+)*")


def _not_json(frame: bytes, exc: Exception) -> str:
    """The bad_json message: for a typed word, how to say it in JSON.

    The line itself is never repeated: it may hold a password.
    """
    words = frame.strip()
    if _WORDS.fullmatch(words) is None:
        return f"invalid JSON: {exc}"
    word = words.split()[0].decode().lower()
    if word not in OPS or word == "help":
        return 'not JSON: send one JSON object per line, such as {"op":"help"}'
    fields = f", with {OPS[word].fields}" if OPS[word].fields else ""
    return (
        f'not JSON: send one JSON object per line, such as {{"op":"{word}"}}{fields}'
        ' ({"op":"help"} lists the ops)'
    )


def _may_be_too_deep(value: object, frame: bytes) -> bool:
    """False when cheap tests show that the request is within `MAX_DEPTH`.

    They spare nearly every request the walk of `_check_depth`, in order of
    cost: a request whose fields are all scalars is 1 level deep (so is a
    publish whose other fields are: its data is checked at encoding); a line
    with no more than MAX_DEPTH opening brackets cannot nest deeper. Counting
    them costs about half a nanosecond a byte, more than orjson takes to parse
    a long string, so it comes second.
    """
    if type(value) is dict:
        publish = value.get("op") == "publish"
        for key, item in value.items():
            kind = type(item)
            if (kind is dict or kind is list) and not (publish and key in _CHECKED_AT_ENCODING):
                break
        else:
            return False
    return frame.count(b"{") + frame.count(b"[") > MAX_DEPTH


def _check_depth(value: object) -> None:
    """Raise `BadRequest` (limit max_depth) if `value` nests deeper than `MAX_DEPTH`.

    The error names the top-level field, or for `messages` the message
    (`messages.3`), as `encode_messages` does: a batch publisher learns which
    message was refused.
    """
    if type(value) is not dict:
        if _deeper(value, MAX_DEPTH):
            raise _too_deep(None)
        return
    # The request object is level 1, so each field may nest MAX_DEPTH - 1 more.
    publish = value.get("op") == "publish"
    for key, item in value.items():
        if publish and key in _CHECKED_AT_ENCODING:
            continue
        if _deeper(item, MAX_DEPTH - 1):
            field = key
            if key == "messages" and type(item) is list:
                index = next(i for i, x in enumerate(item) if _deeper(x, MAX_DEPTH - 2))
                field = f"messages.{index}"
            raise _too_deep(field)


def _deeper(value: object, levels: int) -> bool:
    """Whether `value` (parsed JSON) nests objects and arrays more than `levels` deep.

    Recursion stops at `levels`, so it stays far inside Python's own limit.
    """
    if type(value) is dict:
        children: Iterable[object] = value.values()
    elif type(value) is list:
        children = value
    else:
        return False
    if levels == 0:
        return True
    levels -= 1
    for child in children:
        kind = type(child)
        # The type test first: most values are scalars, and a call costs more.
        if (kind is dict or kind is list) and _deeper(child, levels):
            return True
    return False


_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_STRING = re.compile(rb'"[^"]*"?')
# Opening brackets become +1 and closing ones -1 (0xff as a signed byte).
_BRACKET_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))


def _outside_strings(line: bytes) -> bytes:
    """`line` without its JSON strings, valid JSON or not."""
    if b"\\" in line:
        line = _ESCAPE.sub(b"", line)  # so that an escaped quote ends no string
    if b'"' in line:
        line = _STRING.sub(b"", line)  # an unclosed string runs to the end
    return line


def _containers(line: bytes) -> int:
    """How many objects and arrays `line` opens outside its strings."""
    line = _outside_strings(line)
    return line.count(b"[") + line.count(b"{")


def _line_depth(line: bytes) -> int:
    """How deep the brackets outside strings nest in `line`, valid JSON or not.

    For valid JSON this is the depth of the value; the scan runs only when
    parsing failed, to tell a too deep line from a malformed one.
    """
    line = _outside_strings(line)
    steps = array("b", line.translate(_BRACKET_STEPS, _NOT_BRACKETS))
    return max(accumulate(steps), default=0)


def _too_deep(field: str | None) -> BadRequest:
    return BadRequest(
        f"request nested deeper than {MAX_DEPTH} levels (the request object is level 1)",
        field=field,
        limit="max_depth",
        maximum=MAX_DEPTH,
    )


def take_id(request: dict[str, Any]) -> bytes:
    """Remove `id` from the request and return it encoded for the reply (b"" if none).

    Raises:
        BadRequest: the id is neither a short string nor a 64-bit integer.
    """
    if "id" not in request:
        return b""
    rid = request.pop("id")
    if rid is None or isinstance(rid, bool) or not isinstance(rid, int | str):
        raise BadRequest("id must be a string or an integer", field="id")
    if isinstance(rid, str) and len(rid) > MAX_ID_CHARS:
        raise BadRequest(f"id longer than {MAX_ID_CHARS} characters", field="id")
    if isinstance(rid, int) and not INT64_MIN <= rid <= INT64_MAX:
        raise BadRequest(
            "id out of the 64-bit range", field="id", minimum=INT64_MIN, maximum=INT64_MAX
        )
    return b',"id":' + orjson.dumps(rid)


def take_op(request: dict[str, Any]) -> str:
    """Remove `op` from the request and return it.

    Raises:
        BadRequest: `op` missing or not a string.
        UnknownOp: no such op.
    """
    op = request.pop("op", None)
    if not isinstance(op, str):
        raise BadRequest("op must be a string naming the operation", field="op")
    if op not in OPS:
        shown = op if len(op) <= 64 else op[:64] + "..."
        raise UnknownOp(f'no op {shown!r}; send {{"op":"help"}} for the list')
    return op


def decode_fields(op: str, fields: dict[str, Any]) -> Request:
    """Validate the fields of a known op.

    Validation stops at the first error, so a hostile request costs work in
    proportion to where its first error is, not to its length: unknown and
    null fields are refused here, in the request's order, before the model
    sees them (pydantic would make one error per unknown key), and the one
    list that is validated per element, `ids`, fails fast.

    Raises:
        BadRequest: naming the first offending field.
    """
    known = _FIELD_NAMES[op]
    for key, value in fields.items():
        if key not in known:
            shown = key if len(key) <= 64 else key[:64] + "..."
            raise BadRequest(f"unknown field {shown!r}", field=shown)
        # Optional fields are omitted for their default, never null: only
        # `data` may be null, because null is a message like any other.
        if value is None and key != "data":
            raise BadRequest(f"{key} must not be null; omit it for its default", field=key)
    try:
        return OPS[op].model.model_validate(fields)
    except ValidationError as exc:
        raise _bad_request(exc) from None


# Pydantic error types that mean "out of range": which bound was broken, the
# key of its value in the error's context, and what the bound counts.
_BOUNDS: dict[str, tuple[str, str, str]] = {
    "greater_than_equal": ("min", "ge", ""),
    "less_than_equal": ("max", "le", ""),
    "too_short": ("min", "min_length", " items"),
    "too_long": ("max", "max_length", " items"),
    "string_too_short": ("min", "min_length", " characters"),
    "string_too_long": ("max", "max_length", " characters"),
}


def _bad_request(exc: ValidationError) -> BadRequest:
    error = exc.errors(include_url=False, include_context=True, include_input=False)[0]
    field = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    bound = _BOUNDS.get(kind)
    if bound is not None:
        side, key, unit = bound
        value = error.get("ctx", {})[key]
        if value == 1:
            unit = unit.removesuffix("s")  # "at least 1 item"
        if side == "min":
            return BadRequest(f"{field}: at least {value}{unit}", field=field, minimum=value)
        return BadRequest(f"{field}: at most {value}{unit}", field=field, maximum=value)
    if kind == "extra_forbidden":
        message = f"unknown field {field!r}"
    elif kind == "missing":
        message = f"missing field {field!r}"
    elif kind == "string_pattern_mismatch":
        message = f"{field}: {NAME_RULE}"
    else:
        message = f"{field}: {error['msg']}"
    return BadRequest(message, field=field or None)


def reply_ok(head: bytes, result: dict[str, Any] | bytes | None) -> bytes:
    """A success reply line.

    `head` is `take_id`'s result. `result` is a dict of result fields, or the
    result fields already encoded as `"key":value,...}` (without the opening
    brace, with the closing one), or None for a bare `{"ok":true}`.
    """
    if result is None or (isinstance(result, dict) and not result):
        return b'{"ok":true' + head + b"}\n"
    if isinstance(result, dict):
        return b'{"ok":true' + head + b"," + orjson.dumps(result)[1:] + b"\n"
    return b'{"ok":true' + head + b"," + result + b"\n"


def publish_reply(head: bytes, first_id: int, count: int, queues: int) -> bytes:
    """The reply to a publish of `count` messages with ids from `first_id` on."""
    if count == 1:  # nearly always: one formatting step
        return b'{"ok":true%b,"message_ids":[%d],"queues":%d}\n' % (head, first_id, queues)
    ids = b",".join([b"%d" % i for i in range(first_id, first_id + count)])
    return b'{"ok":true%b,"message_ids":[%b],"queues":%d}\n' % (head, ids, queues)


def reply_error(head: bytes, error: TcpmqError) -> bytes:
    return b'{"ok":false' + head + b',"error":' + orjson.dumps(error.to_wire()) + b"}\n"


def hello(max_frame_bytes: int) -> bytes:
    return (
        orjson.dumps(
            {
                "event": "hello",
                "server": "tcpmq",
                "version": __version__,
                "protocol": PROTOCOL_VERSION,
                "auth": ["token", "password"],
                "max_frame_bytes": max_frame_bytes,
            }
        )
        + b"\n"
    )


def bye(error: TcpmqError) -> bytes:
    return orjson.dumps({"event": "bye", "error": error.to_wire()}) + b"\n"


def encode_data(data: Any, field: str = "data", levels: int = MAX_DEPTH - 1) -> bytes:
    """Serialise a message's data once, at publish, checking how deep it nests.

    `field` is the request field the value came from, named in the error;
    `levels` how deep it may nest (`data` sits at level 2 of the request, an
    element of `messages` at level 3). The check costs one length test for
    nearly every message: a value nesting deeper than `levels` has more than
    `levels` opening and closing brackets, so a shorter encoding cannot.

    Raises:
        BadRequest: the value cannot be represented in JSON, or nests too deep.
    """
    try:
        encoded = orjson.dumps(data)
    except TypeError as exc:  # orjson.JSONEncodeError included
        if "Recursion limit" in str(exc):  # orjson stops at 254 levels
            raise _too_deep(field) from None
        raise BadRequest(f"{field} cannot be encoded: {exc}", field=field) from None
    if len(encoded) > _SHORTEST_TOO_DEEP and _too_deep_data(encoded, data, levels):
        raise _too_deep(field)
    return encoded


# No data shorter than this can nest too deep, wherever it sits in a request.
_SHORTEST_TOO_DEEP = 2 * (MAX_DEPTH - 2)


def _too_deep_data(encoded: bytes, data: Any, levels: int) -> bool:
    return (
        len(encoded) > 2 * levels
        and encoded.count(b"[") + encoded.count(b"{") > levels
        and _deeper(data, levels)
    )


def encode_messages(values: list[Any]) -> list[bytes]:
    """Serialise the `messages` of a batch publish, one bytes object per message.

    Raises:
        BadRequest: naming the first message that cannot be encoded or nests
            too deep (`messages.N`).
    """
    dumps = orjson.dumps
    try:
        # One try for the whole batch: a failure is rare, and only then is
        # each message encoded on its own to name the one at fault.
        encoded = [dumps(value) for value in values]
    except TypeError:
        encoded = []
    deep_from = 2 * _MESSAGE_LEVELS
    if len(encoded) == len(values) and all(len(each) <= deep_from for each in encoded):
        return encoded  # every message too short to nest too deep
    return [
        encode_data(value, f"messages.{index}", _MESSAGE_LEVELS)
        for index, value in enumerate(values)
    ]


# An element of `messages` is at level 3 of the request (request, list, element).
_MESSAGE_LEVELS = MAX_DEPTH - 2


def encode_message_head(message_id: int, data: bytes, stamp: bytes, publisher: bytes) -> bytes:
    """A delivered message without its attempt number: `{"id":..,"attempt":`.

    Built once at publish; each delivery appends `<attempt>}`. `stamp` is the
    publish time made by `encode_timestamp` (once per batch), `publisher` the
    publisher's name, both already JSON-encoded.
    """
    return b'{"id":%d,"data":%b,"published_at":%b,"publisher":%b,"attempt":' % (
        message_id,
        data,
        stamp,
        publisher,
    )


def encode_timestamp(seconds: float) -> bytes:
    """`seconds` to the microsecond, as JSON: the digits of `repr(round(seconds, 6))`.

    Formatting with "%.6f" and dropping trailing zeros gives the same digits
    (for any time before 2106) at a third of the cost, once per message.
    """
    text = b"%.6f" % seconds
    text = text.rstrip(b"0")
    return text + b"0" if text.endswith(b".") else text


def head_id(head: bytes) -> int:
    """The id of a message head made by `encode_message_head`: `{"id":<id>,...`."""
    return int(head[6 : head.index(b",", 6)])


_PUBLISHED_AT = b',"published_at":'


def head_published_at(head: bytes) -> float:
    """The publish time in a message head made by `encode_message_head`.

    Searched from the end: the data before it may contain the same bytes,
    but nothing after it can (a publisher's name needs no escaping).
    """
    start = head.rindex(_PUBLISHED_AT) + len(_PUBLISHED_AT)
    return float(head[start : head.index(b",", start)])


def pull_fields(heads: list[bytes], attempts: list[int]) -> bytes:
    """The encoded result fields of a pull reply, spliced from stored message bytes."""
    if not heads:
        return b'"messages":[]}'
    if attempts.count(1) == len(attempts):
        # First deliveries, nearly always: one join, no formatting per message.
        return b'"messages":[' + b"1},".join(heads) + b"1}]}"
    parts = [b"%b%d}" % (head, attempt) for head, attempt in zip(heads, attempts, strict=True)]
    return b'"messages":[' + b",".join(parts) + b"]}"
