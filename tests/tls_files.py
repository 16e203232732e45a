"""Certificates made at test time with trustme: a CA, a server, a client."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class TlsFiles:
    ca: trustme.CA
    #: The CA's certificate (what `--ca` names).
    ca_pem: Path
    #: Key and chain of a server certificate for 127.0.0.1, ::1 and localhost.
    server_pem: Path
    #: Key and chain of a client certificate ("client@example.com") from the same CA.
    client_pem: Path

    def client_context(self, *, with_cert: bool = False) -> ssl.SSLContext:
        """A client context trusting the CA (presenting the client certificate if asked)."""
        context = ssl.create_default_context(cafile=str(self.ca_pem))
        if with_cert:
            context.load_cert_chain(self.client_pem)
        return context


def make_tls_files(directory: Path, name: str = "test") -> TlsFiles:
    ca = trustme.CA(organization_name=f"tcpmq {name} CA")
    server = ca.issue_cert("127.0.0.1", "::1", "localhost")
    client = ca.issue_cert("client@example.com")
    files = TlsFiles(
        ca=ca,
        ca_pem=directory / f"{name}-ca.pem",
        server_pem=directory / f"{name}-server.pem",
        client_pem=directory / f"{name}-client.pem",
    )
    ca.cert_pem.write_to_path(str(files.ca_pem))
    server.private_key_and_cert_chain_pem.write_to_path(str(files.server_pem))
    client.private_key_and_cert_chain_pem.write_to_path(str(files.client_pem))
    for secret in (files.server_pem, files.client_pem):
        secret.chmod(0o600)
    return files
