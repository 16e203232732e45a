"""A fuzz run: several fuzzing connections at once against one server, until a budget is spent.

The run logs in as an admin (with the client library) to create the fuzz
user and to hand out its tokens; the fuzz lines themselves go over raw
sockets as the fuzz user (a plain user: the lines may do anything it may,
which keeps what they create bounded by the server's limits) or
unauthenticated. Each worker has its own seeded generator and corpus, so a
run is repeatable from its seed up to the interleaving of the workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..client import Client, connect
from ..errors import AlreadyExists, AuthFailed, LimitExceeded
from .frames import FUZZ_PASSWORD, FUZZ_USER, FrameMaker
from .session import ContractBroken, FuzzSession, Tally

CORPUS_SIZE = 4000
# Fuzz-user tokens live long enough for any run; revocations are handled.
TOKEN_TTL = 7 * 86400
LOGIN_TRIES = 10


@dataclass(frozen=True, slots=True)
class Budget:
    """When a run stops: after `frames` answered lines or `seconds`, whichever comes first."""

    frames: int
    seconds: float


class FuzzUser:
    """The fuzz user's tokens, refreshed through the admin when the fuzz lines revoke them."""

    def __init__(self, admin: Client, url: str) -> None:
        self._admin = admin
        self._url = url
        self._token: str | None = None
        self._lock = asyncio.Lock()

    async def create(self) -> None:
        with contextlib.suppress(AlreadyExists):
            await self._admin.user_create(FUZZ_USER, FUZZ_PASSWORD)

    async def token(self, refused: bool) -> str:
        async with self._lock:
            if self._token is None or refused:
                self._token = await self._login()
            return self._token

    async def _login(self) -> str:
        for _ in range(LOGIN_TRIES):
            async with connect(self._url, anonymous=True) as client:
                try:
                    return (await client.login(FUZZ_USER, FUZZ_PASSWORD, ttl=TOKEN_TTL)).token
                except AuthFailed:
                    pass
                except LimitExceeded as exc:
                    # Fuzz lines' failed logins drained this address's bucket:
                    # wait as the server says, as any client should.
                    await asyncio.sleep(min(float(exc.details.get("retry_after", 1.0)), 10.0))
                    continue
            # A fuzz line changed the password (user.passwd), perhaps again
            # since the last try: set the known one again.
            await self._admin.user_passwd(FUZZ_PASSWORD, name=FUZZ_USER)
        raise ContractBroken(f"the fuzz user's password was refused {LOGIN_TRIES} times")


async def fuzz(
    url: str,
    admin: Callable[[], Awaitable[Client]],
    budget: Budget,
    tally: Tally,
    *,
    seed: int,
    workers: int = 4,
    on_progress: Callable[[Tally, float], None] | None = None,
    progress_every: float = 10.0,
) -> None:
    """Fuzz the server at `url` until `budget` is spent, counting in `tally`.

    `admin` opens an admin client. `on_progress(tally, elapsed)` is called
    every `progress_every` seconds.

    Raises:
        ContractBroken: a reply broke protocol.md's contract, or the fuzz
            user could not get a token.
        TcpmqError: a request of the admin's failed.
        TimeoutError: the server stopped answering.
        OSError: the server went away.
    """
    admin_client = await admin()
    try:
        info = await admin_client.info()
        host, port = url.removeprefix("tcpmq://").rsplit(":", 1)
        user = FuzzUser(admin_client, url)
        await user.create()
        started = time.monotonic()
        deadline = started + budget.seconds

        def spent() -> bool:
            return tally.frames >= budget.frames or time.monotonic() >= deadline

        async def worker(index: int) -> None:
            rng = random.Random(f"{seed}-{index}")
            maker = FrameMaker(rng, int(info.limits["max_frame_bytes"]))
            session = FuzzSession(
                host.strip("[]"),
                int(port),
                maker,
                maker.corpus(CORPUS_SIZE),
                user.token,
                tally,
                auth_frame_bytes=int(info.limits.get("max_auth_frame_bytes", 0)) or None,
            )
            while not spent():
                await session.episode(rng.randint(1, 40), spent)

        async def report() -> None:
            while True:
                await asyncio.sleep(progress_every)
                if on_progress is not None:
                    on_progress(tally, time.monotonic() - started)

        reporter = asyncio.ensure_future(report())
        try:
            tasks = [asyncio.ensure_future(worker(index)) for index in range(workers)]
            try:
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            reporter.cancel()
    finally:
        await admin_client.close()
