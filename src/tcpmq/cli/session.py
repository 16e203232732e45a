"""Where to connect and as whom: the server URL, the credentials, the connection.

Credentials are looked for in this order, the first found wins:

1. `--token TOKEN`;
2. `--user NAME`, with the password from `TCPMQ_PASSWORD` or asked for;
3. `TCPMQ_TOKEN`;
4. the login stored by `tcpmq login` for the server's URL.

They are resolved (and a password asked for) before connecting, because the
server closes a connection that has not authenticated within its
`auth_timeout`. A command connects once; the shell keeps its session for its
whole life and connects again, with the same credentials, if the connection
was lost.

TLS (`tcpmqs://` URLs): `--ca`, `--cert` and `--key`, else `TCPMQ_CA`,
`TCPMQ_CERT` and `TCPMQ_KEY`. The options with a `tcpmq://` URL are a
usage error (they would be ignored and the password sent in clear text);
the variables are only read for a `tcpmqs://` URL, so one set for a TLS
broker does not get in the way of a local plain one. The settings are
checked, and their files read, before anything else happens.
"""

from __future__ import annotations

import argparse
import os
import ssl
import time
from dataclasses import dataclass

from ..client import DEFAULT_URL, Client, ConnectFailed, ConnectionClosed, connect
from ..client.tls import client_context
from ..client.url import parse_typed_address
from ..errors import AuthFailed
from ..models import Identity, LoginResult
from ..tls import describe_ssl_error
from .credentials import CredentialStore
from .exits import EXIT_AUTH, EXIT_CONNECTION, CliError, UsageError
from .prompts import ask_password

DEFAULT_TIMEOUT = 10.0


def canonical_url(url: str) -> str:
    """`url` as `tcpmq://host:port` (or `tcpmqs://`), so that one server has one key
    in the credentials file.

    `url` may leave out the scheme (`127.0.0.1:7878`): the command line takes it as typed.

    Raises:
        UsageError: not a tcpmq URL.
    """
    try:
        (host, port), tls = parse_typed_address(url)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if ":" in host:
        host = f"[{host}]"
    return f"{'tcpmqs' if tls else 'tcpmq'}://{host}:{port}"


@dataclass(frozen=True, slots=True)
class Credentials:
    """How to authenticate, and where that came from (for error messages)."""

    source: str
    token: str | None = None
    user: str | None = None
    password: str | None = None


