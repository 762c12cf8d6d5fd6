"""TLS configuration shared by the client and the server (pure: builds ssl contexts, no I/O
beyond reading the named PEM files)."""

from __future__ import annotations

import dataclasses
import ssl
from pathlib import Path

from ._errors import ConfigError

# gRPC requires HTTP/2 over TLS negotiated with ALPN.
ALPN_H2 = "h2"


@dataclasses.dataclass(frozen=True)
class ClientTLS:
    """TLS settings of a client.

    Args:
        ca: PEM bundle that signs the server's certificate (None: the system store).
        cert: client certificate (PEM) for mutual TLS.
        key: the client certificate's private key (PEM).
        server_hostname: name to verify in the server certificate (default: the target's host).
    """

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_hostname: str | None = None

    def context(self) -> ssl.SSLContext:
        """The client ``ssl.SSLContext`` (raises ConfigError for unreadable or invalid files)."""
        if (self.cert is None) != (self.key is None):
            raise ConfigError("mutual TLS needs both a client certificate and its key")
        try:
            ctx = ssl.create_default_context(
                ssl.Purpose.SERVER_AUTH, cafile=str(self.ca) if self.ca else None
            )
            if self.cert is not None and self.key is not None:
                ctx.load_cert_chain(str(self.cert), str(self.key))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load TLS files: {exc}") from exc
        ctx.set_alpn_protocols([ALPN_H2])
        return ctx


@dataclasses.dataclass(frozen=True)
class ServerTLS:
    """TLS settings of the server.

    Args:
        cert: the server certificate chain (PEM).
        key: its private key (PEM).
        client_ca: when set, clients must present a certificate signed by this CA (mutual TLS).
    """

    cert: Path
    key: Path
    client_ca: Path | None = None

    def context(self) -> ssl.SSLContext:
        """The server ``ssl.SSLContext`` (raises ConfigError for unreadable or invalid files)."""
        try:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(self.cert), str(self.key))
            if self.client_ca is not None:
                ctx.load_verify_locations(cafile=str(self.client_ca))
                ctx.verify_mode = ssl.CERT_REQUIRED
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load TLS files: {exc}") from exc
        ctx.set_alpn_protocols([ALPN_H2])
        return ctx
