"""Password hashing off the event loop: a few threads, and a bounded, fair queue in front.

scrypt is slow on purpose (tens of milliseconds and 16 MiB each): run on the
loop it would stall every connection. `max_concurrent_logins` threads bound
the CPU and memory a login flood can take; further hashes wait in a queue
kept here on the loop, not in the thread pool, so that:

- a hash whose requester went away (its connection closed) is dropped from
  the queue at once (cancel the future `check`/`hash` returned); `cancelled`
  counts them. A flood of logins from connections that then close leaves no
  work behind it.
- the queue is bounded: `max_queued_logins` hashes in all and
  `max_queued_logins_per_address` per source address. Past the address's
  bound a hash is refused at once (`LimitExceeded`). When the whole queue is
  full, a newcomer from an address with at least two fewer queued hashes
  than the address with the most takes the place of that address's newest
  one (which is refused); otherwise the newcomer is refused. So a flood from
  few addresses can fill the queue, but not keep out an address that asks
  for less than it does.
- addresses take turns: the threads take the oldest hash of each address in
  round robin, so a login from a quiet address waits for at most one hash
  per busy address, not for the whole flood.
- addresses a user authenticated from lately (`first`, see loginlimits.py)
  go before all others, and in a full queue take the place of another's:
  a flood from more addresses than the queue holds can keep newcomers out,
  but not the clients that were logging in before it began.
- a hash whose client has sent EOF (`hung_up`) waits behind every other and
  is the first pushed out of a full queue. A client that closed its socket
  looks just like one that only ended its sending side (`nc -N`, which still
  reads its reply) until a reply is written to it; so such a hash is kept,
  but cannot delay a live login.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .auth import hash_password, verify_password
from .errors import LimitExceeded

# Niceness of the hashing threads: the event loop (every connection's
# messages) goes first when they compete for a core; hashes take what is left.
_HASH_NICENESS = 19


def _yield_cpu() -> None:
    """Lower this hashing thread's CPU priority (Linux: niceness is per thread)."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _HASH_NICENESS)


class _Job:
    __slots__ = ("args", "function", "future", "lane", "source", "table")

    def __init__(
        self,
        function: Callable[..., Any],
        args: tuple[Any, ...],
        future: asyncio.Future[Any],
        source: str,
    ) -> None:
        self.function = function
        self.args = args
        self.future = future
        self.source = source
        # The queue it waits in: its source's, or the hung-up lane; and the
        # table of source queues that holds that lane (None: hung up).
        self.lane: deque[_Job] | None = None
        self.table: dict[str, deque[_Job]] | None = None


def _queue_full(limit: str, maximum: int, whose: str) -> LimitExceeded:
    return LimitExceeded(
        f"too many logins{whose} are waiting; retry later", limit=limit, maximum=maximum
    )


def _heaviest(table: dict[str, deque[_Job]]) -> deque[_Job]:
    """The source queue with the most jobs; of equals, the one whose turn comes last."""
    return max(reversed(table.values()), key=len)


