"""Where the server may speak clear text: loopback only, unless the operator says otherwise.

Without TLS, `login` carries a password and `auth` a token as readable
bytes, so a clear-text listener that other machines can reach hands them to
anyone on the path. The server refuses to start one unless
`ServerConfig.allow_plaintext` (`--allow-plaintext`) is set. The check runs
before anything is bound or opened.
"""

from __future__ import annotations

import ipaddress
import socket

from .config import ConfigError, ServerConfig


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is a loopback one (127.0.0.0/8, ::1).

    A name is resolved as binding would resolve it; an empty host (every
    interface), `0.0.0.0` and `::` are not loopback, nor is a name that does
    not resolve (binding it fails anyway, and says why).
    """
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass  # a name, not an address
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def refuse_exposed_plaintext(config: ServerConfig) -> None:
    """Refuse a clear-text listener on a non-loopback address without `allow_plaintext`.

    Raises:
        ConfigError: one line saying which listener, and why it is refused.
    """
    if config.allow_plaintext:
        return
    why = (
        "passwords and tokens would cross the network in clear text; serve TLS "
        "(--tls-cert, --tls-key) or give --allow-plaintext on a trusted network"
    )
    if config.tls is None and not is_loopback(config.host):
        raise ConfigError(f"refusing a plain listener on --host {config.host or '*'}: {why}")
    if config.plain_listen is not None and not is_loopback(config.plain_listen[0]):
        host = config.plain_listen[0] or "*"
        raise ConfigError(f"refusing --plain-listen on {host}, not loopback: {why}")
