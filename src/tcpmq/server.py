"""The broker server: opening the backend, the listening socket, signals and shutdown.

The server builds the `App` that every connection shares (backend, user
directory, signer, password pool, connection registry, limits, login
limiter; see app.py), the one deadline timer, and the listener that makes a
`Connection` per client. It creates the first admin on a new store. With the log store it
holds the data dir's lock (datadir.py) from start to stop, so a second broker
on the same directory is refused instead of losing the first one's data.

Backends (`ServerConfig.store`): `log` recovers the broker's state from the
data dir's journal and journals every change; `memory` keeps everything,
users and the token secret included, in the process only.

Listeners: the main one (`host`, `port`) speaks TLS when `ServerConfig.tls`
is set (through a `TlsLayer` per client, see tlslayer.py), clear text
otherwise; `plain_listen` adds a clear-text one beside TLS, for nc. Both
serve the same App. `metrics_listen` adds the HTTP metrics listener
(metricshttp.py), which reads the App's observer (stats.py). Clear text on
a non-loopback address is refused before anything is bound unless
`allow_plaintext` is set (exposure.py), and so is a metrics listener beyond
loopback without a token.

Connections and descriptors: at start the soft open-files limit is raised
to the hard one and `max_connections` lowered to what fits beside the
store's descriptors (fdlimit.py); the `App` gets the limits in force.

Under systemd (`Type=notify`, see sdnotify.py and systemd/tcpmq.service) it
says READY=1 once it listens, STOPPING=1 when it stops, and keeps STATUS=
and the watchdog fed. SIGHUP reloads what can change live (reload.py): the
TLS files, the log level, most limits.

Shutdown order: stop accepting, close every connection (a waiting pull gets
its empty reply, then `bye`), make the backend durable (which releases
replies waiting for the disk), give the connections `shutdown_grace` seconds
to go, then abort what is left.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
import signal
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path

from . import logsetup
from .app import App
from .auth import TokenSigner, hash_password, verify_password
from .backend import (
    Backend,
    CoreBackend,
    LogBackend,
    open_log_backend,
    open_memory_backend,
)
from .config import ConfigError, Limits, ServerConfig
from .connection import Connection
from .datadir import DataDirLock, check_permissions
from .deadlines import DeadlineTimer
from .errors import ShuttingDown
from .exposure import refuse_exposed_plaintext
from .fdlimit import budget, raise_nofile_limit
from .loginlimits import LoginLimiter
from .metrics import exposition, registry_for
from .metricshttp import MetricsListener, load_metrics_token
from .passwords import PasswordPool
from .redisstore.url import is_redis_url, parse_redis_url
from .registry import Connections
from .reload import plan
from .sdnotify import Notifier
from .stats import Observer
from .storage import DiskStore
from .tls import server_context
from .tlslayer import Handshakes, TlsLayer
from .users import FileUserDirectory, MemoryUserDirectory, UserDirectory

log = logging.getLogger(__name__)

ADMIN_USER = "admin"
ADMIN_PASSWORD_ENV = "TCPMQ_ADMIN_PASSWORD"


def open_user_directory(config: ServerConfig) -> UserDirectory:
    """The user directory the configured store keeps (files in the data dir, or memory)."""
    if config.store == "memory":
        return MemoryUserDirectory(config.limits.max_users)
    return FileUserDirectory(config.data_dir, config.limits.max_users)


class Server:
    def __init__(
        self,
        config: ServerConfig,
        *,
        admin_password: str | None = None,
        admin_password_hash: str | None = None,
        reload_config: Callable[[], ServerConfig] | None = None,
    ) -> None:
        """`admin_password` (else the one in `config.admin_password_file`, else
        $TCPMQ_ADMIN_PASSWORD, else a generated one printed once) or its hash
        (`auth.hash_password`, for provisioning without the password in clear)
        is the first admin's on a new store.

        `reload_config` gives the settings a reload (SIGHUP) moves to: by
        default the same ones, whose TLS files are read again."""
        self.config = config
        self._reload_config = reload_config or (lambda: self.config)
        self._notifier = Notifier()
        self._admin_password = admin_password
        self._admin_password_hash = admin_password_hash
        self.connections = Connections(config.limits)
        limits = config.limits
        #: The password hashing pool (its counters: `cancelled`, `refused`, `queued`).
        self.passwords = PasswordPool(
            limits.max_concurrent_logins,
            limits.max_queued_logins,
            limits.max_queued_logins_per_address,
        )
        self._servers: list[asyncio.Server] = []
        self._tls: ssl.SSLContext | None = None
        self._handshakes = Handshakes(config.limits.max_connections)
        self._deadlines: DeadlineTimer | None = None
        self.host = config.host
        self.port = config.port
        #: Where the clear-text listener beside TLS listens (`plain_listen`), once started.
        self.plain_address: tuple[str, int] | None = None
        self.app: App
        self._stopping: asyncio.Event | None = None
        self._metrics_token: bytes | None = None
        self._metrics: MetricsListener | None = None
        self._lock = DataDirLock(config.data_dir)

    @property
    def backend(self) -> Backend:
        return self.app.backend

    @property
    def store(self) -> DiskStore:
        """The log backend's disk store (for tests and benchmarks)."""
        backend = self.app.backend
        assert isinstance(backend, LogBackend), "only the log backend has a store"
        return backend.store

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """Lock the data dir, open the store and the user directory, create the first admin
        if needed, listen.

        Raises:
            ConfigError: clear text on a non-loopback address without
                `allow_plaintext`, or unusable TLS files (before anything is bound).
            DataDirInUse: another process holds the data dir (log store only).
            UnsafePermissions: other users could write (or read) the data
                dir's secrets or store (log store only).
        """
        refuse_exposed_plaintext(self.config)
        self._metrics_token = load_metrics_token(self.config)
        if self._admin_password is None:
            self._admin_password = read_admin_password(self.config.admin_password_file)
        if self.config.tls is not None:
            self._tls = server_context(self.config.tls)
        if self.config.store != "memory":
            # Before anything in the data dir is read or created: a second broker changes nothing.
            self._lock.acquire()
        try:
            if self.config.store != "memory":
                check_permissions(self.config.data_dir)
            await self._open_and_listen()
        except BaseException:
            self._lock.release()
            raise

    async def _open_and_listen(self) -> None:
        loop = asyncio.get_running_loop()
        config = self.config
        # Connections must leave the store its descriptors (see fdlimit.py).
        fds = budget(raise_nofile_limit(), config.limits.max_connections)
        limits = dataclasses.replace(config.limits, max_connections=fds.max_connections)
        log.info(
            "open files limit %d: at most %d connections (max_connections %d), backlog %d",
            fds.nofile,
            fds.max_connections,
            config.limits.max_connections,
            fds.backlog,
        )
        self.connections = Connections(limits)
        store = parse_redis_url(config.store) if is_redis_url(config.store) else None
        if store is not None:
            # Imported here: redis-py is needed only by the redis store (tcpmq[redis]).
            try:
                from .redisstore.node import open_redis_store
            except ImportError as exc:
                raise ConfigError(
                    f"the redis store needs the redis client ({exc}): pip install 'tcpmq[redis]'"
                ) from None

            backend_store, users = await open_redis_store(store, config, loop)
        else:
            users = open_user_directory(config)
        if users.empty:
            await self._create_first_admin(users)
        elif password := self._admin_password or os.environ.get(ADMIN_PASSWORD_ENV):
            # The setting only sets the first admin's password; say so rather than ignore it.
            source = ADMIN_PASSWORD_ENV
            if self.config.admin_password_file is not None:
                source = f"admin_password_file {self.config.admin_password_file}"
            admin = users.find(ADMIN_USER)
            if admin is None:
                log.warning(
                    "%s is ignored: user %r no longer exists; it only creates "
                    "the first admin of a new data dir",
                    source,
                    ADMIN_USER,
                )
            elif not verify_password(password, admin.password_hash):
                log.warning(
                    "%s differs from the stored password of user %r, which stays in force; "
                    "it only sets the first admin's password of a new data dir",
                    source,
                    ADMIN_USER,
                )
        started = time.perf_counter()
        backend: Backend
        if store is not None:
            backend = backend_store
            log.info("store: %s (shared; this node keeps no state)", store)
        elif config.store == "memory":
            backend = open_memory_backend(config.limits, loop)
            log.info("store: memory (nothing is kept across restarts)")
        else:
            log_backend = open_log_backend(config.data_dir, config.limits, config.storage, loop)
            log.info(
                "store recovered: %d channels, %d queued messages in %.2f s (fsync=%s)",
                len(log_backend.broker.channels),
                log_backend.store.recovered.messages,
                time.perf_counter() - started,
                config.storage.fsync,
            )
            backend = log_backend
        try:
            await self._serve_backend(backend, users, limits, fds.backlog)
        except BaseException:
            # Not started (the port is taken, say): the store's files and thread go too.
            await backend.close()
            raise

    async def _serve_backend(
        self, backend: Backend, users: UserDirectory, limits: Limits, backlog: int
    ) -> None:
        loop = asyncio.get_running_loop()
        config = self.config
        # The broker knows users only by name: it is told which are exempt from the quotas.
        for user in users.list():
            if user.role == "admin":
                backend.exempt_from_quotas(user.name)
        observer = Observer(
            backend.broker if isinstance(backend, CoreBackend) else None,
            self.connections,
            backend.store if isinstance(backend, LogBackend) else None,
            backend.name,
            loop,
            None if isinstance(backend, CoreBackend) else backend,  # type: ignore[arg-type]
        )
        self.app = App(
            backend=backend,
            users=users,
            signer=TokenSigner(users.secret),
            passwords=self.passwords,
            connections=self.connections,
            limits=limits,
            limiter=LoginLimiter(limits),
            default_channel_access=config.default_channel_access,
            observer=observer,
        )
        self._deadlines = DeadlineTimer(backend, loop)
        self._stopping = asyncio.Event()
        self._handshakes = Handshakes(limits.max_connections)
        await self._listen(loop, backlog)

    async def _listen(self, loop: asyncio.AbstractEventLoop, backlog: int) -> None:
        config = self.config
        main = await loop.create_server(
            self._main_protocol, config.host, config.port, backlog=backlog
        )
        self._servers.append(main)
        self.host, self.port = main.sockets[0].getsockname()[:2]
        if config.plain_listen is not None:
            host, port = config.plain_listen
            try:
                plain = await loop.create_server(self.new_connection, host, port, backlog=backlog)
            except BaseException:
                main.close()  # no half-started server
                raise
            self._servers.append(plain)
            self.plain_address = plain.sockets[0].getsockname()[:2]
        if config.metrics_listen is not None:
            await self._listen_metrics(*config.metrics_listen)
        # One line, which tests and scripts wait for: "tcpmq listening on HOST:PORT ...".
        also = ""
        if self.plain_address is not None:
            also = ", and in clear text on {}:{}".format(*self.plain_address)
        log.info("tcpmq listening on %s:%d (%s)%s", self.host, self.port, self._security(), also)

    async def _listen_metrics(self, host: str, port: int) -> None:
        observer = self.app.observer
        assert observer is not None
        registry = registry_for(observer)
        metrics = MetricsListener(
            lambda: exposition(registry), observer.readiness, self._metrics_token
        )
        try:
            await metrics.start(host, port)
        except BaseException:
            for listener in self._servers:
                listener.close()  # no half-started server
            raise
        self._metrics = metrics

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """Where the metrics listener listens (`metrics_listen`), once started."""
        return None if self._metrics is None else self._metrics.address

    def _security(self) -> str:
        if self.config.tls is None:
            return "clear text, no TLS"
        if self.config.tls.client_ca_file is not None:
            return "TLS 1.2+, client certificates required"
        return "TLS 1.2+"

    def _main_protocol(self) -> asyncio.Protocol:
        if self._tls is None:
            return self.new_connection()
        return TlsLayer(
            self._tls, self.new_connection, self._handshakes, self.config.limits.auth_timeout
        )

    async def _create_first_admin(self, users: UserDirectory) -> None:
        if self._admin_password_hash is not None:
            await users.create(ADMIN_USER, "admin", self._admin_password_hash, time.time())
            log.info("created user %r with the given password hash", ADMIN_USER)
            return
        password = self._admin_password or os.environ.get(ADMIN_PASSWORD_ENV)
        generated = not password
        if not password:
            password = secrets.token_urlsafe(18)
        if len(password) < 8:
            raise ValueError(f"{ADMIN_PASSWORD_ENV} must have at least 8 characters")
        await users.create(ADMIN_USER, "admin", hash_password(password), time.time())
        if generated:
            # Printed once, on the first start; it is not stored anywhere in clear.
            print(
                f"tcpmq: created user {ADMIN_USER!r} with password {password}\n"
                f"tcpmq: store it now, it will not be shown again",
                file=sys.stderr,
                flush=True,
            )
        else:
            log.info("created user %r with the given password", ADMIN_USER)

    async def stop(self) -> None:
        """Stop accepting, say bye to every connection, wait up to the grace period."""
        if hasattr(self, "app") and self.app.observer is not None:
            self.app.observer.stopping = True  # /readyz says so while we stop
            self.app.observer.close()
        for listener in self._servers:
            listener.close()
        if self._metrics is not None:
            await self._metrics.close()
            self._metrics = None
        self._handshakes.abort_all()
        self.connections.close_all(ShuttingDown("server is shutting down"))
        if hasattr(self, "app"):
            # Makes everything durable, which also sends replies still waiting for it.
            await self.app.backend.close()
        try:
            await asyncio.wait_for(self.connections.all_closed(), self.config.shutdown_grace)
        except TimeoutError:
            log.warning("%d connections still open after the grace period", len(self.connections))
        for connection in list(self.connections.open):
            connection.abort()
        for listener in self._servers:
            await listener.wait_closed()
        self._servers = []
        if self._deadlines is not None:
            self._deadlines.cancel()
        self.passwords.close()
        # Last: the store is closed and durable, another broker may take over.
        self._lock.release()

    async def serve_until_signalled(self) -> None:
        """Run until SIGTERM or SIGINT, then stop cleanly."""
        await self.start()
        assert self._stopping is not None
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        self._notifier.ready(self.status())
        keep_alive = asyncio.ensure_future(self._notifier.keep_alive(self.status))
        try:
            await self._stopping.wait()
        finally:
            self._notifier.stopping("stopping: closing connections")
            log.info("stopping")
            keep_alive.cancel()
            await self.stop()

    def status(self) -> str:
        """One line for `systemctl status`: where it listens, how many are connected."""
        return (
            f"listening on {self.host}:{self.port} ({self._security()}); "
            f"{len(self.connections)} connections"
        )

    def reload(self) -> None:
        """Apply the settings `reload_config` gives that can change live (see reload.py).

        Anything refused (a bad config file, unusable TLS files) leaves the
        running settings as they were, and is logged.
        """
        self._notifier.reloading()
        try:
            self._reload()
        except ConfigError as exc:
            log.error("reload refused, the settings in force stay: %s", exc)
        finally:
            self._notifier.ready(self.status())

    def _reload(self) -> None:
        new = self._reload_config()
        changes = plan(self.config, new)
        config = self.config
        if changes.tls and new.tls is not None:
            self._tls = server_context(new.tls)  # before any other change: it may refuse
            config = dataclasses.replace(config, tls=new.tls)
            log.info("reload: TLS certificate and key read again from %s", new.tls.cert_file)
        if changes.log_level is not None:
            # Said under the more verbose of the two levels, so that it shows.
            louder = logging.getLevelName(changes.log_level.upper()) < logging.getLogger().level
            if not louder:
                log.info("reload: log level %s", changes.log_level)
            logsetup.set_level(changes.log_level)
            if louder:
                log.info("reload: log level %s", changes.log_level)
            config = dataclasses.replace(
                config, log=dataclasses.replace(config.log, level=changes.log_level)
            )
        if changes.limits:
            config = dataclasses.replace(
                config,
                limits=dataclasses.replace(config.limits, **changes.limits),  # type: ignore[arg-type]
            )
            # The app's limits have max_connections fitted to the open-files limit: keep it.
            limits = dataclasses.replace(self.app.limits, **changes.limits)  # type: ignore[arg-type]
            self.app.limits = limits
            self.app.backend.use_limits(limits)
            self.connections.use_limits(limits)
            log.info(
                "reload: limits %s",
                ", ".join(f"{name}={value}" for name, value in sorted(changes.limits.items())),
            )
        for name in changes.restart:
            log.warning("reload: %s changed; it takes effect at the next restart", name)
        self.config = config

    def new_connection(self) -> Connection:
        """A connection to this server's app (the listener makes one per client)."""
        assert self._deadlines is not None, "server not started"
        return Connection(self.app, self._deadlines)

    # -- tokens ---------------------------------------------------------------

    def mint_token(self, user: str, ttl: int | None = None) -> str:
        """A token for an existing user, as `login` would give (used by tests and the CLI)."""
        record = self.app.users.get(user)
        lifetime = self.config.limits.default_token_ttl if ttl is None else ttl
        issued = record.token_issued_at(time.time())  # never before a revocation
        return self.app.signer.mint(record.name, record.role, record.uid, lifetime, now=issued)


def read_admin_password(path: Path | None) -> str | None:
    """The first admin's password from `path` (its first line), if a path is set.

    Raises:
        ConfigError: the file cannot be read, or is empty, or
            $TCPMQ_ADMIN_PASSWORD gives a password as well.
    """
    if path is None:
        return None
    if os.environ.get(ADMIN_PASSWORD_ENV):
        raise ConfigError(
            f"admin_password_file {path} and {ADMIN_PASSWORD_ENV} both give the admin's "
            "password: keep one"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"admin_password_file {path}: {reason or exc}") from None
    password = text.splitlines()[0] if text.strip() else ""
    if not password:
        raise ConfigError(f"admin_password_file {path} is empty")
    if path.stat().st_mode & 0o077:
        log.warning("admin password file %s can be read by other users; chmod 600 it", path)
    return password
