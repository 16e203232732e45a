"""What a backend is: the broker's operations, and when their effects are durable.

A backend keeps channels, queues and messages. Handlers call it at the
level of broker operations (create a channel, subscribe, publish a batch,
pull, ack, ...) and get either the result fields of the reply or a `Pending`
that completes later (a long-poll pull; a backend across the network
answers every operation that way). Permission rules that depend on who owns
what are checked inside the operation, so that a shared backend can check
and act in one atomic step.

The commit point: every change a backend makes is covered by a *ticket*,
an integer that only grows. `Commits.ticket()` taken after a set of
operations covers all of them; the connection holds their replies until
`Commits.durable()` reaches it. A backend that keeps nothing on disk hands
out tickets that are durable at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..config import Limits
from ..pending import Pending, Result


class Commits(Protocol):
    """When the changes made so far are durable."""

    def ticket(self) -> int:
        """A ticket covering every change made so far (by any connection)."""

    def durable(self) -> int:
        """Every ticket up to this one is durable."""

    def when_durable(self, callback: Callable[[], None]) -> None:
        """Call `callback` once `durable()` next advances (or the store failed)."""

    def sync_now(self) -> None:
        """Make every ticket handed out so far durable before returning.

        Blocks the event loop for one sync: for a connection that must
        answer now because it cannot write later (EOF on TLS).
        """


class Backend(Protocol):
    """The broker's state and operations (see the module docstring)."""

    name: str
    commits: Commits

    def check_room(self) -> None:
        """Whether new data (a user, say) may be stored now.

        Raises: StorageFull, while the store's disk is (nearly) full or it cannot write.
        """

    # -- channels -------------------------------------------------------------

    def create_channel(self, name: str, owner: str, created_at: float) -> Result | Pending:
        """Result: `channel`. Raises: AlreadyExists, LimitExceeded, StorageFull."""

    def delete_channel(self, name: str, user: str, admin: bool) -> Result | Pending:
        """Raises: NotFound, Forbidden (neither owner nor admin)."""

    def list_channels(self) -> Result | Pending:
        """Result: `channels`, sorted by name."""

    def get_channel(self, name: str, now: float) -> Result | Pending:
        """Result: `channel` with its `queues` (`now`: epoch seconds). Raises: NotFound."""

    # -- queues ---------------------------------------------------------------

    def subscribe(
        self,
        channel: str,
        queue: str,
        user: str,
        admin: bool,
        ack_timeout: float | None,
        created_at: float,
    ) -> Result | Pending:
        """Result: `queue`, `created`. Raises: NotFound, Forbidden, LimitExceeded, StorageFull
        (the last two only when the queue would be created)."""

    def list_queues(self, channel: str | None, now: float) -> Result | Pending:
        """Result: `queues` of `channel` sorted by name, or with None of every
        channel sorted by channel and name. `now` (epoch seconds) dates their
        `oldest_age`. Raises: NotFound.
        """

    def delete_queue(self, channel: str, queue: str, user: str, admin: bool) -> Result | Pending:
        """Raises: NotFound, Forbidden."""

    def purge_queue(self, channel: str, queue: str, user: str, admin: bool) -> Result | Pending:
        """Drop the queue's ready messages. Result: `purged`. Raises: NotFound, Forbidden."""

    def delete_user(self, name: str, heir: str) -> None:
        """Drop the user's queues and hand its channels to `heir`."""

    # -- messages -------------------------------------------------------------

    def publish(
        self, channel: str, datas: list[bytes], publisher: bytes, published_at: float
    ) -> tuple[int, int]:
        """Append encoded messages to every queue of the channel, all or nothing.

        `publisher` is the publisher's JSON-encoded name. Returns the first
        message id (the others follow it) and how many queues got them.

        Raises:
            NotFound: no such channel.
            StorageFull: the store takes no new data now.
            LimitExceeded: some queue would exceed its message or byte limit,
                the memory budget would, or a message is too large as stored.
        """

    def pull(
        self, channel: str, queue: str, user: str, admin: bool, max_messages: int, wait: float
    ) -> Result | Pending:
        """Result: `messages`. Waits up to `wait` seconds if none is ready.

        Raises: NotFound, Forbidden.
        """

    def peek(
        self, channel: str, queue: str, user: str, admin: bool, max_messages: int
    ) -> Result | Pending:
        """Result: `messages`, ready ones left as they are. Raises: NotFound, Forbidden."""

    def ack(
        self, channel: str, queue: str, user: str, admin: bool, ids: list[int]
    ) -> Result | Pending:
        """Result: `acked`, `unknown`. Raises: NotFound, Forbidden."""

    def nack(
        self, channel: str, queue: str, user: str, admin: bool, ids: list[int]
    ) -> Result | Pending:
        """Result: `requeued`, `unknown`. Raises: NotFound, Forbidden."""

    # -- time -----------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When `expire` next has work (loop time), if ever."""

    def expire(self, now: float) -> int:
        """Return in-flight messages whose ack deadline passed to ready."""

    async def close(self) -> None:
        """Make everything durable and release files and threads."""

    def use_limits(self, limits: Limits) -> None:
        """Check `limits` from now on (a reload; see reload.py for which ones may change)."""
