"""router/front_end.py over TLS: what handlers see of the client's certificate.

A FrontEnd with TLS on a loopback port, its event loop in a thread, and three
methods that answer with the Common Name their call carries (the general
unary path, a server stream, the fast path's responder). grpcio clients with
and without a client certificate call them. This is the name auth takes as the
user when a client sends no token (etcd's rule).
"""

import asyncio
import threading

import grpc
import pytest

from router.front_end import FrontEnd
from router.rpc import SERVER_STREAM, UNARY, Method
from tessera.api.tls import TLSFiles
from tessera.certs import issue, make_authority

PLAIN = "(none)"


async def unary_name(_data, call):
    return (call.client_common_name or PLAIN).encode()


async def streamed_name(_data, call):
    yield (call.client_common_name or PLAIN).encode()


def fast_name(_data, responder):
    responder.reply((responder.client_common_name or PLAIN).encode())


METHODS = [Method("test.Who", "Unary", UNARY, unary_name), Method("test.Who", "Stream", SERVER_STREAM, streamed_name),
           Method("test.Who", "Fast", UNARY, unary_name, fast=fast_name)]


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    directory = tmp_path_factory.mktemp("certs")
    ca = make_authority(directory)
    return {"ca": ca, "server": issue(ca, directory, "server", "router", ["127.0.0.1"], client=False),
            "client": issue(ca, directory, "client", "kube-apiserver", server=False)}


class Serving:
    """A FrontEnd on its own event loop in a thread."""

    def __init__(self, tls: TLSFiles | None):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.front_end = self.run(self._start(tls))
        self.target = f"127.0.0.1:{self.front_end.port}"

    async def _start(self, tls):
        front_end = FrontEnd("127.0.0.1:0", METHODS, lambda sock, _data: sock.close(), 1 << 20, tls=tls)
        front_end.start()
        return front_end

    def run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    def close(self):
        self.run(self.front_end.stop(0.1))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def names_seen(channel) -> list[bytes]:
    identity = {"request_serializer": None, "response_deserializer": None}
    return [channel.unary_unary("/test.Who/Unary", **identity)(b"", timeout=10),
            next(iter(channel.unary_stream("/test.Who/Stream", **identity)(b"", timeout=10))),
            channel.unary_unary("/test.Who/Fast", **identity)(b"", timeout=10)]


def credentials(certificates, with_client_certificate: bool):
    pair = certificates["client"] if with_client_certificate else None
    return grpc.ssl_channel_credentials(
        root_certificates=certificates["ca"].cert_file.read_bytes(),
        private_key=pair.key_file.read_bytes() if pair else None,
        certificate_chain=pair.cert_file.read_bytes() if pair else None)


def test_every_kind_of_call_carries_the_client_certificates_common_name(certificates):
    tls = TLSFiles(str(certificates["server"].cert_file), str(certificates["server"].key_file),
                   str(certificates["ca"].cert_file), client_cert_auth=True)
    serving = Serving(tls)
    try:
        with grpc.secure_channel(serving.target, credentials(certificates, True)) as channel:
            assert names_seen(channel) == [b"kube-apiserver"] * 3
    finally:
        serving.close()


def test_without_a_client_certificate_calls_carry_no_name(certificates):
    tls = TLSFiles(str(certificates["server"].cert_file), str(certificates["server"].key_file))
    serving = Serving(tls)
    try:
        with grpc.secure_channel(serving.target, credentials(certificates, False)) as channel:
            assert names_seen(channel) == [PLAIN.encode()] * 3
    finally:
        serving.close()


def test_plaintext_calls_carry_no_name():
    serving = Serving(None)
    try:
        with grpc.insecure_channel(serving.target) as channel:
            assert names_seen(channel) == [PLAIN.encode()] * 3
    finally:
        serving.close()


def test_files_that_do_not_load_are_refused(certificates, tmp_path):
    tls = TLSFiles(str(tmp_path / "missing.crt"), str(certificates["server"].key_file))
    with pytest.raises(ValueError, match="missing.crt"):
        FrontEnd("127.0.0.1:0", METHODS, lambda sock, _data: sock.close(), 1 << 20, tls=tls)
