"""The native edge's TLS (native/src/tls.c under h2edge.c's conn_read/conn_write).

A real Edge with TLS on a loopback port (tests/native/edge_harness.py) and
Python's ssl module as the client: calls over TLS, large answers through
partial TLS writes, the verified client certificate's Common Name, and what
each bad client gets: a certificate from another CA, none where one is
required, plaintext HTTP/2 on the TLS port, a handshake never finished,
garbage. After each, the edge still serves a good client. HTTP/1 over TLS
reaches the application through the edge's relay.
"""

import socket
import ssl
import threading
import time

import pytest
from edge_harness import (BIG, CALL, ECHO, HTTP1, TIMEOUT_SECONDS, EdgeServer, H2Client, RawClient, big_answer,
                          grpc_messages)

from tessera.certs import issue, make_authority

TLS_HANDSHAKE_MS = 10000  # h2edge.c


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    directory = tmp_path_factory.mktemp("certs")
    ca = make_authority(directory)
    other_ca = make_authority(directory, "other-ca", "another CA")
    return {
        "ca": ca,
        "server": issue(ca, directory, "server", "edge", ["127.0.0.1"], server=True, client=False),
        "client": issue(ca, directory, "client", "alice", server=False, client=True),
        "stranger": issue(other_ca, directory, "stranger", "mallory", server=False, client=True),
    }


def server_tls(certificates, require_client_certificate=True) -> dict:
    tls = {"cert_file": str(certificates["server"].cert_file), "key_file": str(certificates["server"].key_file)}
    if require_client_certificate:
        tls["trusted_ca_file"] = str(certificates["ca"].cert_file)
    return tls


def client_context(certificates, pair="client", alpn=("h2",)) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certificates["ca"].cert_file))
    if pair is not None:
        context.load_cert_chain(str(certificates[pair].cert_file), str(certificates[pair].key_file))
    context.set_alpn_protocols(list(alpn))
    return context


@pytest.fixture
def server(certificates):
    edge_server = EdgeServer(tls=server_tls(certificates))
    yield edge_server
    edge_server.close()


def assert_serves(server, certificates):
    """A good client's call is answered: the edge survived what came before."""
    client = H2Client(server.port, tls=client_context(certificates))
    try:
        stream = client.call(ECHO, b"still here")
        assert grpc_messages(client.response(stream).data) == [b"still here"]
    finally:
        client.close()


def assert_refused(sock):
    """The edge ends the connection: an alert or EOF, within the timeout, never an answer."""
    sock.settimeout(TIMEOUT_SECONDS)
    try:
        assert sock.recv(4096) == b""
    except (ssl.SSLError, ConnectionResetError):
        pass


def test_a_call_over_tls_is_answered_and_carries_the_client_common_name(server, certificates):
    client = H2Client(server.port, tls=client_context(certificates))
    assert client.sock.selected_alpn_protocol() == "h2"
    stream = client.call(ECHO, b"over tls")
    assert grpc_messages(client.response(stream).data) == [b"over tls"]
    call = server.wait_events(lambda events: any(e[0] == CALL for e in events))[-1]
    assert server.do(lambda edge: edge.peer_common_name(call[1])) == "alice"
    client.close()
    server.wait_state(lambda edge: edge.connections == 0)
    assert server.do(lambda edge: edge.peer_common_name(call[1])) is None  # the connection is gone


def test_a_large_answer_goes_out_whole_through_partial_tls_writes(server, certificates):
    client = H2Client(server.port, tls=client_context(certificates))
    size = 3 * 1024 * 1024
    stream = client.call(BIG, str(size).encode())
    assert grpc_messages(client.response(stream, timeout=30).data) == [big_answer(size)]
    client.close()


def test_without_a_trusted_ca_no_client_certificate_is_asked_for(certificates):
    edge_server = EdgeServer(tls=server_tls(certificates, require_client_certificate=False))
    try:
        client = H2Client(edge_server.port, tls=client_context(certificates, pair=None))
        stream = client.call(ECHO, b"anonymous")
        assert grpc_messages(client.response(stream).data) == [b"anonymous"]
        call = edge_server.wait_events(lambda events: any(e[0] == CALL for e in events))[-1]
        assert edge_server.do(lambda edge: edge.peer_common_name(call[1])) is None
        client.close()
    finally:
        edge_server.close()


def test_a_client_certificate_from_another_ca_is_refused(server, certificates):
    try:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_SECONDS)
        tls_sock = client_context(certificates, pair="stranger").wrap_socket(sock, server_hostname="127.0.0.1")
    except ssl.SSLError as error:  # TLS 1.2: the handshake itself fails
        assert "bad certificate" in str(error).lower()  # etcd's alert, not OpenSSL's "unknown ca"
    else:  # TLS 1.3: the client finishes first and learns of the refusal on its first read
        with pytest.raises(ssl.SSLError, match="(?i)bad certificate"):
            tls_sock.recv(4096)
        tls_sock.close()
    server.wait_state(lambda edge: edge.connections == 0)
    assert not [event for event in server.events if event[0] == CALL]
    assert_serves(server, certificates)


def test_a_client_without_a_certificate_is_refused_where_one_is_required(server, certificates):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_SECONDS)
    try:
        tls_sock = client_context(certificates, pair=None).wrap_socket(sock, server_hostname="127.0.0.1")
    except ssl.SSLError:
        pass
    else:
        with pytest.raises(ssl.SSLError, match="(?i)certificate required"):
            tls_sock.recv(4096)
        tls_sock.close()
    server.wait_state(lambda edge: edge.connections == 0)
    assert_serves(server, certificates)


