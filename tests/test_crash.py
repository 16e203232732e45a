"""Crash tests: a real `tcpmq serve` process is SIGKILLed under load, again and again.

Each round restarts the server on the same data dir, checks what survived,
then runs a publisher and a worker against it and kills the process at a
random moment (after a random number of acknowledged publishes, so the
moment is an event, not a sleep). Small segments and a low compaction
threshold make kills land during segment rolls and snapshots too.

What must hold after every restart, with `fsync=always`:
- every publish answered `ok` is in the audit queue (nobody consumes it)
  exactly once, in publish order; publishes whose reply never came may be
  there or not, but at most once;
- the worker queue holds exactly the published messages whose ack was not
  answered `ok`, in order: nothing acked comes back, nothing is lost.

CI runs 20 rounds; TCPMQ_SLOW=1 runs the long soak.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from pathlib import Path

import pytest

from processes import ServeProcess, serve
from tcpmq.client import Client, connect
from tcpmq.errors import TcpmqError

PASSWORD = "crash-test-password"
STORE_ARGS = ("--fsync", "always", "--segment-bytes", "16384", "--compact-min-bytes", "32768")
# Each round must end by itself: the kill comes after this many acknowledged
# publishes at most, and the round gives up waiting after ROUND_TIMEOUT.
ROUND_TIMEOUT = 30.0


class Ledger:
    """What the clients were told, across all rounds."""

    def __init__(self) -> None:
        self.next_value = 0
        self.published: list[int] = []  # answered ok, in order
        self.publish_unknown: set[int] = set()  # sent, reply never came
        self.acked: set[int] = set()  # ack answered ok
        self.ack_unknown: set[int] = set()
        # Set once `published` reaches `goal`: the moment to kill the server.
        self.goal = 0
        self.reached = asyncio.Event()


async def _login(server: ServeProcess) -> Client:
    return await connect(server.url, user="admin", password=PASSWORD, timeout=10)


async def _read_all(client: Client, queue: str) -> list[int]:
    """Everything the queue holds, without consuming it (pulled, then nacked)."""
    values: list[int] = []
    ids: list[int] = []
    while batch := await client.pull("c", queue=queue, max=1000):
        values.extend(m.data for m in batch)
        ids.extend(m.id for m in batch)
    for start in range(0, len(ids), 1000):
        await client.nack("c", ids[start : start + 1000], queue=queue)
    return values


def _verify(ledger: Ledger, audit: list[int], worker: list[int]) -> None:
    assert audit == sorted(set(audit)), "audit queue out of order or duplicated"
    present = set(audit)
    missing = [v for v in ledger.published if v not in present]
    assert not missing, f"acknowledged publishes lost: {missing[:10]}"
    extra = present - set(ledger.published) - ledger.publish_unknown
    assert not extra, f"messages nobody published: {sorted(extra)[:10]}"
    assert worker == sorted(set(worker)), "worker queue out of order or duplicated"
    came_back = set(worker) & ledger.acked
    assert not came_back, f"acknowledged messages delivered again: {sorted(came_back)[:10]}"
    # Unacked published messages are all still in the worker queue.
    expected = [v for v in audit if v not in ledger.acked and v not in ledger.ack_unknown]
    assert [v for v in worker if v not in ledger.ack_unknown] == expected
    # Settle the unknowns: what is on disk now is the truth.
    ledger.published = audit
    ledger.publish_unknown.clear()
    ledger.acked |= ledger.ack_unknown - set(worker)
    ledger.ack_unknown.clear()


async def _publisher(client: Client, ledger: Ledger, rng: random.Random) -> None:
    window = asyncio.Semaphore(8)

    async def one(values: list[int]) -> None:
        try:
            await client.publish_batch("c", values)
        except (TcpmqError, OSError, TimeoutError):
            ledger.publish_unknown.update(values)
            raise
        else:
            ledger.published.extend(values)  # replies come in request order
            if len(ledger.published) >= ledger.goal:
                ledger.reached.set()
        finally:
            window.release()

    tasks: set[asyncio.Task[None]] = set()
    try:
        while not client.closed:
            await window.acquire()
            count = rng.randint(1, 20)
            values = list(range(ledger.next_value, ledger.next_value + count))
            ledger.next_value += count
            task = asyncio.ensure_future(one(values))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        for task in list(tasks):
            with contextlib.suppress(BaseException):
                await task


async def _worker(client: Client, ledger: Ledger) -> None:
    while not client.closed:
        batch = await client.pull("c", queue="worker", max=50, wait=0.05)
        values = {m.id: m.data for m in batch}
        if not values:
            continue
        try:
            await client.ack("c", list(values), queue="worker")
        except (TcpmqError, OSError, TimeoutError):
            ledger.ack_unknown.update(values.values())
            raise
        ledger.acked.update(values.values())


async def _round(data: Path, ledger: Ledger, rng: random.Random, first: bool) -> None:
    async with serve(data, *STORE_ARGS, TCPMQ_ADMIN_PASSWORD=PASSWORD) as server:
        checker = await _login(server)
        try:
            if first:
                await checker.channel_create("c")
                await checker.subscribe("c", queue="audit", ack_timeout=600)
                await checker.subscribe("c", queue="worker", ack_timeout=600)
            else:
                audit = await _read_all(checker, "audit")
                worker = await _read_all(checker, "worker")
                _verify(ledger, audit, worker)
        finally:
            await checker.close()
        publisher_client = await _login(server)
        worker_client = await _login(server)
        ledger.goal = len(ledger.published) + rng.randint(20, 400)
        ledger.reached.clear()
        load = [
            asyncio.ensure_future(_publisher(publisher_client, ledger, rng)),
            asyncio.ensure_future(_worker(worker_client, ledger)),
        ]
        try:
            reached = asyncio.ensure_future(ledger.reached.wait())
            done, _ = await asyncio.wait(
                [reached, *load], timeout=ROUND_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
            reached.cancel()
            assert done, "the load made no progress"
            for task in done - {reached}:
                task.result()  # a load task may only end by the kill
            server.process.kill()
            await server.process.wait()
            await asyncio.wait(load, timeout=ROUND_TIMEOUT)
        finally:
            for task in load:
                task.cancel()
            await publisher_client.close()
            await worker_client.close()


async def _crash_rounds(tmp_path: Path, rounds: int) -> None:
    seed = int(os.environ.get("TCPMQ_CRASH_SEED", random.randrange(1 << 32)))
    rng = random.Random(seed)
    ledger = Ledger()
    data = tmp_path / "data"
    for number in range(rounds):
        try:
            await _round(data, ledger, rng, first=number == 0)
        except AssertionError as exc:
            raise AssertionError(f"round {number} (TCPMQ_CRASH_SEED={seed}): {exc}") from exc
    # A last clean start checks the final kill too.
    async with serve(data, *STORE_ARGS, TCPMQ_ADMIN_PASSWORD=PASSWORD) as server:
        client = await _login(server)
        try:
            _verify(ledger, await _read_all(client, "audit"), await _read_all(client, "worker"))
        finally:
            await client.close()
    assert len(ledger.published) > rounds * 20


async def test_sigkill_under_load_loses_nothing_acknowledged(tmp_path: Path) -> None:
    await _crash_rounds(tmp_path, rounds=20)


@pytest.mark.slow
@pytest.mark.timeout(900)  # 200 rounds take about 100 s; the suite's 60 s is for one test
async def test_sigkill_soak(tmp_path: Path) -> None:
    await _crash_rounds(tmp_path, rounds=200)
