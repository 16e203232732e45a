"""The `memory` backend: the broker core with no disk at all.

Like NATS memory storage or Redis without persistence: fast, and everything
(channels, queues, messages, and with the memory user directory the users
too) is lost when the process ends.
"""

from __future__ import annotations

import asyncio

from ..broker import Broker, MemoryJournal
from ..config import Limits
from .core import CoreBackend, ImmediateCommits


def open_memory_backend(limits: Limits, loop: asyncio.AbstractEventLoop) -> CoreBackend:
    return CoreBackend("memory", Broker(limits, MemoryJournal()), ImmediateCommits(), loop)