class PasswordPool:
    def __init__(self, max_workers: int, max_queued: int, max_queued_per_source: int) -> None:
        self._executor = ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="tcpmq-hash", initializer=_yield_cpu
        )
        self._workers = max_workers
        self.max_queued = max_queued
        self.max_queued_per_source = max_queued_per_source
        self._running = 0
        # Waiting hashes by source address; the dict's order is the turn order.
        # Addresses that authenticated lately (`first`) have their own table,
        # served before the others.
        self._first: dict[str, deque[_Job]] = {}
        self._queues: dict[str, deque[_Job]] = {}
        # Waiting hashes whose client has hung up its sending side (EOF):
        # still answered, but after every other, and the first pushed out.
        self._hung_up: deque[_Job] = deque()
        # Every waiting job, by the future its requester holds.
        self._waiting: dict[asyncio.Future[Any], _Job] = {}
        #: Hashes given to a thread.
        self.started = 0
        #: Queued hashes dropped because their requester went away.
        self.cancelled = 0
        #: Hashes refused because the queue was full (at once, or pushed out later).
        self.refused = 0

    @property
    def queued(self) -> int:
        """Hashes waiting for a thread."""
        return len(self._waiting)

    def check(
        self, password: str, stored: str, source: str, *, first: bool = False
    ) -> asyncio.Future[bool]:
        """Whether `password` matches the `stored` hash (constant time).

        `first`: the source is trusted (a user authenticated from it lately):
        its hash goes before those of other sources, and may take the place
        of one of theirs in a full queue. Cancel the future to drop the check
        while it is queued.

        Raises:
            LimitExceeded: the queue is full (`max_queued_logins`), or holds
                `max_queued_logins_per_address` of `source`'s hashes.
        """
        return self._submit(verify_password, (password, stored), source, first)

    def hash(self, password: str, source: str, *, first: bool = False) -> asyncio.Future[str]:
        """A new stored hash of `password`; queued and bounded as `check`."""
        return self._submit(hash_password, (password,), source, first)

    def hung_up(self, future: asyncio.Future[Any]) -> None:
        """The requester of `future` will send nothing more (EOF): if its hash
        still waits, it goes behind every other and is the first pushed out.

        It is still answered if it gets its turn (a client may send a login
        and EOF, then read its token), and is dropped when the connection
        is found closed (`future` cancelled).
        """
        job = self._waiting.get(future)
        if job is None or job.lane is self._hung_up:
            return
        self._leave_lane(job)
        job.lane, job.table = self._hung_up, None
        self._hung_up.append(job)

    def _submit(
        self, function: Callable[..., Any], args: tuple[Any, ...], source: str, first: bool
    ) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        job = _Job(function, args, future, source)
        if self._running < self._workers and not self._waiting:
            self._start(job)
            return future
        table = self._first if first else self._queues
        queue = table.get(source)
        waiting = 0 if queue is None else len(queue)
        if waiting >= self.max_queued_per_source:
            self.refused += 1
            raise _queue_full(
                "max_queued_logins_per_address",
                self.max_queued_per_source,
                " from this address",
            )
        if len(self._waiting) >= self.max_queued and not self._push_out(table, waiting):
            self.refused += 1
            raise _queue_full("max_queued_logins", self.max_queued, "")
        if queue is None:
            queue = table[source] = deque()
        job.lane, job.table = queue, table
        queue.append(job)
        self._waiting[future] = job
        future.add_done_callback(self._dropped)
        return future

    def _push_out(self, table: dict[str, deque[_Job]], waiting: int) -> bool:
        """Make room in a full queue for a hash that goes in `table`, from a
        source with `waiting` queued there.

        The oldest hung-up hash goes first; else, for a trusted source, the
        newest of the untrusted source with the most queued; else the newest
        of the source with the most queued in the same table, if it has at
        least two more than `waiting`. Returns whether a place was freed.
        Runs only when the queue is full.
        """
        if self._hung_up:
            job = self._hung_up[0]
        elif table is self._first and self._queues:
            job = _heaviest(self._queues)[-1]
        else:
            if not table:
                return False
            heaviest = _heaviest(table)
            # Only if that evens out the shares: trading places between
            # equals (one hash each from many addresses) only churns.
            if len(heaviest) <= waiting + 1:
                return False
            job = heaviest[-1]
        self._unqueue(job)
        if job.future.done():  # cancelled, its callback not run yet
            self.cancelled += 1
        else:
            self.refused += 1
            job.future.set_exception(_queue_full("max_queued_logins", self.max_queued, ""))
        return True

    def _dropped(self, future: asyncio.Future[Any]) -> None:
        """A future is done: if its job still waits, its requester cancelled it."""
        job = self._waiting.get(future)
        if job is not None:
            self._unqueue(job)
            self.cancelled += 1

    def _unqueue(self, job: _Job) -> None:
        del self._waiting[job.future]
        self._leave_lane(job)

    def _leave_lane(self, job: _Job) -> None:
        lane, table = job.lane, job.table
        assert lane is not None
        job.lane = job.table = None
        if lane and lane[0] is job:
            lane.popleft()
        else:
            lane.remove(job)  # at most max_queued long; rare (cancelled, pushed out)
        if not lane and table is not None:
            del table[job.source]

    def _start(self, job: _Job) -> None:
        self._running += 1
        self.started += 1
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self._executor, job.function, *job.args)
        work.add_done_callback(lambda done: self._finished(job, done))

    def _finished(self, job: _Job, work: asyncio.Future[Any]) -> None:
        self._running -= 1
        if not job.future.done():  # else: the requester went away meanwhile
            if work.cancelled():
                job.future.cancel()
            elif (error := work.exception()) is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(work.result())
        self._start_next()

    def _start_next(self) -> None:
        while self._running < self._workers and self._waiting:
            table = self._first or self._queues
            if table:
                # Addresses take turns: this one goes to the back of the order.
                source = next(iter(table))
                queue = table[source] = table.pop(source)
                job = queue[0]
            else:
                job = self._hung_up[0]
            self._unqueue(job)
            if job.future.done():  # cancelled, its callback not run yet
                self.cancelled += 1
                continue
            self._start(job)

    def close(self) -> None:
        for job in list(self._waiting.values()):
            job.future.cancel()
        self._waiting.clear()
        self._first.clear()
        self._queues.clear()
        self._hung_up.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)
