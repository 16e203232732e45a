"""The typed client: one method per op, returning the models of `tcpmq.models`.

Every method builds its request and hands it to the link (`Link.call`),
which pipelines it on the open connection, waiting while it reconnects
within the call's deadline. The deadline is set when the method is called:
`timeout` seconds, plus `wait` for a pull.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

from ..errors import AlreadyExists
from ..models import (
    Access,
    AccessResult,
    AckResult,
    BackupResult,
    ChannelInfo,
    GrantResult,
    Identity,
    LoginResult,
    Message,
    NackResult,
    OpHelp,
    Overflow,
    PublishResult,
    PurgeResult,
    QueueInfo,
    QueueResult,
    RevokeResult,
    Right,
    Role,
    ServerInfo,
    Stats,
    SubscribeResult,
    TokensRevoked,
    UserInfo,
)
from .connection import parse, parse_list
from .consume import Consumer
from .errors import ConnectionClosed
from .reconnect import Credentials, Link
from .url import Address


class Client:
    """A client of a tcpmq server: one connection at a time, pipelined.

    Make one with `connect()`. All methods may be called concurrently from
    many tasks; their requests are pipelined on the one connection. With
    `connect(..., reconnect=True)` a lost connection is replaced (see
    `tcpmq.client.reconnect`); otherwise the client ends with it.
    """

    def __init__(self, link: Link) -> None:
        """A client over `link`; `connect()` opens its first connection."""
        self._link = link
        # Consumers settle what they hold before close() ends the connection.
        self._consumers: weakref.WeakSet[Consumer] = weakref.WeakSet()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- state ----------------------------------------------------------------

    @property
    def address(self) -> Address:
        return self._link.address

    @property
    def server_info(self) -> dict[str, Any]:
        """The `hello` greeting of the current connection (`server`, `version`, ...)."""
        return self._link.connection.server_info

    @property
    def timeout(self) -> float:
        """Seconds each call may take (a pull: plus its `wait`)."""
        return self._link.timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        if value <= 0:
            raise ValueError("timeout must be positive")
        self._link.timeout = value

    @property
    def closed(self) -> bool:
        """True once the client has ended for good (not while it reconnects)."""
        return self._link.closed

    @property
    def connected(self) -> bool:
        """True while a connection is open (False while reconnecting, or once closed)."""
        return not self._link.connection.closed

    @property
    def close_reason(self) -> ConnectionClosed | None:
        """Why the client ended (see `ConnectionClosed`), or None while it has not."""
        return self._link.close_reason

    async def wait_closed(self) -> None:
        """Return once the client has ended: `bye`, EOF, `close()`, or reconnecting gave up."""
        await self._link.wait_closed()

    async def close(self) -> None:
        """Settle the consumers' messages, then close. Pending calls raise `ConnectionLost`.

        Idempotent.
        """
        for consumer in list(self._consumers) if not self.closed else ():
            consumer._settle_before_close()
        await self._link.close()

    # -- any request --------------------------------------------------------

    async def request(self, op: str, /, **fields: Any) -> dict[str, Any]:
        """Send any request and return its result fields (the reply without `ok`).

        Fields are sent exactly as given (None becomes JSON null). The client
        sets `id` itself.

        Raises:
            TcpmqError: the matching subclass for an `ok: false` reply.
            ConnectionLost: the connection ended before the reply came.
            ConnectionClosed: the client has ended; nothing was sent.
            TimeoutError: no reply within the client's timeout.
            ValueError: `fields` contains `id`.
        """
        if "id" in fields:
            raise ValueError("the client sets the request id itself")
        reply = await self._link.call(op, fields)
        del reply["ok"]
        reply.pop("id", None)
        return reply

    # -- ops ----------------------------------------------------------------

    async def ping(self) -> None:
        """Check that the server answers; allowed before authentication."""
        await self._link.call("ping", {})

    async def login(self, user: str, password: str, ttl: int | None = None) -> LoginResult:
        """Authenticate with a password; the result carries a token for `auth`.

        A reconnecting client authenticates its next connections the same way
        (with the returned token while it is valid).

        Raises:
            AuthFailed: unknown user or wrong password.
            LimitExceeded: too many connections of this user.
        """
        fields: dict[str, Any] = {"user": user, "password": password}
        if ttl is not None:
            fields["ttl"] = ttl
        result = parse(LoginResult, await self._link.call("login", fields), "login")
        credentials = Credentials(user=user, password=password, ttl=ttl)
        credentials.remember_login(result)
        self._link.credentials = credentials
        return result

    async def auth(self, token: str) -> Identity:
        """Authenticate with a token from `login` or `tcpmq token USER`.

        A reconnecting client authenticates its next connections with it too.

        Raises:
            AuthFailed: malformed, forged or expired token, or its user is gone.
            LimitExceeded: too many connections of this user.
        """
        result = parse(Identity, await self._link.call("auth", {"token": token}), "auth")
        self._link.credentials = Credentials(token=token)
        return result

    async def whoami(self) -> Identity:
        """The user and role of this connection."""
        return parse(Identity, await self._link.call("whoami", {}), "whoami")

    async def help(self) -> list[OpHelp]:
        """The ops the server knows, with their field signatures."""
        reply = await self._link.call("help", {})
        return parse_list(OpHelp, reply.get("ops"), "help")

    async def info(self) -> ServerInfo:
        """The server's version, its store (log or memory) and every limit it enforces."""
        return parse(ServerInfo, await self._link.call("server.info", {}), "server.info")

    async def stats(self) -> Stats:
        """Rates, connections, every channel and queue, the store (admins only).

        Raises:
            Forbidden: not an admin.
        """
        return parse(Stats, await self._link.call("stats", {}), "stats")

    async def backup(self, path: str) -> BackupResult:
        """Have the server write a consistent copy of its data dir into `path`
        (absolute, on the server's machine, missing or empty; admins only).

        Raises:
            Forbidden: not an admin.
            AlreadyExists: `path` is not empty.
            BadRequest: `path` is not absolute, or the memory store.
        """
        reply = await self._link.call("store.backup", {"path": path})
        return parse(BackupResult, reply, "store.backup")

    async def user_create(self, name: str, password: str, role: Role = "user") -> UserInfo:
        """Create a user (admins only).

        Raises:
            Forbidden: not an admin.
            AlreadyExists: the name is taken.
            LimitExceeded: `max_users` reached.
        """
        fields = {"name": name, "password": password, "role": role}
        reply = await self._link.call("user.create", fields)
        return parse(UserInfo, reply.get("user"), "user.create")

    async def user_list(self) -> list[UserInfo]:
        """All users sorted by name (admins only)."""
        reply = await self._link.call("user.list", {})
        return parse_list(UserInfo, reply.get("users"), "user.list")

    async def user_get(self, name: str) -> UserInfo:
        """One user; admins may get anyone, users themselves.

        Raises:
            Forbidden: neither admin nor that user.
            NotFound: no such user.
        """
        reply = await self._link.call("user.get", {"name": name})
        return parse(UserInfo, reply.get("user"), "user.get")

    async def user_delete(self, name: str) -> None:
        """Delete a user, its queues, and its live connections (admins only).

        Raises:
            Forbidden: not an admin, or the last admin.
            NotFound: no such user.
        """
        await self._link.call("user.delete", {"name": name})

    async def user_passwd(self, password: str, name: str | None = None) -> TokensRevoked:
        """Change a password: your own, or as an admin any user's.

        The user's tokens issued so far are revoked (`auth` refuses them);
        connections already authenticated stay so.

        Raises:
            Forbidden: another user's, and not an admin.
            NotFound: no such user.
            BadRequest: the password is shorter than 8 or longer than 1024 characters.
        """
        fields: dict[str, Any] = {"password": password}
        if name is not None:
            fields["name"] = name
        return parse(TokensRevoked, await self._link.call("user.passwd", fields), "user.passwd")

    async def user_revoke_tokens(self, name: str | None = None) -> TokensRevoked:
        """Make `auth` refuse every token issued so far: your own, or as an admin any user's.

        Connections already authenticated stay so; `login` gives new tokens.

        Raises:
            Forbidden: another user's, and not an admin.
            NotFound: no such user.
        """
        fields = {} if name is None else {"name": name}
        reply = await self._link.call("user.revoke_tokens", fields)
        return parse(TokensRevoked, reply, "user.revoke_tokens")

    async def channel_create(
        self, name: str, access: Access | None = None, *, exist_ok: bool = False
    ) -> ChannelInfo:
        """Create a channel owned by this connection's user.

        `access` is "private" (its owner, admins and users granted rights)
        or "public" (every user); None takes the server's default. With
        `exist_ok`, a channel that exists already is returned instead
        (declare-style, as `subscribe` is for one's own queue), whatever its access.

        Raises:
            AlreadyExists: the name is taken (and not `exist_ok`).
            LimitExceeded: `max_channels` reached.
        """
        fields: dict[str, Any] = {"name": name}
        if access is not None:
            fields["access"] = access
        try:
            reply = await self._link.call("channel.create", fields)
        except AlreadyExists:
            if not exist_ok:
                raise
            return await self.channel_get(name)
        return parse(ChannelInfo, reply.get("channel"), "channel.create")

    async def channel_list(self) -> list[ChannelInfo]:
        """All channels sorted by name (without their queues)."""
        reply = await self._link.call("channel.list", {})
        return parse_list(ChannelInfo, reply.get("channels"), "channel.list")

    async def channel_get(self, name: str) -> ChannelInfo:
        """One channel, with `queues` filled in.

        Raises:
            NotFound: no such channel.
        """
        reply = await self._link.call("channel.get", {"name": name})
        return parse(ChannelInfo, reply.get("channel"), "channel.get")

    async def channel_delete(self, name: str) -> None:
        """Delete a channel with its queues and messages.

        Raises:
            Forbidden: neither the channel's owner nor an admin.
            NotFound: no such channel.
        """
        await self._link.call("channel.delete", {"name": name})

    async def channel_grant(
        self, name: str, user: str, rights: Sequence[Right] = ("publish", "subscribe")
    ) -> list[Right]:
        """Give `user` `rights` on a private channel; returns every right it now holds.

        Raises:
            Forbidden: neither the channel's owner nor an admin.
            NotFound: no such channel or user.
        """
        fields = {"name": name, "user": user, "rights": list(rights)}
        return parse(GrantResult, await self._link.call("channel.grant", fields), "grant").rights

    async def channel_revoke(
        self, name: str, user: str, rights: Sequence[Right] = ("publish", "subscribe")
    ) -> RevokeResult:
        """Take `rights` from `user`; without `subscribe` its queues on the channel go.

        Raises:
            Forbidden: neither the channel's owner nor an admin.
            NotFound: no such channel.
        """
        fields = {"name": name, "user": user, "rights": list(rights)}
        return parse(RevokeResult, await self._link.call("channel.revoke", fields), "revoke")

    async def channel_update(self, name: str, *, access: Access) -> AccessResult:
        """Make a channel "private" or "public". Made private, the owners of its
        queues are granted `subscribe` (listed in `granted`).

        Raises:
            Forbidden: neither the channel's owner nor an admin.
            NotFound: no such channel.
        """
        fields = {"name": name, "access": access}
        return parse(AccessResult, await self._link.call("channel.update", fields), "update")

    async def subscribe(
        self,
        channel: str,
        queue: str | None = None,
        ack_timeout: float | None = None,
        *,
        overflow: Overflow | None = None,
        max_messages: int | None = None,
        max_bytes: int | None = None,
    ) -> SubscribeResult:
        """Add a queue to a channel (default name: the user's), or get the one you own.

        A given `ack_timeout`, `overflow`, `max_messages` or `max_bytes`
        replaces the queue's previous one. `overflow` is what the queue does
        when full (protocol.md, Full queues): "reject" (only on a channel you
        own, or as an admin; the default there), "drop_oldest" (the default on
        other users' channels) or "drop_new".

        Raises:
            NotFound: no such channel.
            Forbidden: the queue exists and belongs to another user; the
                channel is private and you have no subscribe right; the
                name is reserved for another user (theirs, or theirs and a
                dot); or "reject" on a channel you do not own.
            LimitExceeded: `max_queues_per_channel` or `max_queues_per_user` reached.
            BadRequest: a limit above the server's.
        """
        fields: dict[str, Any] = {"channel": channel}
        if queue is not None:
            fields["queue"] = queue
        if ack_timeout is not None:
            fields["ack_timeout"] = ack_timeout
        fields.update(_queue_settings(overflow, max_messages, max_bytes))
        return parse(SubscribeResult, await self._link.call("subscribe", fields), "subscribe")

    async def queue_update(
        self,
        channel: str,
        queue: str,
        *,
        overflow: Overflow | None = None,
        max_messages: int | None = None,
        max_bytes: int | None = None,
    ) -> QueueInfo:
        """Change what a full queue does and its limits; None leaves one as it is.

        Allowed to the queue's owner, the channel's owner and admins, so a
        channel's owner can cap another user's queue or make it drop.

        Raises:
            NotFound: no such channel or queue.
            Forbidden: not the queue's or channel's owner, nor an admin; or
                "reject" asked by neither the channel's owner nor an admin.
            BadRequest: a limit above the server's.
        """
        fields: dict[str, Any] = {"channel": channel, "queue": queue}
        fields.update(_queue_settings(overflow, max_messages, max_bytes))
        reply = await self._link.call("queue.update", fields)
        return parse(QueueResult, reply, "queue.update").queue

    async def queue_list(self, channel: str | None = None) -> list[QueueInfo]:
        """The queues of a channel sorted by name; without one, of every channel
        sorted by channel and name, in one request.

        Raises:
            NotFound: no such channel.
        """
        fields = {} if channel is None else {"channel": channel}
        reply = await self._link.call("queue.list", fields)
        return parse_list(QueueInfo, reply.get("queues"), "queue.list")

    async def queue_purge(self, channel: str, queue: str) -> int:
        """Drop every ready message of a queue (in-flight ones stay); returns how many.

        Raises:
            NotFound: no such channel or queue.
            Forbidden: not the queue's or channel's owner, nor an admin.
        """
        reply = await self._link.call("queue.purge", {"channel": channel, "queue": queue})
        return parse(PurgeResult, reply, "queue.purge").purged

    async def queue_delete(self, channel: str, queue: str) -> None:
        """Remove a queue and its messages (unsubscribe).

        Raises:
            NotFound: no such channel or queue.
            Forbidden: not the queue's or channel's owner, nor an admin.
        """
        await self._link.call("queue.delete", {"channel": channel, "queue": queue})

    async def publish(self, channel: str, data: Any) -> PublishResult:
        """Put one message (any JSON value, None included) into every queue of a channel.

        Raises:
            NotFound: no such channel.
            Forbidden: the channel is private and you have no publish right.
            LimitExceeded: a queue of the channel is full; nothing was enqueued.
            FrameTooLarge: the request exceeds the server's `max_frame_bytes`
                (raised locally; nothing was sent).
            ConnectionLost: the connection ended before the reply: the message
                may or may not have been enqueued. It is never resent.
        """
        reply = await self._link.call("publish", {"channel": channel, "data": data})
        return parse(PublishResult, reply, "publish")

    async def publish_batch(self, channel: str, messages: Sequence[Any]) -> PublishResult:
        """Publish 1 to `max_batch` messages at once, all or nothing; ids are consecutive.

        (A full queue that drops rather than rejects takes what fits of the
        batch, message by message: protocol.md, Full queues.)

        Raises:
            NotFound: no such channel.
            BadRequest: `messages` is empty or longer than `max_batch`.
            LimitExceeded: a full queue of the channel rejects; nothing was enqueued.
            FrameTooLarge: the request exceeds `max_frame_bytes` (raised locally).
            ConnectionLost: the connection ended before the reply: the batch
                may or may not have been enqueued (whole). It is never resent.
        """
        reply = await self._link.call("publish", {"channel": channel, "messages": list(messages)})
        return parse(PublishResult, reply, "publish")

    async def pull(
        self, channel: str, queue: str | None = None, max: int = 1, wait: float = 0.0
    ) -> list[Message]:
        """Take up to `max` ready messages; with `wait` > 0, long-poll for the first.

        The reply's deadline is `timeout + wait`. Another call on this client
        (anything but a pull, ack or nack) ends the wait: the server answers
        the pull at once with what is ready, possibly nothing, so a long-poll
        never stalls the program's other calls. For a loop that pulls, acks
        and survives reconnects, see `consume()`.

        Raises:
            NotFound: no such channel or queue (also when deleted while waiting).
            Forbidden: neither the queue's owner nor an admin.
        """
        fields: dict[str, Any] = {"channel": channel}
        if queue is not None:
            fields["queue"] = queue
        fields["max"] = max
        fields["wait"] = wait
        reply = await self._link.call("pull", fields, extra_time=wait)
        return parse_list(Message, reply.get("messages"), "pull")

    async def peek(self, channel: str, queue: str | None = None, max: int = 1) -> list[Message]:
        """Up to `max` ready messages, in delivery order, without taking them.

        Nothing changes: no delivery, no attempt counted. Each `attempt` is
        the one its next delivery will have.

        Raises:
            NotFound: no such channel or queue.
            Forbidden: neither the queue's owner nor an admin.
        """
        fields: dict[str, Any] = {"channel": channel}
        if queue is not None:
            fields["queue"] = queue
        fields["max"] = max
        reply = await self._link.call("peek", fields)
        return parse_list(Message, reply.get("messages"), "peek")

    async def ack(self, channel: str, ids: Iterable[int], queue: str | None = None) -> AckResult:
        """Acknowledge in-flight messages; ids not in flight come back in `unknown`.

        In-flight messages belong to the queue, not to a connection: ids
        pulled on a connection that was lost since can be acked on the next.

        Raises:
            NotFound: no such channel or queue.
            Forbidden: neither the queue's owner nor an admin.
        """
        reply = await self._link.call("ack", ack_fields(channel, ids, queue))
        return parse(AckResult, reply, "ack")

    async def nack(self, channel: str, ids: Iterable[int], queue: str | None = None) -> NackResult:
        """Return in-flight messages to the queue at once (next `attempt` is one higher).

        Raises:
            NotFound: no such channel or queue.
            Forbidden: neither the queue's owner nor an admin.
        """
        reply = await self._link.call("nack", ack_fields(channel, ids, queue))
        return parse(NackResult, reply, "nack")

    def consume(
        self,
        channel: str,
        queue: str | None = None,
        *,
        batch: int = 10,
        wait: float = 30.0,
        auto_ack: bool = True,
        stop_when_empty: bool = False,
    ) -> Consumer:
        """Iterate over a queue's messages: `async for msg in client.consume("orders"):`.

        Pulls up to `batch` messages at a time, long-polling up to `wait`
        seconds for the first, and yields them one by one as `Delivery`
        objects (`msg.data`, `msg.id`, `msg.attempt`, ...).

        With `auto_ack` (the default) a message is acked once the loop body
        has finished with it, i.e. when the loop asks for the next one; the
        acks of a batch go out together with the next pull, in one round
        trip. A message whose body raises is nacked (delivered again at
        once, `attempt` one higher) and the exception propagates. Python
        does not tell a bare `async for` whether it was left by `break` or
        by an exception, so the message it was on is nacked either way;
        `async with client.consume(...) as messages: async for msg in
        messages:` knows the difference and acks it after a `break`. So does
        `await msg.ack()` before the `break`.

        With `auto_ack=False` nothing is acked for you: call `await msg.ack()`
        or `await msg.nack()` (also later, from another task; an ack made
        while the loop long-polls on this client waits for that pull).

        Either way, messages pulled but not yet yielded when the loop ends
        (`break`, an exception, cancellation, `aclose()`, or `close()` on
        the client) are nacked at once rather than left to their ack
        timeout. The loop ends quietly when the client is closed; with
        `stop_when_empty`, also at the first pull that finds the queue empty
        after waiting `wait` seconds.

        With `reconnect`, the loop outlives lost connections: it pulls again
        on the next one, and acks still pending go out there (in-flight
        messages belong to the queue, not to the connection). Messages pulled
        on a lost connection but never received come back after the queue's
        `ack_timeout`.

        To end a worker cleanly, call `stop()` on the consumer (from any
        task, or from the loop body): the loop pulls no more, a long-poll in
        progress is answered at once, and the loop ends once the messages it
        already has are processed and acked; nothing is cancelled or nacked.

        Other calls on this client end its long-poll early (see `pull`); the
        loop then pulls again, so they never wait for it, and a consumer with
        a client of its own saves those extra pulls. Keep `batch` times the
        time a message takes well under the queue's `ack_timeout`, or messages
        done early in a batch are delivered again before their ack goes out.

        Raises (from the loop):
            NotFound: no such channel or queue.
            Forbidden: neither the queue's owner nor an admin.
            ConnectionClosed: the client ended (`ConnectionLost` without
                `reconnect`), other than by `close()`.
            ValueError: `batch` below 1, `wait` negative, or zero without
                `stop_when_empty` (raised here, at once).
        """
        consumer = Consumer(
            self._link,
            channel,
            queue,
            batch=batch,
            wait=wait,
            auto_ack=auto_ack,
            stop_when_empty=stop_when_empty,
        )
        self._consumers.add(consumer)
        return consumer


def _queue_settings(
    overflow: Overflow | None, max_messages: int | None, max_bytes: int | None
) -> dict[str, Any]:
    """The queue settings given, as request fields (omitted ones stay as they are)."""
    given = {"overflow": overflow, "max_messages": max_messages, "max_bytes": max_bytes}
    return {name: value for name, value in given.items() if value is not None}


def ack_fields(channel: str, ids: Iterable[int], queue: str | None) -> dict[str, Any]:
    fields: dict[str, Any] = {"channel": channel}
    if queue is not None:
        fields["queue"] = queue
    fields["ids"] = list(ids)
    return fields
