"""tessera/api/tls.py: etcd's TLS flags as TLSFiles, and the ssl contexts made from them.

What each combination of flags gets (the command line prints these messages
and exits 1), and that the contexts follow etcd's rule: a trusted CA file or
client-cert-auth makes the accepting side require a certificate, and files
that do not load are refused by name.
"""

import ssl

import pytest

from tessera.api.tls import TLSFiles, tls_files
from tessera.certs import issue, make_authority


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    directory = tmp_path_factory.mktemp("certs")
    ca = make_authority(directory)
    return ca, issue(ca, directory, "server", "server", ["127.0.0.1"])


def test_no_flags_mean_plaintext():
    assert tls_files(None, None, None, False) is None


@pytest.mark.parametrize("cert, key", [("a.crt", None), (None, "a.key")])
def test_a_certificate_without_its_key_or_the_reverse_is_refused(cert, key):
    with pytest.raises(ValueError, match="^--peer-cert-file and --peer-key-file go together$"):
        tls_files(cert, key, None, False, flag_prefix="--peer-")


@pytest.mark.parametrize("ca, auth", [("ca.crt", False), (None, True)])
def test_client_certificate_flags_without_a_certificate_are_refused(ca, auth):
    message = "^--trusted-ca-file and --client-cert-auth need --cert-file and --key-file$"
    with pytest.raises(ValueError, match=message):
        tls_files(None, None, ca, auth)


def test_the_flags_become_tls_files():
    assert tls_files("a.crt", "a.key", "", True) == TLSFiles("a.crt", "a.key", None, True)


def test_a_trusted_ca_or_client_cert_auth_requires_a_client_certificate(certificates):
    ca, server = certificates
    cert, key = str(server.cert_file), str(server.key_file)
    assert TLSFiles(cert, key).server_context().verify_mode == ssl.CERT_NONE
    assert TLSFiles(cert, key, str(ca.cert_file)).server_context().verify_mode == ssl.CERT_REQUIRED
    assert TLSFiles(cert, key, None, True).server_context().verify_mode == ssl.CERT_REQUIRED


def test_the_connecting_side_checks_the_certificate_and_the_name(certificates):
    ca, server = certificates
    context = TLSFiles(str(server.cert_file), str(server.key_file), str(ca.cert_file)).client_context()
    assert (context.verify_mode, context.check_hostname) == (ssl.CERT_REQUIRED, True)


def test_files_that_do_not_load_are_named(certificates, tmp_path):
    ca, server = certificates
    with pytest.raises(OSError, match=f"cannot load the certificate {tmp_path}/missing.crt with the key "):
        TLSFiles(str(tmp_path / "missing.crt"), str(server.key_file)).server_context()
    (tmp_path / "junk.pem").write_text("junk\n")
    with pytest.raises(OSError, match=f"cannot load the trusted CA file {tmp_path}/junk.pem"):
        TLSFiles(str(server.cert_file), str(server.key_file), str(tmp_path / "junk.pem")).client_context()
