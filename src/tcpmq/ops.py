"""The op handlers: what each request does.

A handler is `handler(app, caller, request)`: the application (backend,
user directory, signer, limits; see app.py), who is asking, and the
validated request. It checks permissions and the configurable limits, calls
the backend or the user directory, and returns a `Result` (see pending.py)
or a `Pending` for replies that come later. Refusals are `TcpmqError`s,
which the connection turns into error replies. Handlers know no sockets and
no connection.

Publish is the one op the connection does not call through `HANDLERS`:
`decode_publish` validates every publish (whatever its shape) and the
connection joins consecutive publishes to one channel into a `PublishRun`,
published with one backend call (see connection.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar, cast

from . import audit, info, wire
from .app import App, Caller
from .auth import DUMMY_HASH
from .backend.base import NO_SETTINGS, QueueSettings
from .backup import BackupResult
from .errors import (
    AlreadyExists,
    AuthFailed,
    BadRequest,
    ErrorCode,
    Forbidden,
    LimitExceeded,
    NotFound,
    ShuttingDown,
    TcpmqError,
)
from .passwords import PasswordPool
from .pending import Pending, Result
from .users import User, revocation_second

# How far ahead of the clock a token's `iat` may be beyond the revocation second.
_IAT_AHEAD = 1.0

Handler = Callable[[App, Caller, Any], Result | Pending]
T = TypeVar("T")


def _require_admin(caller: Caller) -> None:
    if not caller.is_admin:
        raise Forbidden("only admins may do this")


def _later(work: Awaitable[T], answer: Callable[[T], Result]) -> Pending:
    """A reply made by `answer` from the result of `work` once it is done."""
    pending = Pending()

    def done(task: asyncio.Future[T]) -> None:
        pending.settle(lambda: answer(task.result()))

    asyncio.ensure_future(work).add_done_callback(done)
    return pending


class _PasswordCheck(Pending):
    """A login's reply, waiting for its password check.

    The connection cancels it when it closes: the check is dropped from the
    hash queue then, so a flood of logins from connections that go away
    leaves no hashing behind (see passwords.py). At EOF it waits behind
    every live login instead.
    """

    __slots__ = ("_check", "_pool")

    def __init__(self, check: asyncio.Future[bool], pool: PasswordPool) -> None:
        super().__init__()
        self._check = check
        self._pool = pool

    def hung_up(self) -> None:
        # Maybe gone (a closed socket looks like EOF until a reply is
        # written): behind every live login, and first to be pushed out.
        self._pool.hung_up(self._check)

    def release(self) -> None:
        self._check.cancel()


def _check_range(field: str, value: float, minimum: float, maximum: float, unit: str = "") -> None:
    if not minimum <= value <= maximum:
        raise BadRequest(
            f"{field}: between {minimum:g} and {maximum:g}{unit}",
            field=field,
            minimum=minimum,
            maximum=maximum,
        )


# -- session ------------------------------------------------------------------


def op_ping(app: App, caller: Caller, request: wire.NoFields) -> Result:
    return None


def op_auth(app: App, caller: Caller, request: wire.AuthRequest) -> Result:
    # A token is checked in microseconds and never waits for the hash pool,
    # so a good one is taken even from an address that is being limited;
    # only failures count against the address (see loginlimits.py).
    try:
        claims = app.signer.verify(request.token)
        user = app.users.find(claims.user)
        if user is None or user.uid != claims.uid:
            raise AuthFailed("the token's user no longer exists")
        if claims.issued_at < user.tokens_valid_after:
            raise AuthFailed("token revoked")
        # Tokens are minted at most at the user's revocation second, or a
        # second ahead of the clock (see users.revocation_second).
        if claims.issued_at > max(time.time() + _IAT_AHEAD, user.tokens_valid_after):
            raise AuthFailed("invalid token")
    except AuthFailed as exc:
        now = time.monotonic()
        app.limiter.check(caller.address, None, now)  # limit_exceeded instead, once limited
        app.limiter.take(caller.address, None, now)
        audit.event("auth_failed", conn=caller.conn_id, peer=caller.peer, reason=exc.message)
        raise
    app.connections.authenticate(caller, user)
    app.limiter.succeeded(caller.address, time.monotonic())
    audit.event("auth", conn=caller.conn_id, peer=caller.peer, user=user.name, by="token")
    return {"user": user.name, "role": user.role, "expires_at": claims.expires_at}


def op_login(app: App, caller: Caller, request: wire.LoginRequest) -> Pending:
    limits = app.limits
    ttl = limits.default_token_ttl if request.ttl is None else request.ttl
    _check_range("ttl", ttl, 1, limits.max_token_ttl, " seconds")
    limiter, address, name = app.limiter, caller.address, request.user
    now = time.monotonic()
    # Refused before any hash: a limited attempt costs nothing.
    limiter.check(address, name, now)
    user = app.users.find(name)
    # An unknown user is checked against a hash of the same cost, so the
    # time of the answer does not tell which users exist.
    stored = DUMMY_HASH if user is None else user.password_hash
    first = limiter.trusted(address, now)  # known clients before a flood
    check = app.passwords.check(request.password, stored, address, first=first)  # or full
    # Counted from the start, so logins still hashing count; given back if right.
    limiter.take(address, name, now)
    pending = _PasswordCheck(check, app.passwords)

    def checked() -> Result:
        try:
            matches = check.result()
        except LimitExceeded:
            # Pushed out of a full hash queue: never tried, so not a failure.
            limiter.give_back(address, name, time.monotonic())
            raise
        # The user may have been deleted (or replaced) while the hash ran. (Compared
        # by value: a shared directory reloads its copy as other nodes change it.)
        if not matches or user is None or not _still(app.users.find(user.name), user):
            audit.event("auth_failed", conn=caller.conn_id, peer=caller.peer, user=name)
            raise AuthFailed("wrong user name or password")
        now = time.monotonic()
        limiter.give_back(address, name, now)
        app.connections.authenticate(caller, user)
        limiter.succeeded(address, now)
        audit.event("auth", conn=caller.conn_id, peer=caller.peer, user=user.name, by="password")
        issued = user.token_issued_at(time.time())
        token = app.signer.mint(user.name, user.role, user.uid, ttl, now=issued)
        return {"user": user.name, "role": user.role, "token": token, "expires_at": issued + ttl}

    def done(_: asyncio.Future[bool]) -> None:
        if check.cancelled():
            # The connection went away (the reply has no reader), or the
            # server is stopping (it closed every connection first).
            pending.settle(_shutting_down)
        else:
            pending.settle(checked)

    check.add_done_callback(done)
    return pending


def _still(current: User | None, checked: User) -> bool:
    """Whether `current` is the user whose password was checked, unchanged."""
    return (
        current is not None
        and current.uid == checked.uid
        and current.password_hash == checked.password_hash
    )


def _shutting_down() -> Result:
    raise ShuttingDown("server is shutting down")


def op_whoami(app: App, caller: Caller, request: wire.NoFields) -> Result:
    return {"user": caller.name, "role": "admin" if caller.is_admin else "user"}


def op_help(app: App, caller: Caller, request: wire.HelpRequest) -> Result:
    # One op on request: a whole list is hard to read in a terminal.
    names = sorted(wire.OPS) if request.name is None else [request.name]
    if request.name is not None and request.name not in wire.OPS:
        raise NotFound(f'no op {request.name!r}; send {{"op":"help"}} for the list')
    return {
        "ops": [
            {"op": name, "fields": wire.OPS[name].fields, "summary": wire.OPS[name].summary}
            for name in names
        ]
    }


def op_server_info(app: App, caller: Caller, request: wire.NoFields) -> Result:
    return info.server_info(app.limits, app.backend.name, app.default_channel_access)


# -- users --------------------------------------------------------------------


def op_user_create(app: App, caller: Caller, request: wire.UserCreateRequest) -> Pending:
    _require_admin(caller)
    if app.users.find(request.name) is not None:
        raise AlreadyExists(f"user {request.name!r} already exists")
    app.backend.check_room()  # before the password is hashed

    async def create() -> User:
        # An authenticated caller's hash goes first, as a trusted login's.
        password_hash = await app.passwords.hash(request.password, caller.address, first=True)
        return await app.users.create(request.name, request.role, password_hash, time.time())

    def created(user: User) -> Result:
        if user.role == "admin":
            app.backend.exempt_from_quotas(user.name)
        audit.event("user_created", user=user.name, role=user.role, by=caller.name)
        return {"user": user.info()}

    return _later(create(), created)


def op_user_list(app: App, caller: Caller, request: wire.NoFields) -> Result:
    _require_admin(caller)
    return {"users": [user.info() for user in app.users.list()]}


def op_user_get(app: App, caller: Caller, request: wire.NameRequest) -> Result:
    if not caller.is_admin and caller.name != request.name:
        raise Forbidden("only admins may see other users")
    return {"user": app.users.get(request.name).info()}


def op_user_delete(app: App, caller: Caller, request: wire.NameRequest) -> Pending:
    _require_admin(caller)
    app.users.get(request.name)  # not_found now, before any work

    async def delete() -> User:
        user = await app.users.delete(request.name)
        # Its queues go; its channels pass to the admin who deleted it.
        forgotten = app.backend.delete_user(user.name, caller.name)
        if forgotten is not None:  # a backend across the network
            await forgotten
        return user

    def deleted(user: User) -> Result:
        app.connections.end_user(user.name)
        audit.event("user_deleted", user=user.name, by=caller.name)
        return None

    return _later(delete(), deleted)


def _account(caller: Caller, name: str | None) -> str:
    """The user an account op acts on: the caller's own, or for admins any."""
    if name is None or name == caller.name:
        return caller.name
    if not caller.is_admin:
        raise Forbidden("only admins may change other users")
    return name


