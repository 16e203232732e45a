"""The open-files limit, and how many connections fit within it.

Every connection is a file descriptor, and so is every file the store opens
(a log segment, the directory it syncs, a snapshot being written, the data
dir's lock). A server whose connections take every descriptor fails its next
log-segment roll with EMFILE, and a store that cannot write stops the
broker. So at start the server raises its soft RLIMIT_NOFILE to the hard
limit (what any process may do; the common default soft limit, 1,024, is
below the default `max_connections`) and caps its connections below it:

    descriptors = connections + accepted but not yet refused + the rest

Accepted-but-not-refused: the listener takes every pending connection of its
backlog in one go before any of them is refused, so a burst holds up to the
backlog's length of descriptors for a moment. The rest is `FD_RESERVE`: the
store, the listener, the event loop, standard streams, with room to spare.
The backlog shrinks with a small limit so that it does not eat the
connections' share. Should the kernel still refuse a descriptor at accept
(ENFILE: the whole system is out), the event loop closes that one pending
connection and goes on listening (libuv's and asyncio's accept loops both
do); the store's reserve is untouched.
"""

from __future__ import annotations

import logging
import resource
from typing import NamedTuple

log = logging.getLogger(__name__)

#: Descriptors kept for everything but connections and the accept burst.
FD_RESERVE = 64
#: The listen backlog when descriptors are plenty (the kernel caps it at
#: net.core.somaxconn, 4096 by default). Deep, so that a burst of connections
#: waits in the kernel instead of having its SYNs dropped, which costs a
#: client a second or more (the SYN is retried after 1 s, then 3 s).
MAX_BACKLOG = 4096


class FdBudget(NamedTuple):
    nofile: int  # the soft open-files limit in force
    max_connections: int  # the connections that fit
    backlog: int  # the listen backlog to ask for


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft and (hard == resource.RLIM_INFINITY or hard > soft):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            # (macOS refuses RLIM_INFINITY; the limit in force stays.)
            log.warning("could not raise the open-files limit from %d: %s", soft, exc)
        else:
            soft = hard
    return soft if soft != resource.RLIM_INFINITY else 1 << 30


def budget(nofile: int, configured: int) -> FdBudget:
    """The connections (at most `configured`) and backlog that fit in `nofile` descriptors."""
    backlog = max(16, min(MAX_BACKLOG, nofile // 8))
    fit = nofile - FD_RESERVE - backlog
    return FdBudget(nofile, max(1, min(configured, fit)), backlog)
