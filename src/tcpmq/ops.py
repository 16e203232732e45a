"""The op handlers: what each request does to the broker state.

A handler takes the session it runs for and its validated request, checks
permissions and the configurable limits, and returns a `Result` (see
pending.py) or a `Pending` for replies that come later. Handlers raise
`TcpmqError`s for refusals; the session turns them into error replies. They
never touch sockets.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import wire
from .auth import DUMMY_HASH
from .broker import Delivery, Queue
from .errors import AlreadyExists, AuthFailed, BadRequest, Forbidden, TcpmqError
from .pending import Pending, Result
from .users import User

if TYPE_CHECKING:
    from .session import Session

Handler = Callable[["Session", Any], Result | Pending]


def _require_admin(session: Session) -> None:
    if not session.is_admin:
        raise Forbidden("only admins may do this")


def _user(session: Session) -> User:
    user = session.user
    assert user is not None, "the session's state table admits only auth/login/ping before auth"
    return user


# -- session --------------------------------------------------------------


def op_ping(session: Session, request: wire.NoFields) -> Result:
    return None


def op_auth(session: Session, request: wire.AuthRequest) -> Result:
    claims = session.server.signer.verify(request.token)
    user = session.server.users.find(claims.user)
    if user is None or user.uid != claims.uid:
        raise AuthFailed("the token's user no longer exists")
    session.authenticate(user)
    return {"user": user.name, "role": user.role, "expires_at": claims.expires_at}


def op_login(session: Session, request: wire.LoginRequest) -> Pending:
    server = session.server
    limits = server.config.limits
    ttl = limits.default_token_ttl if request.ttl is None else request.ttl
    if ttl > limits.max_token_ttl:
        raise BadRequest(f"ttl: at most {limits.max_token_ttl} seconds", field="ttl")
    user = server.users.find(request.user)
    pending = Pending()
    stored = DUMMY_HASH if user is None else user.password_hash
    check = server.check_password(request.password, stored)

    def checked(task: asyncio.Future[bool]) -> None:
        if pending.done:
            return
        # The user may have been deleted (or replaced) while the hash ran.
        if not task.result() or user is None or server.users.find(user.name) is not user:
            pending.complete(AuthFailed("wrong user name or password"))
            return
        try:
            session.authenticate(user)
        except TcpmqError as exc:
            pending.complete(exc)
            return
        now = time.time()
        token = server.signer.mint(user.name, user.role, user.uid, ttl, now=now)
        pending.complete(
            {"user": user.name, "role": user.role, "token": token, "expires_at": int(now) + ttl}
        )

    check.add_done_callback(checked)
    return pending


def op_whoami(session: Session, request: wire.NoFields) -> Result:
    user = _user(session)
    return {"user": user.name, "role": user.role}


def op_help(session: Session, request: wire.NoFields) -> Result:
    return {
        "ops": [
            {"op": name, "fields": spec.fields, "summary": spec.summary}
            for name, spec in sorted(wire.OPS.items())
        ]
    }


# -- users ------------------------------------------------------------------


def op_user_create(session: Session, request: wire.UserCreateRequest) -> Pending:
    _require_admin(session)
    server = session.server
    if server.users.find(request.name) is not None:
        raise AlreadyExists(f"user {request.name!r} already exists")
    pending = Pending()
    hashing = server.make_password_hash(request.password)

    def hashed(task: asyncio.Future[str]) -> None:
        if pending.done:
            return
        try:
            user = server.users.create(request.name, request.role, task.result(), time.time())
        except TcpmqError as exc:
            pending.complete(exc)
            return
        pending.complete({"user": user.info()})

    hashing.add_done_callback(hashed)
    return pending


def op_user_list(session: Session, request: wire.NoFields) -> Result:
    _require_admin(session)
    return {"users": [user.info() for user in session.server.users.list()]}


def op_user_get(session: Session, request: wire.NameRequest) -> Result:
    if not session.is_admin and _user(session).name != request.name:
        raise Forbidden("only admins may see other users")
    return {"user": session.server.users.get(request.name).info()}


def op_user_delete(session: Session, request: wire.NameRequest) -> Result:
    _require_admin(session)
    server = session.server
    user = server.users.delete(request.name)
    server.broker.delete_queues_of(user.name)
    server.end_sessions_of(user.name)
    return None


# -- channels ---------------------------------------------------------------


def op_channel_create(session: Session, request: wire.NameRequest) -> Result:
    channel = session.server.broker.create_channel(request.name, _user(session).name, time.time())
    return {"channel": channel.info()}


def op_channel_list(session: Session, request: wire.NoFields) -> Result:
    channels = session.server.broker.channels
    return {"channels": [channels[name].info() for name in sorted(channels)]}


def op_channel_get(session: Session, request: wire.NameRequest) -> Result:
    channel = session.server.broker.channel(request.name)
    info = channel.info()
    info["queues"] = [channel.queues[name].info() for name in sorted(channel.queues)]
    return {"channel": info}


def op_channel_delete(session: Session, request: wire.NameRequest) -> Result:
    broker = session.server.broker
    channel = broker.channel(request.name)
    if not session.is_admin and channel.owner != _user(session).name:
        raise Forbidden(f"only the owner of channel {channel.name!r} or an admin may delete it")
    broker.delete_channel(request.name)
    return None


# -- queues -----------------------------------------------------------------


def op_subscribe(session: Session, request: wire.SubscribeRequest) -> Result:
    limits = session.server.config.limits
    ack_timeout = request.ack_timeout
    if ack_timeout is not None and not (
        limits.min_ack_timeout <= ack_timeout <= limits.max_ack_timeout
    ):
        raise BadRequest(
            f"ack_timeout: between {limits.min_ack_timeout} and {limits.max_ack_timeout} seconds",
            field="ack_timeout",
        )
    user = _user(session)
    queue, created = session.server.broker.subscribe(
        request.channel, request.queue or user.name, user.name, ack_timeout, time.time()
    )
    return {"queue": queue.info(), "created": created}


def op_queue_list(session: Session, request: wire.ChannelRequest) -> Result:
    queues = session.server.broker.channel(request.channel).queues
    return {"queues": [queues[name].info() for name in sorted(queues)]}


def op_queue_delete(session: Session, request: wire.QueueDeleteRequest) -> Result:
    broker = session.server.broker
    queue = broker.queue(request.channel, request.queue)
    user = _user(session).name
    if not (
        session.is_admin or queue.owner == user or broker.channels[request.channel].owner == user
    ):
        raise Forbidden("only the queue's owner, the channel's owner or an admin may delete it")
    broker.delete_queue(request.channel, request.queue)
    return None


# -- messages: the hot path -------------------------------------------------


def op_publish(session: Session, request: wire.PublishRequest) -> Result:
    has_data = not wire.is_absent(request.data)
    if has_data == (request.messages is not None):
        raise BadRequest("give exactly one of data and messages", field="data")
    if has_data:
        datas = [wire.encode_data(request.data)]
    else:
        assert request.messages is not None
        max_batch = session.server.config.limits.max_batch
        if len(request.messages) > max_batch:
            raise BadRequest(f"messages: at most {max_batch} per publish", field="messages")
        datas = [wire.encode_data(value) for value in request.messages]
    return _publish(session, request.channel, datas)


def one_message_publish(session: Session, fields: dict[str, Any]) -> tuple[str, bytes] | None:
    """The channel and encoded data of a publish of one `data` to an existing channel.

    Nearly every publish has this shape, and checking the shape is all the
    validation it needs: a channel that exists has a valid name, and any JSON
    value is valid data. Returns None for every other shape, which takes the
    validated path (`op_publish`), errors included.
    """
    if len(fields) != 2 or "data" not in fields:
        return None
    channel = fields.get("channel")
    if type(channel) is not str or channel not in session.server.broker.channels:
        return None
    return channel, wire.encode_data(fields["data"])


class PublishRun:
    """One-message publishes to one channel, read together, published as one batch.

    A client that pipelines publishes sends them in runs, and publishing a run
    at once (one id range, one journal record, one timestamp, one wake of the
    waiting pulls) costs a fraction of publishing each alone. The session ends
    a run before it handles any other request, so every effect still happens
    in request order, and each publish gets its own reply. If the batch would
    overflow a queue they are published one by one instead, so each gets the
    result it would have had alone.
    """

    __slots__ = ("channel", "datas", "heads", "size")

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.datas: list[bytes] = []
        self.heads: list[bytes] = []  # each request's reply head (its id)
        self.size = 0

    def add(self, head: bytes, data: bytes) -> None:
        self.heads.append(head)
        self.datas.append(data)
        self.size += len(data)

    def replies(self, session: Session) -> list[bytes]:
        """Publish the run; the reply line of each publish, in order."""
        server = session.server
        heads = self.heads
        try:
            ids, queues = server.broker.publish(
                self.channel, self.datas, session.user_json, time.time(), server.now()
            )
        except TcpmqError:
            replies = []
            for head, data in zip(heads, self.datas, strict=True):
                try:
                    replies.append(wire.reply_ok(head, _publish(session, self.channel, [data])))
                except TcpmqError as exc:
                    replies.append(wire.reply_error(head, exc))
            return replies
        reply = wire.publish_reply
        return [
            reply(head, message_id, queues) for head, message_id in zip(heads, ids, strict=True)
        ]


def _publish(session: Session, channel: str, datas: list[bytes]) -> Result:
    server = session.server
    ids, queues = server.broker.publish(
        channel, datas, session.user_json, time.time(), server.now()
    )
    return wire.publish_fields(ids[0], len(ids), queues)


def _owned_queue(session: Session, channel: str, name: str | None) -> Queue:
    user = _user(session).name
    queue = session.server.broker.queue(channel, name or user)
    if queue.owner != user and not session.is_admin:
        raise Forbidden(f"queue {queue.name!r} belongs to another user")
    return queue


def _encode_deliveries(deliveries: list[Delivery]) -> bytes:
    return wire.pull_fields([d.head for d in deliveries], [d.attempt for d in deliveries])


class PullWaiter(Pending):
    """A long-poll pull parked on a queue until messages arrive or `wait` passes."""

    __slots__ = ("_broker", "_queue", "_timer", "max")

    def __init__(self, session: Session, queue: Queue, max_messages: int, wait: float) -> None:
        super().__init__()
        self.max = max_messages
        self._broker = session.server.broker
        self._queue = queue
        self._timer = session.server.loop.call_later(wait, self._time_out)

    def wake(self, deliveries: list[Delivery]) -> None:
        self.complete(_encode_deliveries(deliveries))

    def fail(self, error: TcpmqError) -> None:
        self.complete(error)

    def _time_out(self) -> None:
        self.complete(b'"messages":[]}')

    def stop_waiting(self) -> None:
        # A waiter exists only while nothing is ready: the answer now is none.
        # Waiting on would deliver messages into flight for a client that may
        # be gone, to come back only after their ack timeout.
        self._time_out()

    def release(self) -> None:
        self._timer.cancel()
        self._broker.cancel_wait(self._queue, self)


def op_pull(session: Session, request: wire.PullRequest) -> Result | Pending:
    limits = session.server.config.limits
    if request.max > limits.max_batch:
        raise BadRequest(f"max: at most {limits.max_batch}", field="max")
    if request.wait > limits.max_wait:
        raise BadRequest(f"wait: at most {limits.max_wait} seconds", field="wait")
    queue = _owned_queue(session, request.channel, request.queue)
    broker = session.server.broker
    deliveries = broker.pull(queue, request.max, session.server.now())
    if deliveries or request.wait == 0:
        return _encode_deliveries(deliveries)
    waiter = PullWaiter(session, queue, request.max, request.wait)
    broker.wait(queue, waiter)
    return waiter


def _check_ids(session: Session, ids: list[int]) -> None:
    max_batch = session.server.config.limits.max_batch
    if len(ids) > max_batch:
        raise BadRequest(f"ids: at most {max_batch}", field="ids")


def op_ack(session: Session, request: wire.AckRequest) -> Result:
    _check_ids(session, request.ids)
    queue = _owned_queue(session, request.channel, request.queue)
    acked, unknown = session.server.broker.ack(queue, request.ids, session.server.now())
    return {"acked": acked, "unknown": unknown}


def op_nack(session: Session, request: wire.AckRequest) -> Result:
    _check_ids(session, request.ids)
    queue = _owned_queue(session, request.channel, request.queue)
    requeued, unknown = session.server.broker.nack(queue, request.ids, session.server.now())
    return {"requeued": requeued, "unknown": unknown}


HANDLERS: dict[str, Handler] = {
    "ping": op_ping,
    "auth": op_auth,
    "login": op_login,
    "whoami": op_whoami,
    "help": op_help,
    "user.create": op_user_create,
    "user.list": op_user_list,
    "user.get": op_user_get,
    "user.delete": op_user_delete,
    "channel.create": op_channel_create,
    "channel.list": op_channel_list,
    "channel.get": op_channel_get,
    "channel.delete": op_channel_delete,
    "subscribe": op_subscribe,
    "queue.list": op_queue_list,
    "queue.delete": op_queue_delete,
    "publish": op_publish,
    "pull": op_pull,
    "ack": op_ack,
    "nack": op_nack,
}
assert HANDLERS.keys() == wire.OPS.keys(), "every op in the wire table has a handler"
