"""The server's TLS settings: an `ssl.SSLContext` from the configured PEM files.

TLS 1.2 is the oldest version accepted; renegotiation is off (a client could
otherwise make the server redo the expensive part of a handshake at will).
With a client CA, every client must present a certificate it signed (mutual
TLS); the server's users and roles still come from `auth`/`login`. Bad files
are a `ConfigError` naming the file, raised before anything is bound; an
encrypted key is refused rather than prompted for, since a service has no one
at its terminal.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from .config import ConfigError, TlsConfig

log = logging.getLogger(__name__)


def server_context(config: TlsConfig) -> ssl.SSLContext:
    """The context the main listener's TLS layer uses.

    Raises:
        ConfigError: a file is missing or unreadable, not PEM, the key does
            not match the certificate, or the key is encrypted.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION
    cert, key = config.cert_file, config.key_file
    _readable(cert, "--tls-cert")
    _readable(key, "--tls-key")
    _warn_if_exposed(key)

    def no_passphrase() -> bytes:
        raise ConfigError(f"--tls-key {key} is encrypted; give the key unencrypted (mode 0600)")

    try:
        context.load_cert_chain(cert, key, password=no_passphrase)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"--tls-cert {cert} and --tls-key {key} are not a PEM certificate chain and its "
            f"private key ({describe_ssl_error(exc)})"
        ) from None
    if config.client_ca_file is not None:
        ca = config.client_ca_file
        _readable(ca, "--tls-client-ca")
        try:
            context.load_verify_locations(cafile=ca)
        except ssl.SSLError as exc:
            raise ConfigError(
                f"--tls-client-ca {ca} holds no PEM CA certificate ({describe_ssl_error(exc)})"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _readable(path: Path, flag: str) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: {exc.strerror or exc}") from None


def _warn_if_exposed(key: Path) -> None:
    mode = key.stat().st_mode
    if mode & 0o077:
        log.warning(
            "TLS key %s can be read by other users (mode %o); chmod 600 it", key, mode & 0o777
        )


def describe_ssl_error(exc: ssl.SSLError) -> str:
    """A short reason for a TLS failure, as people search for it: "certificate verify failed"."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    return str(exc.reason or exc.strerror or exc).lower().replace("_", " ")
