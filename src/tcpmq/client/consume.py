"""Consuming a queue: pull in batches, yield one message at a time, ack what was processed.

Theory of operation: a `Consumer` pulls up to `batch` messages with one
long-polling `pull` and yields them one by one. A message counts as
processed when the loop asks for the next one: only then has its body run
to the end without an exception. Its id then waits in `_done` and goes out
in one `ack` written just before the next `pull`, so a batch costs one round
trip and the server handles the ack before it parks the pull.

Nothing is ever acked early; whatever the loop does not finish is nacked
(returned to the queue at once, rather than after its ack timeout):

- the messages pulled but not yet yielded, when the loop ends early (`break`,
  an exception, cancellation, `aclose()`, `close()` on the client);
- in auto-ack mode, the message the loop was on, unless the loop is known to
  have been left without an exception (`async with ... as messages`);
- the messages of a pull whose reply came after the loop stopped waiting for
  it (cancelled during a long-poll): they are nacked when the reply arrives.

`stop()` is the gentle end: no task is cancelled, no pull is abandoned. It
makes the server answer a waiting long-poll at once (a `ping` written behind
the pull does that; see the long-poll rule in protocol.md), the loop
processes what that pull and the batch in hand brought, acks it, and ends.

Acks are idempotent (an id no longer in flight comes back as `unknown`), so
an ack whose connection was lost before its reply is simply sent again on
the next connection, with the next pull.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import weakref
from collections import deque
from collections.abc import AsyncGenerator
from functools import partial
from types import TracebackType
from typing import Any

from ..errors import TcpmqError
from ..models import AckResult, Message, NackResult
from .connection import Call, Connection, Reply, parse, parse_list
from .errors import ConnectionClosed, ConnectionLost
from .reconnect import Link

log = logging.getLogger(__name__)


class _State(enum.Enum):
    PENDING = "pending"
    ACK = "ack"  # processed: acked, or the ack goes out with the next pull
    NACK = "nack"


class Delivery:
    """A message yielded by `Client.consume()`, with its `ack()` and `nack()`."""

    __slots__ = ("_consumer", "_state", "message")

    def __init__(self, consumer: Consumer, message: Message) -> None:
        self._consumer = consumer
        self._state = _State.PENDING
        #: The message as pulled.
        self.message = message

    @property
    def id(self) -> int:
        return self.message.id

    @property
    def data(self) -> Any:
        return self.message.data

    @property
    def attempt(self) -> int:
        """1 on the first delivery, one more on each after a nack or an ack timeout."""
        return self.message.attempt

    @property
    def published_at(self) -> float:
        return self.message.published_at

    @property
    def publisher(self) -> str:
        return self.message.publisher

    @property
    def pending(self) -> bool:
        """True until the message is acked or nacked (or marked for either)."""
        return self._state is _State.PENDING

    async def ack(self) -> bool:
        """Acknowledge the message now.

        Returns:
            True if it was in flight and is now gone; False if the server no
            longer had it in flight (its ack timeout passed, so it may be
            delivered again).

        Raises:
            RuntimeError: it was acked or nacked already.
            TcpmqError, TimeoutError: as for `Client.ack`.
        """
        self._check_pending("ack")
        result = parse(AckResult, await self._consumer._settle_one("ack", self.id), "ack")
        self._state = _State.ACK
        return result.acked == 1

    async def nack(self) -> bool:
        """Return the message to the queue now; its next delivery has `attempt` one higher.

        Returns:
            True if it was in flight and is now ready again; False if the
            server no longer had it in flight.

        Raises:
            RuntimeError: it was acked or nacked already.
            TcpmqError, TimeoutError: as for `Client.nack`.
        """
        self._check_pending("nack")
        result = parse(NackResult, await self._consumer._settle_one("nack", self.id), "nack")
        self._state = _State.NACK
        return result.requeued == 1

    def _check_pending(self, what: str) -> None:
        # Acking twice could ack a redelivery that another consumer now holds.
        if self._state is not _State.PENDING:
            raise RuntimeError(f"cannot {what} message {self.id}: it was {self._state.value}ed")

    def __repr__(self) -> str:
        return f"<Delivery id={self.id} attempt={self.attempt} {self._state.value}>"


# The server's timer and ours read different clocks at different moments.
_CLOCK_SLACK = 0.01


class Consumer:
    """What `Client.consume()` returns: iterate over it, optionally inside `async with`.

    It works on the client's `Link`, so its pulls and acks follow the
    connection of the moment through reconnects.
    """

    def __init__(
        self,
        link: Link,
        channel: str,
        queue: str | None,
        *,
        batch: int,
        wait: float,
        auto_ack: bool,
        stop_when_empty: bool,
    ) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        if wait < 0:
            raise ValueError("wait must not be negative")
        if wait == 0 and not stop_when_empty:
            raise ValueError("wait must be positive, or the loop would poll without pause")
        self._link = link
        self.channel = channel
        self.queue = queue
        self._fields: dict[str, Any] = {"channel": channel}
        if queue is not None:
            self._fields["queue"] = queue
        self._batch = batch
        self._wait = wait
        self._auto_ack = auto_ack
        self._stop_when_empty = stop_when_empty
        self._ready: deque[Delivery] = deque()  # pulled, not yet yielded
        self._current: Delivery | None = None  # yielded, its body running
        self._done: list[int] = []  # processed; acked with the next pull
        self._resending = False  # _done went out once already, its reply lost
        self._fetching = False  # an ack of _done and a pull are on the wire
        # Weak: the generator refers to this consumer, and a cycle would leave
        # a bare `async for` unfinalized (so its messages unsettled) until the
        # cyclic garbage collector happens to run.
        self._iterator: weakref.ref[AsyncGenerator[Delivery, None]] | None = None
        self._ended = False
        self._stop = asyncio.Event()  # stop(): pull no more, drain what is here

    def __aiter__(self) -> AsyncGenerator[Delivery, None]:
        iterator = self._iterator() if self._iterator is not None else None
        if self._ended or (self._iterator is not None and iterator is None):
            # A second loop would share its messages with the first one's cleanup.
            raise RuntimeError("this consumer's loop has ended; call consume() again")
        if iterator is None:
            iterator = self._run()
            self._iterator = weakref.ref(iterator)
        return iterator

    async def __aenter__(self) -> Consumer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        current = self._current
        if exc_type is None and self._auto_ack and current is not None and current.pending:
            # Left by break or return: the body finished with this message.
            self._current = None
            self._mark_done(current)
        await self.aclose()

    def stop(self) -> None:
        """End the loop once the messages already received are processed.

        The loop pulls no more. A long-poll waiting on the server is answered
        at once (with what has arrived, if anything), the messages pulled are
        still yielded, and the loop ends when they are done, acking them as
        usual. Nothing is cancelled or nacked, so this is the way to shut a
        worker down cleanly. Call it from any task or from the loop body; a
        second call does nothing. For an immediate end, use `aclose()`.
        """
        if self._stop.is_set():
            return
        self._stop.set()
        if not self._fetching:
            return
        # The server answers a waiting pull when another request follows it.
        connection = self._link.connection
        deadline = asyncio.get_running_loop().time() + self._link.timeout
        with contextlib.suppress(TcpmqError):  # gone: the pull ends with the connection
            connection.forget(connection.send("ping", {}, deadline))

    @property
    def stopping(self) -> bool:
        """Whether `stop()` was called."""
        return self._stop.is_set()

    async def aclose(self) -> None:
        """End the loop: ack what was processed, nack what was pulled and not.

        In auto-ack mode the message the loop was on counts as not processed.
        """
        self._ended = True
        iterator = self._iterator() if self._iterator is not None else None
        if iterator is not None:
            await iterator.aclose()
        await self._settle()

    async def _run(self) -> AsyncGenerator[Delivery, None]:
        try:
            while True:
                if not self._ready:
                    if not await self._fetch():
                        return
                    continue
                delivery = self._ready.popleft()
                self._current = delivery
                yield delivery
                # The loop asks for the next message: the body finished without raising.
                self._current = None
                if self._auto_ack and delivery.pending:
                    self._mark_done(delivery)
        finally:
            self._ended = True
            await self._settle()

    def _mark_done(self, delivery: Delivery) -> None:
        delivery._state = _State.ACK
        self._done.append(delivery.id)

    async def _settle_one(self, op: str, message_id: int) -> Reply:
        """`ack` or `nack` one message now, as `Client.ack` and `Client.nack` do."""
        return await self._link.call(op, {**self._fields, "ids": [message_id]})

    async def _fetch(self) -> bool:
        """Ack what is done and pull the next batch, in one round trip.

        Returns False when the loop should end: the client was closed, or
        the queue is empty and `stop_when_empty` is set.
        """
        link = self._link
        loop = asyncio.get_running_loop()
        while True:
            if self._stop.is_set():
                return False
            try:
                connection = link.connection
                if connection.closed:
                    # No deadline: a consumer waits out any reconnect, or stop().
                    reconnected = await self._next_connection()
                    if reconnected is None:
                        return False
                    connection = reconnected
            except ConnectionClosed:
                if link.closed_by_client:
                    return False
                raise
            done = self._done
            sent_at = loop.time()
            deadline = sent_at + link.timeout + self._wait
            ack = None
            try:
                if done:
                    ack = connection.send("ack", {**self._fields, "ids": done}, deadline)
                pull = connection.send(
                    "pull", {**self._fields, "max": self._batch, "wait": self._wait}, deadline
                )
            except ConnectionClosed:
                if ack is not None:
                    connection.forget(ack)
                continue  # not sent: wait for the next connection, or raise
            late = partial(self._nack_late, connection)
            self._fetching = True
            try:
                if ack is not None:
                    try:
                        acked = await connection.wait(ack)
                    except ConnectionClosed:
                        connection.forget(pull, late)
                        raise
                    except BaseException:
                        # Cancelled, timed out or refused: written ahead of the
                        # pull, the ack is handled (or failed) either way; it is
                        # not worth sending again.
                        del done[: len(done)]
                        connection.forget(pull, late)
                        raise
                    self._acked(acked, len(done))
                reply = await connection.wait(pull, late)
            except ConnectionClosed:
                if link.closed_by_client:
                    if ack is not None:
                        # Written before close(), which sends what was written.
                        del done[: len(done)]
                    return False
                if link.closed:
                    raise
                # Reconnecting: ack again what is unconfirmed (acks are
                # idempotent), and pull again.
                self._resending = bool(done)
                continue
            finally:
                self._fetching = False
            messages = parse_list(Message, reply.get("messages"), "pull")
            if messages:
                self._ready.extend(Delivery(self, message) for message in messages)
                return True
            # Empty: the queue stayed empty for the whole wait, unless another
            # call on this connection ended the wait early (the server answers
            # a waiting pull when any other request follows it): then pull again.
            if self._stop_when_empty and loop.time() - sent_at + _CLOCK_SLACK >= self._wait:
                return False

    async def _next_connection(self) -> Connection | None:
        """The link's next connection, or None if `stop()` comes first."""
        ready = asyncio.ensure_future(self._link.ready(None))
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({ready, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not ready.done():
                ready.cancel()
        return ready.result() if ready.done() and not ready.cancelled() else None

    def _acked(self, reply: Reply, count: int) -> None:
        result = parse(AckResult, reply, "ack")
        del self._done[:count]
        resent, self._resending = self._resending, False
        if result.unknown and resent:
            # Expected: the first ack was applied, only its reply was lost.
            log.debug("tcpmq consumer of %s: resent acks, %d already done", self.channel, count)
        elif result.unknown:
            log.warning(
                "tcpmq consumer of %s: %d of %d processed messages were no longer in flight"
                " (their ack timeout passed, or the server restarted) and may be delivered again",
                self.channel,
                len(result.unknown),
                count,
            )

    def _nack_late(self, connection: Connection, reply: Reply) -> None:
        """A pull answered after the loop stopped waiting: return its messages at once."""
        messages = reply.get("messages")
        if not isinstance(messages, list):
            return
        ids = [m["id"] for m in messages if isinstance(m, dict) and isinstance(m.get("id"), int)]
        if not ids:
            return
        loop = asyncio.get_running_loop()
        try:
            call = connection.send(
                "nack", {**self._fields, "ids": ids}, loop.time() + self._link.timeout
            )
        except TcpmqError as exc:
            log.info(
                "tcpmq consumer of %s: could not return %d late messages (%s);"
                " they come back after their ack timeout",
                self.channel,
                len(ids),
                exc,
            )
            return
        connection.forget(call)

    async def _settle(self) -> None:
        """Ack what was processed; nack what was pulled and not processed.

        Called when the loop ends. Does not wait for a reconnect: what it
        cannot send, the server delivers again after the ack timeout.
        """
        sent = self._settle_now()
        if sent is None:
            return
        connection, calls = sent
        try:
            for call in calls:
                await connection.wait(call)
        except (TcpmqError, TimeoutError) as exc:
            if isinstance(exc, ConnectionLost) and self._link.closed_by_client:
                return  # close() came meanwhile, and sends what was written before it
            log.warning(
                "tcpmq consumer of %s: settling its messages failed (%s);"
                " the server delivers them again after their ack timeout",
                self.channel,
                exc,
            )
        finally:
            for call in calls:
                connection.forget(call)

    def _settle_before_close(self) -> None:
        """Write the acks and nacks of `_settle` without waiting for their replies.

        For `Client.close()`: the requests are written before the connection
        closes, and the server handles them before the EOF.
        """
        sent = self._settle_now()
        if sent is not None:
            connection, calls = sent
            for call in calls:
                connection.forget(call)

    def _settle_now(self) -> tuple[Connection, list[Call]] | None:
        """Send the acks and nacks `_settle` is about; the calls, None if nothing was sent."""
        nack: list[Delivery] = []
        current, self._current = self._current, None
        if self._auto_ack and current is not None and current.pending:
            nack.append(current)
        nack.extend(self._ready)
        self._ready.clear()
        for delivery in nack:
            delivery._state = _State.NACK
        ack_ids: list[int] = []
        if not self._fetching:  # otherwise the ack on the wire carries them
            ack_ids, self._done = self._done, []
        nack_ids = [delivery.id for delivery in nack]
        if not ack_ids and not nack_ids:
            return None
        connection = self._link.connection
        deadline = asyncio.get_running_loop().time() + self._link.timeout
        calls: list[Call] = []
        try:
            if ack_ids:
                calls.append(connection.send("ack", {**self._fields, "ids": ack_ids}, deadline))
            if nack_ids:
                calls.append(connection.send("nack", {**self._fields, "ids": nack_ids}, deadline))
        except TcpmqError as exc:
            log.warning(
                "tcpmq consumer of %s: could not ack %d and nack %d messages (%s);"
                " the server delivers them again after their ack timeout",
                self.channel,
                len(ack_ids),
                len(nack_ids),
                exc,
            )
            for call in calls:
                connection.forget(call)
            return None
        return connection, calls
