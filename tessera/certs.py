"""A local certificate authority and the certificates a TLS cluster on this machine needs.

`tessera up --tls` (and the TLS tests) make, under one directory:

    ca.crt                 the CA every side trusts (ca.key stays beside it)
    server.crt/.key        the router's client port: 127.0.0.1, ::1 and localhost (client use
                           too: the launcher's own calls to the router present it, as etcd's
                           gateway presents the server certificate to its own port)
    peer.crt/.key          replicas and routers among themselves, as server and as client
    client.crt/.key        a client's certificate, Common Name "root" (with auth on, etcd takes
                           a verified client certificate's Common Name as the user)

Keys are ECDSA P-256 (fast to make; every etcd client accepts them). Files are
written once: a directory that already holds them keeps them, so clients keep
trusting a cluster that restarts. Keys are written readable by their owner only.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 3650
LOCAL_HOSTS = ("127.0.0.1", "::1", "localhost")
CLIENT_COMMON_NAME = "root"


@dataclass(frozen=True)
class Authority:
    """A CA: its certificate file and key file."""

    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class KeyPair:
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class LocalCertificates:
    """What make_local_certificates wrote."""

    ca: Authority
    server: KeyPair
    peer: KeyPair
    client: KeyPair


def _write_key(path: Path, key) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return builder.not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(
        now + datetime.timedelta(days=VALID_DAYS))


def make_authority(directory: Path, name: str = "ca", common_name: str = "tessera local CA") -> Authority:
    """A self-signed CA as DIRECTORY/NAME.crt and NAME.key."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    certificate = (
        _validity(x509.CertificateBuilder())
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    authority = Authority(directory / f"{name}.crt", directory / f"{name}.key")
    _write_key(authority.key_file, key)
    authority.cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return authority


def issue(authority: Authority, directory: Path, name: str, common_name: str, hosts=(),
          server: bool = True, client: bool = True) -> KeyPair:
    """A certificate signed by `authority`, for `hosts` (IP addresses or DNS names), as
    DIRECTORY/NAME.crt and NAME.key; usable by a server, a client, or both."""
    ca_key = serialization.load_pem_private_key(authority.key_file.read_bytes(), password=None)
    ca_certificate = x509.load_pem_x509_certificate(authority.cert_file.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + \
        ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    builder = (
        _validity(x509.CertificateBuilder())
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                     crl_sign=False, content_commitment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if hosts:
        names = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    pair = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
    _write_key(pair.key_file, key)
    pair.cert_file.write_bytes(builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    return pair


def make_local_certificates(directory: Path, hosts=LOCAL_HOSTS) -> LocalCertificates:
    """The CA and the server, peer and client certificates of a local cluster, made once."""
    ca = Authority(directory / "ca.crt", directory / "ca.key")
    certificates = LocalCertificates(
        ca=ca,
        server=KeyPair(directory / "server.crt", directory / "server.key"),
        peer=KeyPair(directory / "peer.crt", directory / "peer.key"),
        client=KeyPair(directory / "client.crt", directory / "client.key"),
    )
    wanted = [ca.cert_file, ca.key_file] + [path for pair in (certificates.server, certificates.peer,
                                                              certificates.client)
                                            for path in (pair.cert_file, pair.key_file)]
    if all(path.exists() for path in wanted):
        return certificates
    make_authority(directory)
    issue(ca, directory, "server", "tessera", hosts, server=True, client=True)
    issue(ca, directory, "peer", "tessera peer", hosts, server=True, client=True)
    issue(ca, directory, "client", CLIENT_COMMON_NAME, server=False, client=True)
    return certificates
