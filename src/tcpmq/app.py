"""What request handlers are given: the application and the caller.

`App` holds what every connection shares (the way uvicorn hands its
protocols a small server state, not the server): the backend, the user
directory, the token signer, the password pool, the connection registry and
the limits, the failed-login limiter, the access of channels created
without one, the observer (`stats`) and the backups. `Caller` is who sent
a request: set by `auth`/`login`, read by
every handler. Handlers take both and nothing else, so they know no sockets,
no connection object and no server.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .auth import TokenSigner
from .backend import Backend
from .backup import Backups
from .caller import Caller
from .config import Limits
from .cpugate import LargeRequestGate
from .loginlimits import LoginLimiter
from .passwords import PasswordPool
from .registry import Connections
from .stats import Observer
from .users import UserDirectory

__all__ = ["App", "Caller"]


@dataclass(slots=True, eq=False)
class App:
    # Not frozen: a reload (SIGHUP) replaces `limits` (see reload.py).
    backend: Backend
    users: UserDirectory
    signer: TokenSigner
    passwords: PasswordPool
    connections: Connections
    limits: Limits
    limiter: LoginLimiter
    #: "private" or "public": what `channel.create` without `access` makes.
    default_channel_access: str = "private"
    #: What `stats` and `/metrics` read (None until the server has started it).
    observer: Observer | None = None
    backups: Backups = field(default_factory=Backups)
    #: One large request per pass of the loop, across connections (cpugate.py).
    large_requests: LargeRequestGate = field(default_factory=LargeRequestGate)
