"""Wire format: request models, the request decoder, and reply encoders. No I/O.

A request line goes through three steps, each raising a `TcpmqError` with the
code protocol.md assigns to that kind of failure:

1. `parse_frame` turns the line into a JSON object (`bad_json`, `bad_request`);
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
from dataclasses import dataclass
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
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Password = Annotated[
    str, StringConstraints(min_length=MIN_PASSWORD_CHARS, max_length=MAX_PASSWORD_CHARS)
]
Role = Literal["user", "admin"]
MessageId = Annotated[int, Field(ge=1)]


class Request(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class NoFields(Request):
    pass


class AuthRequest(Request):
    token: Annotated[str, StringConstraints(max_length=MAX_TOKEN_CHARS)]


class LoginRequest(Request):
    user: Name
    password: Annotated[str, StringConstraints(min_length=1, max_length=MAX_PASSWORD_CHARS)]
    ttl: Annotated[int, Field(ge=1)] | None = None


class UserCreateRequest(Request):
    name: Name
    password: Password
    role: Role = "user"


class NameRequest(Request):
    name: Name


class SubscribeRequest(Request):
    channel: Name
    queue: Name | None = None
    ack_timeout: Annotated[float, Field(gt=0)] | None = None


class ChannelRequest(Request):
    channel: Name


class QueueDeleteRequest(Request):
    channel: Name
    queue: Name


class PublishRequest(Request):
    channel: Name
    # `data` may legitimately be null, so "absent" is a separate sentinel.
    data: Any = Field(default_factory=lambda: _ABSENT)
    messages: Annotated[list[Any], Field(min_length=1)] | None = None


class PullRequest(Request):
    channel: Name
    queue: Name | None = None
    max: Annotated[int, Field(ge=1)] = 1
    wait: Annotated[float, Field(ge=0)] = 0.0


class AckRequest(Request):
    channel: Name
    queue: Name | None = None
    ids: Annotated[list[MessageId], Field(min_length=1)]


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
    "help": OpSpec(NoFields, "", "list the ops"),
    "user.create": OpSpec(UserCreateRequest, "name, password, role?", "create a user"),
    "user.list": OpSpec(NoFields, "", "list users"),
    "user.get": OpSpec(NameRequest, "name", "show a user"),
    "user.delete": OpSpec(NameRequest, "name", "delete a user, its queues and sessions"),
    "channel.create": OpSpec(NameRequest, "name", "create a channel"),
    "channel.list": OpSpec(NoFields, "", "list channels"),
    "channel.get": OpSpec(NameRequest, "name", "show a channel with its queues"),
    "channel.delete": OpSpec(NameRequest, "name", "delete a channel and its queues"),
    "subscribe": OpSpec(
        SubscribeRequest, "channel, queue?, ack_timeout?", "add a queue to a channel"
    ),
    "queue.list": OpSpec(ChannelRequest, "channel", "list the queues of a channel"),
    "queue.delete": OpSpec(QueueDeleteRequest, "channel, queue", "delete a queue (unsubscribe)"),
    "publish": OpSpec(
        PublishRequest, "channel, data | messages", "put messages into every queue of a channel"
    ),
    "pull": OpSpec(PullRequest, "channel, queue?, max?, wait?", "take messages from a queue"),
    "ack": OpSpec(AckRequest, "channel, queue?, ids", "acknowledge delivered messages"),
    "nack": OpSpec(AckRequest, "channel, queue?, ids", "return delivered messages to the queue"),
}


def parse_frame(frame: bytes) -> dict[str, Any]:
    """Decode one frame into the request object.

    Raises:
        BadJson: not JSON, or not UTF-8.
        BadRequest: JSON, but not an object.
    """
    try:
        value = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise BadJson(f"invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequest("a request must be a JSON object")
    return value


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
    if isinstance(rid, int) and not _INT64_MIN <= rid <= _INT64_MAX:
        raise BadRequest("id out of the 64-bit range", field="id")
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

    Raises:
        BadRequest: naming the first offending field.
    """
    for key, value in fields.items():
        # Optional fields are omitted for their default, never null: only
        # `data` may be null, because null is a message like any other.
        if value is None and key != "data":
            raise BadRequest(f"{key} must not be null; omit it for its default", field=key)
    try:
        return OPS[op].model.model_validate(fields)
    except ValidationError as exc:
        raise _bad_request(exc) from None


def _bad_request(exc: ValidationError) -> BadRequest:
    error = exc.errors(include_url=False, include_context=False, include_input=False)[0]
    field = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
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


def publish_reply(head: bytes, message_id: int, queues: int) -> bytes:
    """The reply to a publish of one message, in one formatting step."""
    return b'{"ok":true%b,"message_ids":[%d],"queues":%d}\n' % (head, message_id, queues)


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


def encode_data(data: Any) -> bytes:
    """Serialise a message's data once, at publish.

    Raises:
        BadRequest: the value cannot be represented in JSON.
    """
    try:
        return orjson.dumps(data)
    except TypeError as exc:
        raise BadRequest(f"data cannot be encoded: {exc}", field="data") from None


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


def publish_fields(first_id: int, count: int, queues: int) -> bytes:
    """The encoded result fields of a publish reply (ids `first_id` onwards)."""
    ids = b",".join([b"%d" % i for i in range(first_id, first_id + count)])
    return b'"message_ids":[%b],"queues":%d}' % (ids, queues)


def pull_fields(heads: list[bytes], attempts: list[int]) -> bytes:
    """The encoded result fields of a pull reply, spliced from stored message bytes."""
    if not heads:
        return b'"messages":[]}'
    if attempts.count(1) == len(attempts):
        # First deliveries, nearly always: one join, no formatting per message.
        return b'"messages":[' + b"1},".join(heads) + b"1}]}"
    parts = [b"%b%d}" % (head, attempt) for head, attempt in zip(heads, attempts, strict=True)]
    return b'"messages":[' + b",".join(parts) + b"]}"
