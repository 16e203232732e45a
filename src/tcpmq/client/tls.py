"""The client's TLS settings for `tcpmqs://` URLs.

By default the server's certificate is verified against the system's trusted
CAs and must name the host of the URL (an IP address in the URL must be in
the certificate too); `ca` trusts the CAs of one PEM file instead (a
private CA). `cert` and `key` present a client certificate, for servers that
require one (mutual TLS). TLS 1.2 is the oldest version accepted. A program
with needs beyond these passes its own `ssl.SSLContext`.

Every problem with the settings is a `ValueError` raised before connecting:
TLS options with a plain `tcpmq://` URL (they would be ignored, and the
password sent in clear text), a key without a certificate, a file that cannot
be read or is not PEM.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from ..tls import describe_ssl_error

PathLike = str | Path


def client_context(
    *,
    tls: bool,
    ca: PathLike | None = None,
    cert: PathLike | None = None,
    key: PathLike | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> ssl.SSLContext | None:
    """The context for a connection, or None for plain TCP (`tls` False).

    Raises:
        ValueError: see the module's docstring.
    """
    files = {name: value for name, value in (("ca", ca), ("cert", cert), ("key", key)) if value}
    given = list(files)
    if not tls:
        if given or ssl_context is not None:
            options = ", ".join(given or ["ssl_context"])
            raise ValueError(f"TLS options ({options}) need a tcpmqs:// URL, not tcpmq://")
        return None
    if ssl_context is not None:
        if given:
            raise ValueError(f"give ssl_context or {', '.join(given)}, not both")
        return ssl_context
    if key and not cert:
        raise ValueError("a client key needs its certificate (cert)")
    for name, path in files.items():
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ValueError(f"{name} {path}: {exc.strerror or exc}") from None
    try:
        context = ssl.create_default_context(cafile=ca)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if cert:
            context.load_cert_chain(cert, key or None, password=_no_passphrase)
    except ssl.SSLError as exc:
        named = ", ".join(f"{name} {value}" for name, value in files.items())
        raise ValueError(f"TLS files ({named}): {describe_ssl_error(exc)}") from None
    return context


def _no_passphrase() -> bytes:
    raise ValueError("the client key is encrypted; give it unencrypted (mode 0600)")
