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

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from ..config import Limits
from ..pending import Pending, Result


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """What `subscribe` and `queue.update` may set on a queue; None leaves it as it is
    (for a new queue: its default). Limits are within the server's (checked by the caller)."""

    overflow: str | None = None
    max_messages: int | None = None
    max_bytes: int | None = None


NO_SETTINGS = QueueSettings()


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

    def exempt_from_quotas(self, name: str) -> None:
        """The user `name` is an admin: no per-user quota applies to it (the
        server names every admin at start and as one is created; deleting
        the user forgets it)."""

    # -- channels -------------------------------------------------------------

    def create_channel(
        self, name: str, owner: str, admin: bool, created_at: float, public: bool
    ) -> Result | Pending:
        """Result: `channel`. `admin`: the owner is one (no `max_channels_per_user`).

        Raises: AlreadyExists, LimitExceeded, StorageFull.
        """

    def delete_channel(self, name: str, user: str, admin: bool) -> Result | Pending:
        """Raises: NotFound, Forbidden (neither owner nor admin)."""

    def list_channels(self) -> Result | Pending:
        """Result: `channels`, sorted by name."""

    def get_channel(self, name: str, now: float) -> Result | Pending:
        """Result: `channel` with its `grants` and `queues` (`now`: epoch seconds).

        Raises: NotFound.
        """

    # -- permissions (who may: the channel's owner and admins) ----------------

    def grant(
        self, channel: str, user: str, rights: list[str], caller: str, admin: bool
    ) -> Result | Pending:
        """Give `user` `rights`. Result: `rights` (all it holds now).

        Raises: NotFound, Forbidden.
        """

    def revoke(
        self,
        channel: str,
        user: str,
        rights: list[str],
        user_admin: bool,
        caller: str,
        admin: bool,
    ) -> Result | Pending:
        """Take `rights` from `user` (an admin if `user_admin`); its queues on
        the channel go when it may no longer subscribe.

        Result: `rights` (those left), `queues_deleted`. Raises: NotFound, Forbidden.
        """

    def update_channel(
        self, channel: str, public: bool, caller: str, admin: bool
    ) -> Result | Pending:
        """Set the channel's access; made private, its queues' owners are
        granted `subscribe`. Result: `access`, `granted`. Raises: NotFound, Forbidden.
        """

    # -- queues ---------------------------------------------------------------

    def subscribe(
        self,
        channel: str,
        queue: str,
        user: str,
        admin: bool,
        ack_timeout: float | None,
        created_at: float,
        reserved_for: str | None,
        settings: QueueSettings = NO_SETTINGS,
    ) -> Result | Pending:
        """Result: `queue`, `created`. Raises: NotFound, Forbidden, LimitExceeded, StorageFull
        (the last two only when the queue would be created).

        Creating a queue needs the subscribe right; `reserved_for` is the
        user whose name the queue's name is (or starts with, and a dot),
        the only one besides admins who may create it. Forbidden also for
        overflow `reject` asked by neither the channel's owner nor an admin.
        """

    def list_queues(self, channel: str | None, now: float) -> Result | Pending:
        """Result: `queues` of `channel` sorted by name, or with None of every
        channel sorted by channel and name. `now` (epoch seconds) dates their
        `oldest_age`. Raises: NotFound.
        """

    def delete_queue(self, channel: str, queue: str, user: str, admin: bool) -> Result | Pending:
        """Raises: NotFound, Forbidden."""

    def update_queue(
        self, channel: str, queue: str, user: str, admin: bool, settings: QueueSettings, now: float
    ) -> Result | Pending:
        """Change a queue's overflow policy and limits. Result: `queue` (`now`:
        epoch seconds). Raises: NotFound, Forbidden (neither the queue's owner,
        the channel's owner nor an admin; or `reject` asked by neither of the last two)."""

    def purge_queue(self, channel: str, queue: str, user: str, admin: bool) -> Result | Pending:
        """Drop the queue's ready messages. Result: `purged`. Raises: NotFound, Forbidden."""

    def delete_user(self, name: str, heir: str) -> Awaitable[None] | None:
        """Drop the user's queues and grants, and hand its channels to `heir`
        (done on return, or once the awaitable returned is)."""

    # -- messages -------------------------------------------------------------

    def publish(
        self,
        channel: str,
        datas: list[bytes],
        publisher: bytes,
        published_at: float,
        user: str,
        admin: bool,
    ) -> tuple[int, int] | Awaitable[tuple[int, int]]:
        """Append encoded messages to every queue of the channel (done on return,
        or once the awaitable returned is: a backend across the network).

        `publisher` is the publisher's JSON-encoded name, `user` the same
        name and `admin` its role. Returns the first message id (the others
        follow it) and how many queues the channel has. A full queue refuses
        the publish whole or drops, by its overflow policy (protocol.md).

        Raises:
            NotFound: no such channel.
            Forbidden: the channel is private and `user` has no publish right.
            StorageFull: the store takes no new data now.
            LimitExceeded: a full queue rejects, the memory budget would be
                exceeded, or a message is too large as stored.
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
