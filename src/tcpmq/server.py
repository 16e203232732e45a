"""The broker server: listening socket, shared state, timers, signals and shutdown.

The server owns what all connections share (the broker core, the user
directory, the token signer) and the few timers of the process: one for the
earliest ack deadline of the whole broker, re-armed only when an earlier one
appears. Connections are `Session` objects; the server admits, counts and,
on shutdown or user deletion, ends them.

The broker's state is journaled to the data dir's store (see storage/) and
recovered from it on start.

Shutdown order: stop accepting, send every connection a `bye`, write and
sync the journal (which releases replies waiting for the disk), give the
connections `shutdown_grace` seconds to go, then abort what is left.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from .auth import TokenSigner, hash_password, load_or_create_secret, verify_password
from .broker import Broker
from .config import ServerConfig
from .errors import AuthFailed, InternalError, LimitExceeded, ShuttingDown
from .session import Session
from .storage import DiskStore, open_store
from .users import User, UserStore

log = logging.getLogger(__name__)

ADMIN_USER = "admin"
ADMIN_PASSWORD_ENV = "TCPMQ_ADMIN_PASSWORD"


def open_data_dir(config: ServerConfig) -> tuple[TokenSigner, UserStore]:
    """The signing key and the user directory of the data dir (created 0700 if missing)."""
    config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    signer = TokenSigner(load_or_create_secret(config.data_dir))
    users = UserStore(config.data_dir, config.limits.max_users)
    if users.exists:
        users.load()
    return signer, users


class Server:
    def __init__(self, config: ServerConfig, *, admin_password: str | None = None) -> None:
        self.config = config
        self._admin_password = admin_password
        self.broker = Broker(config.limits)
        self.sessions: set[Session] = set()
        self._sessions_by_user: dict[str, set[Session]] = {}
        self._server: asyncio.Server | None = None
        self._executor = ThreadPoolExecutor(
            max_workers=config.limits.max_concurrent_logins, thread_name_prefix="tcpmq-hash"
        )
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._deadline_at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._all_closed: asyncio.Event | None = None  # set during shutdown
        self.host = config.host
        self.port = config.port
        self.signer: TokenSigner
        self.users: UserStore
        self.store: DiskStore
        #: Set when the store failed to write; the server stops.
        self.failure: BaseException | None = None
        self._stopping: asyncio.Event | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "server not started"
        return self._loop

    def now(self) -> float:
        """Monotonic seconds: the broker core's clock."""
        return self.loop.time()

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """Open the data dir, create the first admin if needed, and listen."""
        self._loop = asyncio.get_running_loop()
        self.signer, self.users = open_data_dir(self.config)
        if not self.users.exists:
            self._create_first_admin()
        started = time.perf_counter()
        self.store = open_store(
            self.config.data_dir, self.broker, self.config.storage, self._storage_failed
        )
        recovered = self.store.recovered
        log.info(
            "store recovered: %d channels, %d queued messages in %.2f s (fsync=%s)",
            len(self.broker.channels),
            recovered.messages,
            time.perf_counter() - started,
            self.config.storage.fsync,
        )
        self._stopping = asyncio.Event()
        self._server = await self._loop.create_server(
            lambda: Session(self), self.config.host, self.config.port, backlog=1024
        )
        sockname = self._server.sockets[0].getsockname()
        self.host, self.port = sockname[0], sockname[1]
        log.info("tcpmq listening on %s:%d", self.host, self.port)

    def _create_first_admin(self) -> None:
        password = self._admin_password or os.environ.get(ADMIN_PASSWORD_ENV)
        generated = not password
        if not password:
            password = secrets.token_urlsafe(18)
        if len(password) < 8:
            raise ValueError(f"{ADMIN_PASSWORD_ENV} must have at least 8 characters")
        self.users.create(ADMIN_USER, "admin", hash_password(password), time.time())
        if generated:
            # Printed once, on the first start; it is not stored anywhere in clear.
            print(
                f"tcpmq: created user {ADMIN_USER!r} with password {password}\n"
                f"tcpmq: store it now, it will not be shown again",
                file=sys.stderr,
                flush=True,
            )
        else:
            log.info("created user %r with the given password", ADMIN_USER)

    async def stop(self) -> None:
        """Stop accepting, say bye to every connection, wait up to the grace period."""
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions):
            session.close(ShuttingDown("server is shutting down"))
        if self._loop is not None and hasattr(self, "store"):
            # Syncs the journal, which also sends replies still waiting for it.
            await self.store.close()
        if self.sessions:
            self._all_closed = asyncio.Event()
            try:
                await asyncio.wait_for(self._all_closed.wait(), self.config.shutdown_grace)
            except TimeoutError:
                log.warning("%d connections still open after the grace period", len(self.sessions))
        for session in list(self.sessions):
            session.abort()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def serve_until_signalled(self) -> None:
        """Run until SIGTERM or SIGINT, then stop cleanly."""
        await self.start()
        assert self._stopping is not None
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, self._stopping.set)
        try:
            await self._stopping.wait()
        finally:
            log.info("stopping")
            await self.stop()
        if self.failure is not None:
            raise OSError(f"stopped because the store could not write: {self.failure}")

    def _storage_failed(self, exc: BaseException) -> None:
        # Nothing more can be made durable: refuse everything and stop.
        self.failure = exc
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions):
            session.fail(InternalError("the broker's store failed; the server is stopping"))
        if self._stopping is not None:
            self._stopping.set()

    # -- connections ---------------------------------------------------------

    def admit(self, session: Session) -> bool:
        if len(self.sessions) >= self.config.limits.max_connections:
            return False
        self.sessions.add(session)
        return True

    def bind_user(self, session: Session, user: User) -> None:
        bound = self._sessions_by_user.setdefault(user.name, set())
        if session not in bound and len(bound) >= self.config.limits.max_connections_per_user:
            raise LimitExceeded(
                f"user {user.name!r} has too many connections",
                limit="max_connections_per_user",
                maximum=self.config.limits.max_connections_per_user,
            )
        if session.user is not None and session.user.name != user.name:
            self._unbind(session, session.user.name)
        bound.add(session)

    def _unbind(self, session: Session, name: str) -> None:
        bound = self._sessions_by_user.get(name)
        if bound is not None:
            bound.discard(session)
            if not bound:
                del self._sessions_by_user[name]

    def forget(self, session: Session) -> None:
        self.sessions.discard(session)
        if session.user is not None:
            self._unbind(session, session.user.name)
        if not self.sessions and self._all_closed is not None:
            self._all_closed.set()

    def end_sessions_of(self, name: str) -> None:
        """Close the user's connections, after the current reply has gone out."""

        def end() -> None:
            for session in list(self._sessions_by_user.get(name, ())):
                session.close(AuthFailed(f"user {name!r} was deleted"))

        self.loop.call_soon(end)

    # -- passwords and tokens ---------------------------------------------------

    def check_password(self, password: str, stored: str) -> asyncio.Future[bool]:
        """Verify in a worker thread: scrypt is slow on purpose and must not stall the loop."""
        return self.loop.run_in_executor(self._executor, verify_password, password, stored)

    def make_password_hash(self, password: str) -> asyncio.Future[str]:
        return self.loop.run_in_executor(self._executor, hash_password, password)

    def mint_token(self, user: str, ttl: int | None = None) -> str:
        """A token for an existing user, as `login` would give (used by tests and the CLI)."""
        record = self.users.get(user)
        lifetime = self.config.limits.default_token_ttl if ttl is None else ttl
        return self.signer.mint(record.name, record.role, record.uid, lifetime)

    # -- ack deadlines -------------------------------------------------------

    def watch_deadlines(self) -> None:
        """Arm the one deadline timer if the broker now has an earlier deadline."""
        deadline = self.broker.next_deadline()
        if deadline is None:
            return
        if self._deadline_timer is None or deadline < self._deadline_at:
            if self._deadline_timer is not None:
                self._deadline_timer.cancel()
            self._deadline_at = deadline
            self._deadline_timer = self.loop.call_at(deadline, self._deadlines_due)

    def _deadlines_due(self) -> None:
        self._deadline_timer = None
        self.broker.expire(self.loop.time())
        self.watch_deadlines()