def op_user_passwd(app: App, caller: Caller, request: wire.UserPasswdRequest) -> Pending:
    name = _account(caller, request.name)
    app.users.get(name)  # not_found now, before any work

    async def change() -> User:
        password_hash = await app.passwords.hash(request.password, caller.address, first=True)
        # Its tokens issued so far go with the old password.
        return await app.users.set_password(name, password_hash, revocation_second(time.time()))

    def changed(user: User) -> Result:
        audit.event("password_changed", user=user.name, by=caller.name)
        return {"tokens_valid_after": user.tokens_valid_after}

    return _later(change(), changed)


def op_user_revoke_tokens(app: App, caller: Caller, request: wire.UserRequest) -> Pending:
    name = _account(caller, request.name)
    app.users.get(name)
    revoked = app.users.revoke_tokens(name, revocation_second(time.time()))

    def done(user: User) -> Result:
        audit.event("tokens_revoked", user=user.name, by=caller.name)
        return {"tokens_valid_after": user.tokens_valid_after}

    return _later(revoked, done)


# -- channels -----------------------------------------------------------------


def op_channel_create(
    app: App, caller: Caller, request: wire.ChannelCreateRequest
) -> Result | Pending:
    access = request.access or app.default_channel_access
    result = app.backend.create_channel(
        request.name, caller.name, caller.is_admin, time.time(), public=access == "public"
    )
    audit.event("channel_created", channel=request.name, access=access, by=caller.name)
    return result


