"""Open a node's shared store: the backend and the user directory, on one Redis client."""

from __future__ import annotations

import asyncio

from ..auth import load_or_create_secret
from ..config import ServerConfig
from ..users import UserDirectory
from .backend import RedisBackend, connect
from .url import RedisStore
from .users import RedisUserDirectory


async def open_redis_store(
    store: RedisStore, config: ServerConfig, loop: asyncio.AbstractEventLoop
) -> tuple[RedisBackend, UserDirectory]:
    """Connect, check the token secret against the store's, start listening for wakes.

    The secret is the node's own file (`secret_file`, else the data dir's
    `secret`; mode 0600): every node of a cluster is given the same one, and
    Redis never holds it.

    Raises: Unavailable (Redis does not answer); ValueError (another secret).
    """
    config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret = load_or_create_secret(config.data_dir, config.secret_file)
    client = connect(store)
    backend = RedisBackend(client, store, config.limits, loop)
    try:
        await backend.start()
        users = await RedisUserDirectory.open(client, store.prefix, secret, config.limits.max_users)
    except BaseException:
        await backend.close()
        raise
    backend.on_close(users.close)
    return backend, users