def test_plaintext_http2_on_the_tls_port_is_closed_without_an_answer(server, certificates):
    client = RawClient(server.port)  # sends the HTTP/2 preface and SETTINGS in the clear
    assert client.read_to_close() == []
    server.wait_state(lambda edge: edge.connections == 0)
    assert_serves(server, certificates)


def test_http1_over_tls_reaches_the_application_through_a_relay(server, certificates):
    """curl and browsers offer both protocols: they get HTTP/1.1, and the application a plaintext
    socket of its own; answers of any size come back whole, and its close closes the client's."""
    tls_sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_SECONDS)
    tls_sock = client_context(certificates, alpn=("h2", "http/1.1")).wrap_socket(tls_sock, server_hostname="127.0.0.1")
    assert tls_sock.selected_alpn_protocol() == "http/1.1"
    request = b"GET /health HTTP/1.1\r\nHost: edge\r\n\r\n"
    tls_sock.sendall(request)
    [event] = server.wait_event(HTTP1)
    handed = socket.socket(fileno=event[2])
    handed.settimeout(TIMEOUT_SECONDS)
    first = event[4]
    while len(first) < len(request):
        first += handed.recv(4096)
    assert first == request
    body = big_answer(3 * 1024 * 1024)  # more than the relay holds: it waits for the client to read
    handed.setblocking(True)
    writer = threading.Thread(target=handed.sendall, args=(b"HTTP/1.1 200 OK\r\n\r\n" + body,))
    writer.start()
    answer = b""
    while len(answer) < len(body) + 19:
        answer += tls_sock.recv(1 << 16)
    writer.join(TIMEOUT_SECONDS)
    assert answer == b"HTTP/1.1 200 OK\r\n\r\n" + body
    tls_sock.sendall(b"more from the client")
    received = b""
    handed.settimeout(TIMEOUT_SECONDS)
    while len(received) < 20:
        received += handed.recv(4096)
    assert received == b"more from the client"
    handed.close()
    assert_refused(tls_sock)  # the application closed: so does the edge
    tls_sock.close()
    server.wait_state(lambda edge: edge.connections == 0)
    assert_serves(server, certificates)


def test_a_client_that_goes_away_closes_the_applications_relay_end(server, certificates):
    tls_sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_SECONDS)
    tls_sock = client_context(certificates, alpn=("http/1.1",)).wrap_socket(tls_sock, server_hostname="127.0.0.1")
    tls_sock.sendall(b"GET /version HTTP/1.1\r\n\r\n")
    [event] = server.wait_event(HTTP1)
    handed = socket.socket(fileno=event[2])
    handed.settimeout(TIMEOUT_SECONDS)
    tls_sock.close()
    while handed.recv(4096):  # the request's bytes, if not all came with the event, then the end
        pass
    handed.close()
    server.wait_state(lambda edge: edge.connections == 0)


def test_garbage_instead_of_a_client_hello_is_closed(server, certificates):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_SECONDS)
    sock.sendall(b"\x16\x03\x01\xff\xff" + bytes(range(256)) * 4)
    try:
        assert sock.recv(4096)[:1] in (b"", b"\x15")  # nothing, or a TLS alert record
    except ConnectionResetError:
        pass
    sock.close()
    server.wait_state(lambda edge: edge.connections == 0)
    assert_serves(server, certificates)


def test_a_handshake_not_finished_in_time_is_closed(server, certificates):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_SECONDS)
    server.wait_state(lambda edge: edge.connections == 1)
    later_ms = int(time.monotonic() * 1000) + TLS_HANDSHAKE_MS + 1000
    server.do(lambda edge: edge.expire(later_ms))
    server.wait_state(lambda edge: edge.connections == 0)
    assert sock.recv(4096) == b""
    sock.close()
    assert_serves(server, certificates)


def test_files_that_do_not_load_are_refused_by_name(certificates, tmp_path):
    from native.edge import Edge

    edge = Edge("127.0.0.1", 0)
    try:
        missing = str(tmp_path / "missing.crt")
        with pytest.raises(ValueError, match="missing.crt"):
            edge.use_tls(missing, str(certificates["server"].key_file))
        with pytest.raises(ValueError, match="client.key: .*mismatch"):
            edge.use_tls(str(certificates["server"].cert_file), str(certificates["client"].key_file))
        with pytest.raises(ValueError, match="not-a-ca.pem"):
            (tmp_path / "not-a-ca.pem").write_text("not a certificate\n")
            edge.use_tls(str(certificates["server"].cert_file), str(certificates["server"].key_file),
                         str(tmp_path / "not-a-ca.pem"))
    finally:
        edge.close()


def test_a_plaintext_edge_is_untouched_by_tls():
    """Without use_tls the edge speaks plaintext HTTP/2 as before; its calls carry no Common Name."""
    edge_server = EdgeServer()
    try:
        client = H2Client(edge_server.port)
        stream = client.call(ECHO, b"plain")
        assert grpc_messages(client.response(stream).data) == [b"plain"]
        call = edge_server.wait_events(lambda events: any(e[0] == CALL for e in events))[-1]
        assert edge_server.do(lambda edge: edge.peer_common_name(call[1])) is None
        client.close()
    finally:
        edge_server.close()