def op_channel_list(app: App, caller: Caller, request: wire.NoFields) -> Result | Pending:
    return app.backend.list_channels()


def op_channel_get(app: App, caller: Caller, request: wire.NameRequest) -> Result | Pending:
    return app.backend.get_channel(request.name, time.time())


def op_channel_delete(app: App, caller: Caller, request: wire.NameRequest) -> Result | Pending:
    result = app.backend.delete_channel(request.name, caller.name, caller.is_admin)
    audit.event("channel_deleted", channel=request.name, by=caller.name)
    return result


# -- permissions ----------------------------------------------------------------

_ALL_RIGHTS = ("publish", "subscribe")


def op_channel_grant(
    app: App, caller: Caller, request: wire.ChannelGrantRequest
) -> Result | Pending:
    app.users.get(request.user)  # not_found: rights for a user to come would be squatting
    rights: list[str] = list(request.rights or _ALL_RIGHTS)
    result = app.backend.grant(request.name, request.user, rights, caller.name, caller.is_admin)
    audit.event(
        "channel_granted",
        channel=request.name,
        user=request.user,
        rights=",".join(rights),
        by=caller.name,
    )
    return result


def op_channel_revoke(
    app: App, caller: Caller, request: wire.ChannelGrantRequest
) -> Result | Pending:
    # The user need not exist: taking rights is always safe, stale ones included.
    user = app.users.find(request.user)
    rights: list[str] = list(request.rights or _ALL_RIGHTS)
    result = app.backend.revoke(
        request.name,
        request.user,
        rights,
        user is not None and user.role == "admin",
        caller.name,
        caller.is_admin,
    )
    audit.event(
        "channel_revoked",
        channel=request.name,
        user=request.user,
        rights=",".join(rights),
        by=caller.name,
    )
    return result