class Session:
    """The server, the credentials, and the open client (connected on first use)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        user: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        store: CredentialStore | None = None,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
    ) -> None:
        if token is not None and user is not None:
            raise UsageError("give --token or --user, not both")
        if timeout <= 0:
            raise UsageError("--timeout must be positive")
        self.url = canonical_url(url or os.environ.get("TCPMQ_URL") or DEFAULT_URL)
        self.tls = _tls_settings(self.url, ca, cert, key)
        self.store = store if store is not None else CredentialStore()
        self.timeout = timeout
        #: Who the connection is authenticated as, once it is.
        self.identity: Identity | None = None
        self._token = token
        self._user = user
        self._credentials: Credentials | None = None
        self._client: Client | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Session:
        """The session the command line's connection options describe."""
        return cls(
            args.url,
            token=args.token,
            user=args.user,
            timeout=args.timeout,
            ca=args.ca,
            cert=args.cert,
            key=args.key,
        )

    @property
    def host_port(self) -> str:
        """`host:port` of the server, for prompts and messages."""
        return self.url.partition("://")[2]

    def credentials(self) -> Credentials:
        """The credentials to use, asking for a password if `--user` was given.

        Raises:
            CliError: none are available (exit 4), or the stored login has expired.
        """
        if self._credentials is None:
            self._credentials = self._resolve()
        return self._credentials

    def _resolve(self) -> Credentials:
        if self._token is not None:
            return Credentials("--token", token=self._token)
        if self._user is not None:
            password = os.environ.get("TCPMQ_PASSWORD") or ask_password(
                f"Password for {self._user} at {self.url}: "
            )
            return Credentials("--user", user=self._user, password=password)
        env_token = os.environ.get("TCPMQ_TOKEN")
        if env_token:
            return Credentials("TCPMQ_TOKEN", token=env_token)
        stored = self.store.get(self.url)
        if stored is None:
            raise CliError(
                f"unauthenticated: not logged in to {self.url}; "
                "run 'tcpmq login --user NAME' or give --token",
                EXIT_AUTH,
            )
        if stored.expires_at is not None and stored.expires_at <= time.time():
            raise CliError(
                f"auth_failed: the stored login for {self.url} has expired; "
                "run 'tcpmq login' again",
                EXIT_AUTH,
            )
        return Credentials(f"the stored login for {self.url}", token=stored.token)

    async def client(self, *, authenticate: bool = True) -> Client:
        """The open client, connected (and authenticated) if it is not yet.

        Raises:
            CliError: cannot connect (exit 3), or no credentials (exit 4).
            AuthFailed: the credentials were refused (exit 4).
        """
        credentials: Credentials | None = None
        if self._client is None or self._client.closed:
            # Ask for a password before connecting: the server drops a
            # connection that has not authenticated within its auth_timeout.
            self.identity = None
            if authenticate:
                credentials = await self._credentials_or_unreachable()
            self._client = await self._connect()
        elif authenticate and self.identity is None:
            credentials = self.credentials()
        if credentials is not None:
            await self._authenticate(self._client, credentials)
        return self._client

    async def _credentials_or_unreachable(self) -> Credentials:
        """`credentials()`, unless the server cannot be reached: that is said first.

        Not being logged in matters only once the address is right, and a
        wrong port reported as `unauthenticated` sends people to `login`
        (which then fails too). The connection made to find out is kept.
        """
        try:
            return self.credentials()
        except CliError as exc:
            if exc.code != EXIT_AUTH:
                raise
            self._client = await self._connect()
            raise

    async def _connect(self) -> Client:
        try:
            return await connect(
                self.url, timeout=self.timeout, ssl_context=self.tls, anonymous=True
            )
        except TimeoutError:
            # A TLS broker waits for a handshake and greets a tcpmq:// client with silence.
            hint = "" if self.tls is not None else " (if the broker serves TLS, use tcpmqs://)"
            raise CliError(
                f"cannot connect to {self.url}: timed out{hint}", EXIT_CONNECTION
            ) from None
        except ssl.SSLError as exc:
            raise CliError(
                f"cannot connect to {self.url}: TLS: {describe_tls_failure(exc)}", EXIT_CONNECTION
            ) from None
        except (ConnectFailed, OSError) as exc:
            reason = (exc.strerror or type(exc).__name__).lower()
            raise CliError(f"cannot connect to {self.url}: {reason}", EXIT_CONNECTION) from None

    async def _authenticate(self, client: Client, credentials: Credentials) -> None:
        try:
            if credentials.token is not None:
                self.identity = await client.auth(credentials.token)
            else:
                assert credentials.user is not None and credentials.password is not None
                self.adopt(await client.login(credentials.user, credentials.password))
        except AuthFailed as exc:
            self._credentials = None
            hint = "; run 'tcpmq login' again" if credentials.source.startswith("the") else ""
            raise CliError(
                f"auth_failed: {exc.message} (credentials from {credentials.source}{hint})",
                EXIT_AUTH,
            ) from None

    def adopt(self, login: LoginResult) -> None:
        """Use the token of a login from now on (also to connect again)."""
        self.identity = Identity(user=login.user, role=login.role, expires_at=login.expires_at)
        self._credentials = Credentials(f"the login as {login.user}", token=login.token)

    async def revive(self) -> None:
        """Drop the connection if it has died since it was last used (the shell, between commands).

        A ping finds out; the next `client()` then connects again. Only a
        ping is ever retried this way: a command that fails on a connection
        lost under it is reported, since it may or may not have been done.
        """
        client = self._client
        if client is None:
            return
        if not client.closed:
            try:
                await client.ping()
                return
            except (ConnectionClosed, TimeoutError, OSError):
                pass
        await self.close()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
            self.identity = None


def _tls_settings(
    url: str, ca: str | None, cert: str | None, key: str | None
) -> ssl.SSLContext | None:
    """The TLS context for `url` (None for `tcpmq://`); see the module's docstring.

    Raises:
        UsageError: TLS options with a `tcpmq://` URL, or unusable TLS files.
    """
    tls = url.startswith("tcpmqs://")
    if not tls:
        given = [flag for flag, value in (("--ca", ca), ("--cert", cert), ("--key", key)) if value]
        if given:
            raise UsageError(f"{', '.join(given)} need a tcpmqs:// URL, not {url}")
        return None
    try:
        return client_context(
            tls=True,
            ca=ca or os.environ.get("TCPMQ_CA") or None,
            cert=cert or os.environ.get("TCPMQ_CERT") or None,
            key=key or os.environ.get("TCPMQ_KEY") or None,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def describe_tls_failure(exc: ssl.SSLError) -> str:
    """Why a TLS connection failed, with what to check for the common reasons."""
    reason = describe_ssl_error(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code in _NAME_MISMATCH:
            return f"{reason} (the server's certificate is for another name)"
        return f"{reason} (is the server's CA trusted? see --ca)"
    if "certificate required" in reason:
        return f"{reason} (the server wants a client certificate: --cert, --key)"
    if "wrong version number" in reason or "record layer failure" in reason:
        return f"{reason} (does the server speak TLS on this port?)"
    return reason


# X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH: the
# certificate does not name the host or address connected to.
_NAME_MISMATCH = frozenset({62, 64})
