"""Where a redis store is: `--store redis://HOST:PORT/DB` or `redis+cluster://HOST:PORT,...`.

Parsed without importing redis-py, so a server with a local store never needs it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote

#: Every key of the store starts with this unless `?prefix=` says otherwise,
#: so one Redis can hold several brokers' stores (and other data).
DEFAULT_PREFIX = "tcpmq:"
_SCHEMES = ("redis", "rediss", "redis+cluster", "rediss+cluster")
_PREFIX = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


@dataclass(frozen=True, slots=True)
class RedisStore:
    """A parsed store URL. `password` is never shown (see `__str__`)."""

    nodes: tuple[tuple[str, int], ...]
    cluster: bool = False
    tls: bool = False
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    prefix: str = DEFAULT_PREFIX
    # `?wait=N`: a write is confirmed only once N replicas have it (Redis WAIT),
    # within `?wait_timeout=MS`; otherwise the request answers `unavailable`.
    wait_replicas: int = 0
    wait_timeout_ms: int = 1000

    def __str__(self) -> str:
        scheme = ("rediss" if self.tls else "redis") + ("+cluster" if self.cluster else "")
        hosts = ",".join(f"{host}:{port}" for host, port in self.nodes)
        db = "" if self.cluster else f"/{self.db}"
        wait = f"&wait={self.wait_replicas}" if self.wait_replicas else ""
        return f"{scheme}://{hosts}{db}?prefix={self.prefix}{wait}"


def is_redis_url(text: str) -> bool:
    return text.split("://", 1)[0] in _SCHEMES and "://" in text


def parse_redis_url(text: str) -> RedisStore:
    """Raises: ValueError, saying what is wrong with `text`."""
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in _SCHEMES:
        raise ValueError(
            f"a redis store is redis://HOST:PORT/DB or redis+cluster://..., not {text!r}"
        )
    rest, _, query = rest.partition("?")
    params = parse_qs(query, keep_blank_values=True, strict_parsing=False)
    unknown = set(params) - {"prefix", "wait", "wait_timeout"}
    if unknown:
        raise ValueError(f"unknown store URL parameter(s): {', '.join(sorted(unknown))}")
    prefix = params.get("prefix", [DEFAULT_PREFIX])[-1]
    if not _PREFIX.fullmatch(prefix):
        raise ValueError("prefix must be 1-64 characters of letters, digits and _ . : -")
    wait, wait_timeout = (
        _number(params, "wait", 0, 0, 16),
        _number(params, "wait_timeout", 1000, 1, 60_000),
    )
    if wait and scheme.endswith("+cluster"):
        raise ValueError("wait= is for one master and its replicas, not a Redis Cluster")
    username = password = None
    if "@" in rest:
        userinfo, rest = rest.rsplit("@", 1)
        user, _, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) or None
    hosts, _, path = rest.partition("/")
    cluster = scheme.endswith("+cluster")
    db = 0
    if path:
        if cluster:
            raise ValueError("a Redis Cluster has only database 0: drop the /DB")
        if not path.isdigit():
            raise ValueError(f"the database is a number, not {path!r}")
        db = int(path)
    nodes = []
    for host_port in hosts.split(","):
        host, colon, port = host_port.rpartition(":")
        if not colon:
            host, port = host_port, "6379"
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"not a HOST:PORT: {host_port!r}")
        nodes.append((host, int(port)))
    if len(nodes) > 1 and not cluster:
        raise ValueError("several hosts make a cluster: use redis+cluster://")
    return RedisStore(
        nodes=tuple(nodes),
        cluster=cluster,
        tls=scheme.startswith("rediss"),
        db=db,
        username=username,
        password=password,
        prefix=prefix,
        wait_replicas=wait,
        wait_timeout_ms=wait_timeout,
    )


def _number(params: dict[str, list[str]], name: str, default: int, low: int, high: int) -> int:
    if name not in params:
        return default
    text = params[name][-1]
    if not text.isdigit() or not low <= int(text) <= high:
        raise ValueError(f"{name} must be a whole number from {low} to {high}, not {text!r}")
    return int(text)