def op_channel_update(
    app: App, caller: Caller, request: wire.ChannelUpdateRequest
) -> Result | Pending:
    result = app.backend.update_channel(
        request.name, request.access == "public", caller.name, caller.is_admin
    )
    audit.event("channel_updated", channel=request.name, access=request.access, by=caller.name)
    return result


def reserved_for(app: App, queue: str) -> str | None:
    """The user a queue name is reserved for: an existing user named so, or
    named as the part before one of its dots (`bob` for `bob.audit`)."""
    if app.users.find(queue) is not None:
        return queue
    for index, char in enumerate(queue):
        if char == "." and app.users.find(queue[:index]) is not None:
            return queue[:index]
    return None


# -- queues -------------------------------------------------------------------


def op_subscribe(app: App, caller: Caller, request: wire.SubscribeRequest) -> Result | Pending:
    limits = app.limits
    if request.ack_timeout is not None:
        _check_range(
            "ack_timeout",
            request.ack_timeout,
            limits.min_ack_timeout,
            limits.max_ack_timeout,
            " seconds",
        )
    queue = request.queue or caller.name
    result = app.backend.subscribe(
        request.channel,
        queue,
        caller.name,
        caller.is_admin,
        request.ack_timeout,
        time.time(),
        reserved_for(app, queue),
        _queue_settings(app, request),
    )
    if isinstance(result, dict) and result.get("created"):
        audit.event("queue_created", channel=request.channel, queue=queue, by=caller.name)
    return result


def _queue_settings(
    app: App, request: wire.SubscribeRequest | wire.QueueUpdateRequest
) -> QueueSettings:
    """The overflow policy and limits asked for, checked against the server's limits."""
    limits = app.limits
    if request.max_messages is not None:
        _check_range("max_messages", request.max_messages, 1, limits.max_queue_messages)
    if request.max_bytes is not None:
        _check_range("max_bytes", request.max_bytes, 1, limits.max_queue_bytes, " bytes")
    if request.overflow is None and request.max_messages is None and request.max_bytes is None:
        return NO_SETTINGS
    return QueueSettings(request.overflow, request.max_messages, request.max_bytes)


def op_queue_update(app: App, caller: Caller, request: wire.QueueUpdateRequest) -> Result | Pending:
    settings = _queue_settings(app, request)
    result = app.backend.update_queue(
        request.channel, request.queue, caller.name, caller.is_admin, settings, time.time()
    )
    audit.event("queue_updated", channel=request.channel, queue=request.queue, by=caller.name)
    return result


