"""The password pool's queue: bounded per address and in all, fair, and dropping what is cancelled.

These run the real pool (real scrypt in real threads). They are deterministic
because the pool hands out work only on the event loop: between two awaits,
no hash can finish, so what is queued is exactly what the test submitted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tcpmq.auth import DUMMY_HASH, hash_password
from tcpmq.errors import LimitExceeded
from tcpmq.passwords import PasswordPool

PASSWORD = "pool-test-password"
STORED = hash_password(PASSWORD)


@contextmanager
def pool(workers: int = 1, queued: int = 64, per_source: int = 8) -> Iterator[PasswordPool]:
    passwords = PasswordPool(workers, queued, per_source)
    try:
        yield passwords
    finally:
        passwords.close()


async def test_checks_answer_right_and_wrong() -> None:
    with pool(workers=2) as passwords:
        checks = [passwords.check(PASSWORD, STORED, "a"), passwords.check("wrong", STORED, "a")]
        assert await asyncio.gather(*checks) == [True, False]
        assert await passwords.hash(PASSWORD, "a") != STORED  # a fresh salt


async def test_past_the_address_bound_a_check_is_refused_at_once() -> None:
    with pool(per_source=2) as passwords:
        running = passwords.check("x", DUMMY_HASH, "a")
        queued = [passwords.check("x", DUMMY_HASH, "a") for _ in range(2)]
        with pytest.raises(LimitExceeded) as refused:
            passwords.check("x", DUMMY_HASH, "a")
        assert refused.value.to_wire() == {
            "code": "limit_exceeded",
            "message": "too many logins from this address are waiting; retry later",
            "limit": "max_queued_logins_per_address",
            "max": 2,
        }
        # Another address is not held up by this one's bound.
        other = passwords.check("x", DUMMY_HASH, "b")
        assert passwords.queued == 3
        assert await asyncio.gather(running, *queued, other) == [False] * 4
        assert passwords.refused == 1


async def test_a_full_queue_makes_room_for_a_lighter_address() -> None:
    with pool(queued=3, per_source=3) as passwords:
        passwords.check("x", DUMMY_HASH, "flood")  # running
        flood = [passwords.check("x", DUMMY_HASH, "flood") for _ in range(3)]
        # Full: the flood's newest gives its place to an address with none waiting.
        quiet = passwords.check("x", DUMMY_HASH, "quiet")
        assert flood[2].done()
        with pytest.raises(LimitExceeded) as pushed_out:
            flood[2].result()
        assert pushed_out.value.details["limit"] == "max_queued_logins"
        # "flood" has 2 waiting, "quiet" 1: trading places with "quiet" would
        # only churn, so a newcomer from either is refused...
        for source in ("quiet", "flood"):
            with pytest.raises(LimitExceeded):
                passwords.check("x", DUMMY_HASH, source)
        # ...but an address with none waiting evens the shares out.
        third = passwords.check("x", DUMMY_HASH, "third")
        assert isinstance(flood[1].exception(), LimitExceeded)
        # One each now: a fourth address is refused, nobody pushed out.
        with pytest.raises(LimitExceeded):
            passwords.check("x", DUMMY_HASH, "fourth")
        assert await asyncio.gather(flood[0], quiet, third) == [False] * 3
        assert passwords.refused == 5


async def test_addresses_take_turns() -> None:
    order: list[str] = []
    with pool() as passwords:
        passwords.check("x", DUMMY_HASH, "flood")  # running
        checks = [passwords.check("x", DUMMY_HASH, "flood") for _ in range(4)]
        checks.append(passwords.check("x", DUMMY_HASH, "quiet"))
        for name, check in zip(["f1", "f2", "f3", "f4", "quiet"], checks, strict=True):
            check.add_done_callback(lambda _, name=name: order.append(name))
        await asyncio.gather(*checks)
    # The quiet address waited for one of the flood's hashes, not for all four.
    assert order == ["f1", "quiet", "f2", "f3", "f4"]


async def test_cancelled_checks_leave_the_queue_unhashed() -> None:
    with pool() as passwords:
        running = passwords.check("x", DUMMY_HASH, "a")
        queued = [passwords.check("x", DUMMY_HASH, f"s{i}") for i in range(6)]
        for check in queued:
            check.cancel()
        last = passwords.check(PASSWORD, STORED, "b")
        assert await last is True
        assert await running is False
        assert passwords.cancelled == 6
        assert passwords.started == 2  # the one running, and the last
        assert passwords.queued == 0


async def test_a_check_cancelled_while_hashing_is_answered_to_no_one() -> None:
    with pool() as passwords:
        running = passwords.check("x", DUMMY_HASH, "a")
        running.cancel()
        # The thread finishes its hash; the pool goes on with the next.
        assert await passwords.check(PASSWORD, STORED, "a") is True
        assert passwords.cancelled == 0  # it was not queued any more


async def test_a_hung_up_check_waits_behind_live_ones_and_goes_first_when_full() -> None:
    order: list[str] = []
    with pool(queued=3) as passwords:
        passwords.check("x", DUMMY_HASH, "a")  # running
        gone = passwords.check("x", DUMMY_HASH, "a")
        passwords.hung_up(gone)
        live = [passwords.check("x", DUMMY_HASH, name) for name in ("b", "c")]
        # Full: a newcomer takes the hung-up check's place, whatever its address.
        newcomer = passwords.check("x", DUMMY_HASH, "a")
        assert gone.done()
        with pytest.raises(LimitExceeded):
            gone.result()
        for name, check in zip(["b", "c", "a"], [*live, newcomer], strict=True):
            check.add_done_callback(lambda _, name=name: order.append(name))
        await asyncio.gather(*live, newcomer)
    assert order == ["b", "c", "a"]


async def test_hung_up_checks_run_when_no_live_one_waits() -> None:
    with pool() as passwords:
        running = passwords.check("x", DUMMY_HASH, "a")
        gone = passwords.check(PASSWORD, STORED, "a")
        passwords.hung_up(gone)
        live = passwords.check("x", DUMMY_HASH, "b")
        # The client may still be there to read its reply: it gets one.
        assert await asyncio.gather(running, live, gone) == [False, False, True]


async def test_trusted_addresses_go_first_and_take_a_place_in_a_full_queue() -> None:
    order: list[str] = []
    with pool(queued=2) as passwords:
        passwords.check("x", DUMMY_HASH, "a")  # running
        flood = [passwords.check("x", DUMMY_HASH, source) for source in ("b", "c")]
        # Full, one each: an untrusted newcomer is refused...
        with pytest.raises(LimitExceeded):
            passwords.check("x", DUMMY_HASH, "d")
        # ...a trusted one takes the newest untrusted place, and goes first.
        known = passwords.check(PASSWORD, STORED, "e", first=True)
        assert isinstance(flood[1].exception(), LimitExceeded)
        for name, check in (("flood", flood[0]), ("known", known)):
            check.add_done_callback(lambda _, name=name: order.append(name))
        assert await asyncio.gather(known, flood[0]) == [True, False]
    assert order == ["known", "flood"]
