"""Server addresses: `tcpmq://host[:port]` URLs, and `host[:port]` as people type them.

`tcpmqs://` is the same server address over TLS (see tls.py); both
default to port 7878.

The library takes URLs only (`parse_url`), so a program says what it means;
the command line also takes an address without the scheme (`parse_address`),
as people type it after `ssh` or `nc`.
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import urlsplit

from ..config import DEFAULT_PORT

DEFAULT_URL = f"tcpmq://127.0.0.1:{DEFAULT_PORT}"


# Each scheme, and whether it speaks TLS.
SCHEMES = {"tcpmq": False, "tcpmqs": True}


class Address(NamedTuple):
    host: str
    port: int


class ServerUrl(NamedTuple):
    address: Address
    #: True for `tcpmqs://`.
    tls: bool


def parse_url(url: str) -> Address:
    """Split `tcpmq://host[:port]` (or `tcpmqs://`) into host and port (default 7878).

    IPv6 literals go in brackets: `tcpmq://[::1]:7878`. A trailing `/` is
    allowed; a path, query, fragment or user info is not.

    Raises:
        ValueError: the URL is not of that form or the port is out of range.
    """
    return parse_server_url(url).address


def parse_server_url(url: str) -> ServerUrl:
    """`parse_url`, and whether the URL asks for TLS (`tcpmqs://`).

    Raises:
        ValueError: as `parse_url`.
    """
    parts = urlsplit(url)  # raises ValueError on an unclosed IPv6 bracket
    if parts.scheme not in SCHEMES:
        raise ValueError(f"not a tcpmq:// or tcpmqs:// URL: {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"a tcpmq URL has no path, query or fragment: {url!r}")
    if "@" in parts.netloc:
        # Credentials belong in connect()'s arguments, not in a URL that gets
        # logged; nor in this message, hence no URL in it.
        raise ValueError("a tcpmq URL carries no user info; pass user and password to connect()")
    host = parts.hostname
    if not host:
        raise ValueError(f"no host in {url!r}")
    port = parts.port  # raises ValueError when not a number in 0..65535
    if port is None:
        port = DEFAULT_PORT
    elif port == 0:
        raise ValueError(f"port 0 in {url!r}")
    return ServerUrl(Address(host, port), SCHEMES[parts.scheme])


def parse_address(text: str) -> Address:
    """`parse_url`, also taking `host[:port]` without the scheme (`127.0.0.1:7878`).

    Raises:
        ValueError: as `parse_url`; another scheme (`http://`) is refused, not guessed at.
    """
    return parse_typed_address(text).address


def parse_typed_address(text: str) -> ServerUrl:
    """`parse_server_url`, also taking `host[:port]` (plain TCP) as `parse_address` does.

    Raises:
        ValueError: as `parse_url`.
    """
    return parse_server_url(text if "://" in text else f"tcpmq://{text}")
