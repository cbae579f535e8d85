"""TLS settings as etcd's flags give them, and the ssl contexts built from them.

One `TLSFiles` stands for one set of etcd's flags: `--cert-file`, `--key-file`,
`--trusted-ca-file`, `--client-cert-auth` for the client port, or their
`--peer-*` twins for the connections among replicas and from routers to
replicas. etcd's rule for the accepting side: a trusted CA file, or
client-cert-auth, requires every connecting side to present a certificate
that verifies against that CA. The connecting side presents its own
certificate and verifies the other side's against the same CA file.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass


@dataclass(frozen=True)
class TLSFiles:
    cert_file: str
    key_file: str
    trusted_ca_file: str | None = None
    client_cert_auth: bool = False

    @property
    def requires_client_certificate(self) -> bool:
        return bool(self.trusted_ca_file) or self.client_cert_auth

    def server_context(self) -> ssl.SSLContext:
        """The accepting side's context. OSError naming the file that would not load."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load_cert_chain(context)
        if self.requires_client_certificate:
            if self.trusted_ca_file:
                self._load_trusted_ca(context)
            else:
                context.load_default_certs(ssl.Purpose.CLIENT_AUTH)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def client_context(self) -> ssl.SSLContext:
        """The connecting side's context: our certificate; the other side's checked against the
        CA and the host name or address we connect to."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load_cert_chain(context)
        if self.trusted_ca_file:
            self._load_trusted_ca(context)
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        # the other side's certificate must name the host it is reached by, as etcd checks
        return context

    def _load_cert_chain(self, context: ssl.SSLContext) -> None:
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
        except OSError as error:  # ssl's own messages name no file
            raise OSError(f"cannot load the certificate {self.cert_file} with the key {self.key_file}: "
                          f"{error.strerror or error}") from error

    def _load_trusted_ca(self, context: ssl.SSLContext) -> None:
        try:
            context.load_verify_locations(self.trusted_ca_file)
        except OSError as error:
            raise OSError(f"cannot load the trusted CA file {self.trusted_ca_file}: {error.strerror or error}") \
                from error


def tls_files(cert_file: str | None, key_file: str | None, trusted_ca_file: str | None,
              client_cert_auth: bool, flag_prefix: str = "--") -> TLSFiles | None:
    """The TLSFiles the flags name, None without --cert-file and --key-file; ValueError when the
    flags do not go together (`flag_prefix` is "--" or "--peer-", for the message)."""
    if not cert_file and not key_file:
        if trusted_ca_file or client_cert_auth:
            raise ValueError(f"{flag_prefix}trusted-ca-file and {flag_prefix}client-cert-auth need "
                             f"{flag_prefix}cert-file and {flag_prefix}key-file")
        return None
    if not (cert_file and key_file):
        raise ValueError(f"{flag_prefix}cert-file and {flag_prefix}key-file go together")
    return TLSFiles(cert_file, key_file, trusted_ca_file or None, client_cert_auth)