def op_queue_list(app: App, caller: Caller, request: wire.QueueListRequest) -> Result | Pending:
    # Every authenticated user may see every queue, of one channel or of all.
    return app.backend.list_queues(request.channel, time.time())


def op_queue_delete(app: App, caller: Caller, request: wire.QueueRequest) -> Result | Pending:
    result = app.backend.delete_queue(request.channel, request.queue, caller.name, caller.is_admin)
    audit.event("queue_deleted", channel=request.channel, queue=request.queue, by=caller.name)
    return result


def op_queue_purge(app: App, caller: Caller, request: wire.QueueRequest) -> Result | Pending:
    result = app.backend.purge_queue(request.channel, request.queue, caller.name, caller.is_admin)
    audit.event("queue_purged", channel=request.channel, queue=request.queue, by=caller.name)
    return result


# -- operating ----------------------------------------------------------------


def op_stats(app: App, caller: Caller, request: wire.NoFields) -> Result | Pending:
    _require_admin(caller)
    assert app.observer is not None, "the server starts its observer with the app"
    stats = app.observer.stats()
    # A shared store's channels are not in this process: the backend adds them.
    of_store = getattr(app.backend, "stats_of_store", None)
    return stats if of_store is None else of_store(stats)


def op_store_backup(app: App, caller: Caller, request: wire.BackupRequest) -> Pending:
    _require_admin(caller)

    def written(done: BackupResult) -> Result:
        audit.event("backup_written", path=done.path, bytes=done.bytes, by=caller.name)
        return done.fields()

    return _later(app.backups.run(app.backend, app.users, request.path), written)


# -- messages: the hot path ---------------------------------------------------

# Channel names already seen valid: the common publish shape checks its name
# with one set lookup instead of the pattern. Bounded; cleared when full.
_VALID_NAMES: set[str] = set()
_VALID_NAMES_MAX = 4096


def _valid_name(name: object) -> bool:
    if type(name) is not str:
        return False
    if name in _VALID_NAMES:
        return True
    if wire.NAME_RE.match(name) is None:
        return False
    if len(_VALID_NAMES) >= _VALID_NAMES_MAX:
        _VALID_NAMES.clear()
    _VALID_NAMES.add(name)
    return True


def decode_publish(
    app: App, caller: Caller, fields: dict[str, Any]
) -> tuple[str, bytes | list[bytes]]:
    """Validate a publish request: its channel and its messages, encoded.

    Returns the channel and the encoded `data` (bytes), or the list of the
    encoded `messages`: the one-message shape costs no list.

    Every publish passes here, so a check added to publish applies to all.
    The common shape (a channel and one `data`) is checked by hand, which is
    all the validation it needs; every other shape, errors included, goes
    through the request model.

    Raises:
        BadRequest: naming the offending field.
    """
    if len(fields) == 2 and "data" in fields:
        channel = fields.get("channel")
        if type(channel) is str and (channel in _VALID_NAMES or _valid_name(channel)):
            return channel, wire.encode_data(fields["data"])
    request = wire.decode_fields("publish", fields)
    assert isinstance(request, wire.PublishRequest)
    has_data = not wire.is_absent(request.data)
    if has_data == (request.messages is not None):
        raise BadRequest("give exactly one of data and messages", field="data")
    if has_data:
        return request.channel, wire.encode_data(request.data)
    assert request.messages is not None
    max_batch = app.limits.max_batch
    if len(request.messages) > max_batch:
        raise BadRequest(
            f"messages: at most {max_batch} per publish",
            field="messages",
            minimum=1,
            maximum=max_batch,
        )
    return request.channel, wire.encode_messages(request.messages)


