"""What a reload (SIGHUP, `systemctl reload tcpmq`) changes in a running broker.

The server reads its settings again (the config file, the environment and
the flags it started with) and compares them with those in force, setting by
setting (`configfile.flatten`, so a setting added later is compared too).
What changes live:

- the TLS certificate, key and client CAs: read again even when their paths
  did not change (a renewed certificate is written over the old one); new
  connections get the new ones, open ones keep theirs;
- the log level;
- the limits of `LIVE_LIMITS`: those read where they are checked, on each
  request or connection (the broker's, the ops', the registry's, each open
  connection's), from the `Limits` object that a reload replaces.

Every other change (the address, the store, the log format, TLS on or off,
and the limits that size structures made at start: frame size, connection
and login tables, the password pool) is logged as needing a restart; the
running value stays. A limit added to `Limits` later needs a restart until
it is listed here: being wrong in that direction costs a restart, not a
setting that silently does nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import ServerConfig
from .configfile import flatten

#: Limits that take effect at once on a reload (see the module's docstring).
LIVE_LIMITS = frozenset(
    {
        # The broker's checks.
        "max_channels",
        "max_queues_per_channel",
        "max_queues_per_user",
        "max_queue_messages",
        "max_queue_bytes",
        "max_inflight",
        "max_memory_bytes",
        "default_ack_timeout",
        # The ops' checks.
        "max_batch",
        "max_wait",
        "min_ack_timeout",
        "max_ack_timeout",
        "default_token_ttl",
        "max_token_ttl",
        # The registry's.
        "max_connections_per_address",
        "max_connections_per_user",
        "max_buffered_bytes",
        # Each connection's, read as it works.
        "max_containers",
        "idle_timeout",
        "write_stall_timeout",
        "close_linger",
        "auth_timeout",
        "max_auth_time",
        "max_pipeline",
        "max_pipeline_bytes",
        "frames_per_turn",
        "bytes_per_turn",
    }
)


@dataclass
class ReloadPlan:
    #: Limits to replace, with their new values.
    limits: dict[str, object] = field(default_factory=dict)
    #: Build the TLS context again (TLS is on before and after).
    tls: bool = False
    #: The new log level, if it changed.
    log_level: str | None = None
    #: Settings (`section.name`) that changed but take effect only at a restart.
    restart: list[str] = field(default_factory=list)


def plan(running: ServerConfig, new: ServerConfig) -> ReloadPlan:
    """What to change in a broker running with `running` to follow `new`."""
    result = ReloadPlan(tls=running.tls is not None and new.tls is not None)
    before, after = flatten(running), flatten(new)
    for key, value in after.items():
        if before[key] == value:
            continue
        section, name = key
        if section == "limits" and name in LIVE_LIMITS:
            result.limits[name] = value
        elif key == ("log", "level"):
            result.log_level = str(value)
        elif section == "tls" and result.tls:
            pass  # the context is built again anyway
        else:
            result.restart.append(f"{section}.{name}")
    return result
