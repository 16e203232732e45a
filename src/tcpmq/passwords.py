"""Password hashing off the event loop, in a bounded pool of threads.

scrypt is slow on purpose (tens of milliseconds and 16 MiB each): run on the
loop it would stall every connection. `max_concurrent_logins` threads bound
the CPU and memory a login flood can take; further hashes wait their turn.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from .auth import hash_password, verify_password


class PasswordPool:
    def __init__(self, max_workers: int) -> None:
        self._executor = ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="tcpmq-hash"
        )

    def check(self, password: str, stored: str) -> asyncio.Future[bool]:
        """Whether `password` matches the `stored` hash (constant time)."""
        return asyncio.get_running_loop().run_in_executor(
            self._executor, verify_password, password, stored
        )

    def hash(self, password: str) -> asyncio.Future[str]:
        return asyncio.get_running_loop().run_in_executor(self._executor, hash_password, password)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