class PublishRun:
    """Publishes to one channel, read together, published as one batch.

    A client that pipelines publishes sends them in runs, and publishing a run
    at once (one id range, one journal record, one timestamp, one wake of the
    waiting pulls) costs a fraction of publishing each alone. The connection
    ends a run before it handles any other request, so every effect still
    happens in request order, and each publish gets its own reply. If the
    batch would overflow a queue that rejects they are published one by one
    instead, so each gets the result it would have had alone (queues that
    drop meet a batch message by message already).
    """

    __slots__ = ("batches", "channel", "datas", "heads", "refusals", "size")

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.datas: list[bytes] = []
        self.heads: list[bytes] = []  # each request's reply head (its id)
        # The requests with `messages`, by index: their message counts.
        self.batches: dict[int, int] = {}
        self.size = 0
        #: Replies that are storage_full refusals (see Connection._flush).
        self.refusals = 0

    def add(self, head: bytes, data: bytes) -> None:
        """Add a publish of one message (nearly every publish)."""
        self.heads.append(head)
        self.datas.append(data)
        self.size += len(data)

    def add_batch(self, head: bytes, datas: list[bytes], size: int) -> None:
        """Add a publish of `messages` (encoded, `size` bytes together)."""
        self.batches[len(self.heads)] = len(datas)
        self.heads.append(head)
        self.datas.extend(datas)
        self.size += size

    @property
    def counts(self) -> list[int]:
        """Each request's number of messages."""
        batches = self.batches
        return [batches.get(index, 1) for index in range(len(self.heads))]

    def replies(self, app: App, caller: Caller) -> list[bytes] | RunReplies:
        """Publish the run; the reply line of each publish, in order (later, from a
        backend whose publish is a coroutine: the redis store)."""
        publish = app.backend.publish
        now = time.time()
        try:
            done = publish(
                self.channel, self.datas, caller.name_json, now, caller.name, caller.is_admin
            )
        except TcpmqError as exc:
            if self._retry_alone(exc):
                return self._one_by_one(app, caller, now)
            return self._refused(exc)
        if type(done) is tuple:
            return self._published(*done)
        assert isinstance(done, Awaitable)
        return RunReplies(self.heads, self._replies_later(app, caller, now, done))

    def _retry_alone(self, exc: TcpmqError) -> bool:
        """Whether each publish of the run may fare differently alone (a full queue)."""
        return not (
            exc.code is ErrorCode.STORAGE_FULL
            or exc.code is ErrorCode.FORBIDDEN
            or exc.code is ErrorCode.UNAVAILABLE
            or len(self.heads) == 1
        )

    def _refused(self, exc: TcpmqError) -> list[bytes]:
        # Nothing of the run can be published (forbidden for one is forbidden for all).
        if exc.code is ErrorCode.STORAGE_FULL:
            self.refusals = len(self.heads)
        return [wire.reply_error(head, exc) for head in self.heads]

    def _published(self, first: int, queues: int) -> list[bytes]:
        reply = wire.publish_reply
        if not self.batches:  # one message each: the usual run
            return [reply(head, first + i, 1, queues) for i, head in enumerate(self.heads)]
        replies = []
        for head, count in zip(self.heads, self.counts, strict=True):
            replies.append(reply(head, first, count, queues))
            first += count
        return replies

    def _one_by_one(self, app: App, caller: Caller, now: float) -> list[bytes]:
        replies = []
        start = 0
        for head, count in zip(self.heads, self.counts, strict=True):
            datas = self.datas[start : start + count]
            start += count
            try:
                done = app.backend.publish(
                    self.channel, datas, caller.name_json, now, caller.name, caller.is_admin
                )
                # A synchronous backend's (`replies` took the other path otherwise).
                first, queues = cast(tuple[int, int], done)
            except TcpmqError as exc:
                replies.append(wire.reply_error(head, exc))
                if exc.code is ErrorCode.STORAGE_FULL:
                    self.refusals += 1
            else:
                replies.append(wire.publish_reply(head, first, count, queues))
        return replies

    async def _replies_later(
        self, app: App, caller: Caller, now: float, done: Awaitable[tuple[int, int]]
    ) -> list[bytes]:
        """`replies`, for a backend whose publish is a coroutine."""
        try:
            return self._published(*await done)
        except TcpmqError as exc:
            if not self._retry_alone(exc):
                return self._refused(exc)
        replies = []
        start = 0
        for head, count in zip(self.heads, self.counts, strict=True):
            datas = self.datas[start : start + count]
            start += count
            alone = app.backend.publish(
                self.channel, datas, caller.name_json, now, caller.name, caller.is_admin
            )
            try:
                first, queues = await cast(Awaitable[tuple[int, int]], alone)
            except TcpmqError as exc:
                replies.append(wire.reply_error(head, exc))
            else:
                replies.append(wire.publish_reply(head, first, count, queues))
        return replies


