"""Server settings and the limits that protect the broker.

Every limit is checked before work is done (on the unterminated read buffer,
before a payload is decoded, before anything is enqueued) and every one is
listed in protocol.md with its default. The defaults are sized for one broker
on a small VM: large enough that no ordinary client meets them, small enough
that one hostile client cannot exhaust memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from .redisstore.url import is_redis_url, parse_redis_url

DEFAULT_PORT = 7878


def default_data_dir() -> Path:
    """`$TCPMQ_DATA_DIR`, else the XDG data home of the user running the broker."""
    env = os.environ.get("TCPMQ_DATA_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "tcpmq"


@dataclass(frozen=True, slots=True)
class Limits:
    # A frame is one request line. 1 MiB bounds the per-connection read buffer
    # and the largest message; pull replies are capped at the same size.
    max_frame_bytes: int = 1024 * 1024
    # Objects and arrays in one request, all levels counted. Parsing costs
    # about 0.2 us per container (a Python object each, and the collector's
    # passes over them): at this many a request costs the server ~7 ms, so a
    # few connections sending the worst requests delay others by tens of ms,
    # not the 100 ms a 1 MiB line of `[]` took. A batch of max_batch
    # messages may still hold 32 objects each.
    max_containers: int = 32768
    # Messages in one batch publish, and the largest `max` of one pull.
    max_batch: int = 1000
    # Longest long-poll `wait` in seconds; longer waits only tie up a connection.
    max_wait: float = 300.0
    default_ack_timeout: float = 30.0
    min_ack_timeout: float = 0.1
    max_ack_timeout: float = 43200.0
    # Messages per queue, ready or in flight, and the most a queue may be
    # given as its own max_messages / max_bytes. What a publish that would
    # overflow a queue does is the queue's overflow policy (protocol.md).
    max_queue_messages: int = 1_000_000
    max_queue_bytes: int = 256 * 1024 * 1024
    # Delivered-but-unacked messages per queue; a pull returns fewer beyond it.
    max_inflight: int = 100_000
    max_users: int = 10_000
    max_channels: int = 10_000
    # Channels one user owns: without it one user could take all of
    # max_channels and leave none to the others. An application needs a few;
    # 100 is generous, and 100 users may each reach it before max_channels.
    # Admins are exempt, as from every per-user quota.
    max_channels_per_user: int = 100
    max_queues_per_channel: int = 1_000
    # Queues one user owns, across channels: each queue multiplies what every
    # publish to its channel costs. A consumer needs a few; 100 is generous.
    max_queues_per_user: int = 100
    # Encoded bytes held, ready or in flight, by all the queues one user owns:
    # unconsumed queues of one user must not take the whole memory budget.
    # One full queue's worth (max_queue_bytes), a quarter of max_memory_bytes.
    # A queue whose owner is at it counts as full (its overflow policy applies).
    max_queued_bytes_per_user: int = 256 * 1024 * 1024
    # The broker's estimate of the memory its messages take, ready and in
    # flight: each body once however many queues hold it, plus the most a
    # queue's hold on a message can cost (see broker.py). A publish beyond it
    # is refused with limit_exceeded. The process's RSS stays below this
    # plus its ~75 MiB without messages (measured: bench/fanout_memory.py),
    # so 1 GiB suits a VM with 2 GiB of RAM. A fixed default, not a share of
    # the RAM: the same on every machine, as every other limit.
    max_memory_bytes: int = 1024 * 1024 * 1024
    # Connections in all; the server lowers it to fit its open-files limit
    # (see fdlimit.py). At it, the oldest unauthenticated connection makes
    # room for a new one; only when all are authenticated is the new one refused.
    max_connections: int = 10_000
    # Connections one user has authenticated (admins are exempt: an operator
    # must get in while a user's clients fill theirs).
    max_connections_per_user: int = 1_000
    # --- connection limits: one source address, unauthenticated lines, idle
    # and stalled connections, closing (protocol.md, Limits; README, Reliability:
    # connections)
    # Connections from one source address (beyond it a new one gets bye
    # limit_exceeded): a tenth of max_connections, so one host cannot fill the
    # server, and above any one client host's ordinary pool. Raise it for
    # clients behind one NAT or proxy address.
    max_connections_per_address: int = 1_000
    # Longest line before authentication, and the most an unauthenticated
    # connection may have read but not handled: room for the longest valid
    # auth (a 4096-character token) or login (a 1024-character password, even
    # fully escaped), so a peer that has not authenticated costs kilobytes,
    # not max_frame_bytes.
    max_auth_frame_bytes: int = 8192
    # Seconds an authenticated connection may send nothing (a pull waiting
    # for messages is not idle) before bye limit_exceeded; 0, the default,
    # never closes a live client (as Redis's `timeout 0` and NATS: an idle
    # publisher is a normal client). `ping` keeps a connection active.
    idle_timeout: float = 0.0
    # TCP keepalive on every admitted connection: after this many idle
    # seconds the kernel probes the peer (3 probes, a third of it apart) and
    # ends a connection whose machine is gone, which idle_timeout 0 would
    # keep forever. Redis's `tcp-keepalive 300`. 0 turns it off.
    tcp_keepalive: float = 300.0
    # Seconds a connection's unsent replies may stay above write_buffer_high
    # without the client reading any of them before it is closed.
    write_stall_timeout: float = 30.0
    # Seconds a closing connection is given to read its last replies and end
    # its side, its input discarded meanwhile (lingering close, as HTTP
    # servers do: closing on unread input would reset the connection and
    # lose the replies); then it is dropped.
    close_linger: float = 5.0
    # A connection that has not authenticated is closed after this many
    # seconds without a line from it (a person typing keeps it open), and
    # after max_auth_time seconds in all.
    auth_timeout: float = 30.0
    max_auth_time: float = 120.0
    # Requests read but not yet handled (behind a long-poll or a login, or
    # while replies back up) per connection, by count and by size; above
    # either the server stops reading that connection.
    max_pipeline: int = 1000
    max_pipeline_bytes: int = 4 * 1024 * 1024
    # Unsent reply bytes per connection above which the server stops reading
    # that connection's requests until the client catches up.
    write_buffer_high: int = 4 * 1024 * 1024
    # Unsent replies of all connections together, each connection whose
    # replies back up counted as write_buffer_high (it holds at least that):
    # beyond it the connection that stopped reading first is closed, so
    # clients that never read cannot add up to more than this (128 of them
    # at the default write_buffer_high). Messages are bounded apart, by
    # max_memory_bytes: a stuck reader must not stop everyone's publishes.
    max_buffered_bytes: int = 512 * 1024 * 1024
    # Requests of one connection handled before the loop turns to the others
    # (and to finished disk syncs); the rest wait for the connection's next
    # turn. Four times as many while none of its replies wait for the disk.
    frames_per_turn: int = 128
    # Bytes of requests one connection has handled in a turn after which it
    # yields too, even before frames_per_turn: a request costs the server
    # CPU roughly by its size (parsing, at 3 to 90 ns a byte by its shape),
    # so large requests take turns by size. Ordinary pipelines of small
    # requests never reach it; a turn always handles at least one request.
    bytes_per_turn: int = 64 * 1024
    # Concurrent password hashes (scrypt uses 16 MiB each and a CPU core).
    # Two keeps a core free for the event loop on a small VM.
    max_concurrent_logins: int = 2
    # Password hashes waiting for a thread, in all and per source address
    # (an IPv6 address counts by its /64). Past either a login is refused at
    # once with limit_exceeded: a flood waits in no queue, and what a closed
    # connection left queued is dropped (see passwords.py).
    max_queued_logins: int = 64
    max_queued_logins_per_address: int = 8
    # Failed auth/login attempts, per source address and per user name: a
    # token bucket refilled at this many per second, holding at most
    # login_failure_burst. An empty bucket refuses at once with
    # limit_exceeded and retry_after, before any hash (see loginlimits.py).
    login_failures_per_address: float = 5.0
    login_failures_per_user: float = 5.0
    login_failure_burst: int = 20
    # Addresses and user names whose buckets are remembered (each table); the
    # least recently used is forgotten first.
    login_limit_entries: int = 10_000
    # An address from which a user authenticated within this many seconds
    # has its password hashes done before other addresses' (see passwords.py):
    # a flood from many addresses cannot keep out the clients already known.
    login_trust_seconds: float = 86400.0
    default_token_ttl: int = 86400
    max_token_ttl: int = 30 * 86400

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if value < 0 or (value == 0 and spec.name not in MAY_BE_OFF):
                raise ValueError(f"{spec.name} must be positive, not {value}")


#: The limits that 0 turns off.
MAY_BE_OFF = frozenset({"idle_timeout", "tcp_keepalive"})


@dataclass(frozen=True, slots=True)
class StorageConfig:
    # When a publish or ack reaches the disk before its reply: "always" (on
    # disk first, one fsync shared by all concurrent writers), "interval"
    # (fsync every fsync_interval seconds; replies do not wait) or "never"
    # (the OS decides).
    fsync: str = "always"
    fsync_interval: float = 0.05
    # Log segments are sealed at this size.
    segment_bytes: int = 64 * 1024 * 1024
    # Compaction starts once the log since the last snapshot is at least this
    # large and at least as large as that snapshot.
    compact_min_bytes: int = 64 * 1024 * 1024
    # Free space kept on the store's filesystem: below it publishes and new
    # channels, queues and users are refused with storage_full, while acks,
    # pulls and deletions still write into it. 64 MiB covers a second of
    # writes at disk speed between probes, and many acks.
    min_free_bytes: int = 64 * 1024 * 1024
    # Seconds between probes of the free space (also after every quarter of
    # min_free_bytes written), and between retries of a stalled log.
    disk_check_interval: float = 0.5

    def __post_init__(self) -> None:
        if self.fsync not in ("always", "interval", "never"):
            raise ValueError("fsync must be always, interval or never")
        if self.fsync_interval <= 0:
            raise ValueError("fsync_interval must be positive")
        if self.segment_bytes < 4096 or self.compact_min_bytes < 4096:
            raise ValueError("segment_bytes and compact_min_bytes must be at least 4096")
        if self.min_free_bytes < 0:
            raise ValueError("min_free_bytes must not be negative")
        if self.disk_check_interval <= 0:
            raise ValueError("disk_check_interval must be positive")


class ConfigError(ValueError):
    """A setting the server refuses to start with (`tcpmq serve` exits 2 on it)."""


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS on the main listener (see tls.py): the server's certificate chain
    and key (PEM files), and with `client_ca` the CAs whose certificates
    clients must present (mutual TLS)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


#: The levels and formats of the log (`[log]`, `--log-level`, `--log-format`).
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "text", "json", "journal")


@dataclass(frozen=True, slots=True)
class LogConfig:
    # The least severe level logged; a reload (SIGHUP) applies a new one at once.
    level: str = "info"
    # "text": lines with a time; "json": one object per line; "journal": a
    # "<N>" syslog-level prefix per line, which journald reads as the priority
    # (it adds the time itself); "auto": journal when stderr is the journal
    # (systemd's $JOURNAL_STREAM names it), else text.
    format: str = "auto"

    def __post_init__(self) -> None:
        if self.level not in LOG_LEVELS:
            raise ValueError(f"level must be one of {', '.join(LOG_LEVELS)}, not {self.level!r}")
        if self.format not in LOG_FORMATS:
            raise ValueError(f"format must be one of {', '.join(LOG_FORMATS)}, not {self.format!r}")


#: The backends `--store` can name: "log" keeps the state in the data dir's
#: journal (durable), "memory" keeps it only in the process (lost on restart).
#: A redis:// or redis+cluster:// URL names a shared store (redisstore/).
STORES = ("log", "memory")
#: What `channel.create` without `access` makes (see protocol.md, Permissions).
CHANNEL_ACCESS = ("private", "public")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    data_dir: Path = field(default_factory=default_data_dir)
    store: str = "log"
    limits: Limits = field(default_factory=Limits)
    storage: StorageConfig = field(default_factory=StorageConfig)
    # Seconds a graceful shutdown waits for connections before closing them.
    shutdown_grace: float = 5.0
    # TLS on the main listener; None serves it in clear text.
    tls: TlsConfig | None = None
    # A second, clear-text listener (host, port) beside a TLS one, for nc.
    plain_listen: tuple[str, int] | None = None
    # Clear text is refused on any address but loopback unless this is set:
    # passwords and tokens would cross the network readable (see exposure.py).
    allow_plaintext: bool = False
    # The access of a channel created without `access`: private (its owner,
    # admins and the users granted rights) unless the operator opens them all.
    default_channel_access: str = "private"
    # The metrics listener (host, port): /metrics, /healthz, /readyz over
    # HTTP; None (the default) serves none. Beyond loopback it needs a token
    # file (see metricshttp.py).
    metrics_listen: tuple[str, int] | None = None
    metrics_token_file: Path | None = None
    log: LogConfig = field(default_factory=LogConfig)
    # A file holding the first admin's password (one line), read at start
    # instead of $TCPMQ_ADMIN_PASSWORD: a systemd credential
    # ($CREDENTIALS_DIRECTORY/admin-password) keeps it out of the environment.
    admin_password_file: Path | None = None
    # The token-signing secret's file (hex, mode 0600; made if missing), instead
    # of the data dir's `secret`: every node of a shared store is given the same.
    secret_file: Path | None = None

    def __post_init__(self) -> None:
        if self.store not in STORES:
            if not is_redis_url(self.store):
                raise ValueError(
                    f"store must be one of {', '.join(STORES)} or a redis:// URL, "
                    f"not {self.store!r}"
                )
            parse_redis_url(self.store)  # ValueError, saying what is wrong
        if self.secret_file is not None and self.store in STORES:
            raise ConfigError(
                "secret_file is for nodes of a redis store; the log and memory stores keep "
                "their own secret"
            )
        if self.default_channel_access not in CHANNEL_ACCESS:
            raise ConfigError(
                f"default_channel_access must be private or public, "
                f"not {self.default_channel_access!r}"
            )
        if self.plain_listen is not None and self.tls is None:
            raise ConfigError(
                "a plain listener is only needed beside a TLS one: the main listener "
                "is plain already without TLS"
            )