class RunReplies(Pending):
    """The replies of a publish run that a backend answers later: `lines`, once done."""

    __slots__ = ("_task", "heads", "lines")

    def __init__(self, heads: list[bytes], work: Coroutine[Any, Any, list[bytes]]) -> None:
        super().__init__()
        self.heads = heads
        self.lines: list[bytes] = []
        self._task = asyncio.ensure_future(work)
        self._task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Future[list[bytes]]) -> None:
        if task.cancelled():
            return
        self.settle(lambda: self._keep(task.result()))

    def _keep(self, lines: list[bytes]) -> Result:
        self.lines = lines
        return None


def op_pull(app: App, caller: Caller, request: wire.PullRequest) -> Result | Pending:
    limits = app.limits
    _check_range("max", request.max, 1, limits.max_batch)
    _check_range("wait", request.wait, 0, limits.max_wait, " seconds")
    return app.backend.pull(
        request.channel,
        request.queue or caller.name,
        caller.name,
        caller.is_admin,
        request.max,
        request.wait,
    )


def op_peek(app: App, caller: Caller, request: wire.PeekRequest) -> Result | Pending:
    _check_range("max", request.max, 1, app.limits.max_batch)
    return app.backend.peek(
        request.channel, request.queue or caller.name, caller.name, caller.is_admin, request.max
    )


def op_ack(app: App, caller: Caller, request: wire.AckRequest) -> Result | Pending:
    _check_range("ids", len(request.ids), 1, app.limits.max_batch, " ids")
    queue = request.queue or caller.name
    return app.backend.ack(request.channel, queue, caller.name, caller.is_admin, request.ids)


def op_nack(app: App, caller: Caller, request: wire.AckRequest) -> Result | Pending:
    _check_range("ids", len(request.ids), 1, app.limits.max_batch, " ids")
    queue = request.queue or caller.name
    return app.backend.nack(request.channel, queue, caller.name, caller.is_admin, request.ids)


def op_publish(app: App, caller: Caller, request: object) -> Result:
    # Publishes never come here: the connection runs them (see PublishRun).
    raise AssertionError("publish is handled by the connection's publish runs")


HANDLERS: dict[str, Handler] = {
    "ping": op_ping,
    "auth": op_auth,
    "login": op_login,
    "whoami": op_whoami,
    "help": op_help,
    "server.info": op_server_info,
    "user.create": op_user_create,
    "user.list": op_user_list,
    "user.get": op_user_get,
    "user.delete": op_user_delete,
    "user.passwd": op_user_passwd,
    "user.revoke_tokens": op_user_revoke_tokens,
    "channel.create": op_channel_create,
    "channel.list": op_channel_list,
    "channel.get": op_channel_get,
    "channel.delete": op_channel_delete,
    "channel.grant": op_channel_grant,
    "channel.revoke": op_channel_revoke,
    "channel.update": op_channel_update,
    "subscribe": op_subscribe,
    "queue.list": op_queue_list,
    "queue.delete": op_queue_delete,
    "queue.purge": op_queue_purge,
    "queue.update": op_queue_update,
    "stats": op_stats,
    "store.backup": op_store_backup,
    "publish": op_publish,
    "pull": op_pull,
    "peek": op_peek,
    "ack": op_ack,
    "nack": op_nack,
}
assert HANDLERS.keys() == wire.OPS.keys(), "every op in the wire table has a handler"
