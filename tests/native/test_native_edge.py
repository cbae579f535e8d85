"""native.edge (native/src/h2edge.c) against ordinary and hostile HTTP/2 peers.

Each test runs a real Edge on a loopback port (tests/native/edge_harness.py:
a select() loop in a thread with a small gRPC application) and talks to it
over sockets: with h2's client connection (the reference twin) for what a
well-behaved client does, with frames built by hand for what a hostile or
broken one does. Every test asserts what comes back (frames, codes, the
events the application sees), waiting on sockets and events with timeouts,
never sleeping for the edge to catch up. Timers the edge keeps (CLOSING_MS,
STALLED_MS) are driven by calling expire() with a later clock.

Sections: ordinary HTTP/2; gRPC semantics; hostile peers; one port, two
protocols.
"""

import select
import socket
import struct
import time

import hpack
import pytest
from edge_harness import (
    ACK,
    BIDI,
    BIG,
    CALL,
    CANCEL,
    CANCELLED,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    ECHO,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HALF_CLOSE,
    HEADERS,
    HTTP1,
    MANY,
    MESSAGE,
    NEVER,
    NO_ERROR,
    OPEN,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    STREAM_CLOSED,
    WINDOW_UPDATE,
    WRITABLE,
    Response,
    EdgeServer,
    H2Client,
    RawClient,
    big_answer,
    connect,
    grpc_message,
    header_frames,
    many_message,
    raw_frame,
    request_frames,
    request_headers,
    settings_payload,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hyperframe.frame import ContinuationFrame, DataFrame, HeadersFrame, PingFrame, RstStreamFrame, SettingsFrame

MESSAGE_BYTES_MAX = 64 * 1024
HEADER_LIST_BYTES_MAX = 64 * 1024


@pytest.fixture
def server():
    edge_server = EdgeServer(message_bytes_max=MESSAGE_BYTES_MAX, header_list_bytes_max=HEADER_LIST_BYTES_MAX)
    yield edge_server
    edge_server.close()


@pytest.fixture(scope="module")
def shared_server():
    """One server for the property tests (hypothesis runs many examples per test function)."""
    edge_server = EdgeServer(message_bytes_max=MESSAGE_BYTES_MAX, header_list_bytes_max=HEADER_LIST_BYTES_MAX)
    yield edge_server
    edge_server.close()


def echo_works(server, payload=b"still here"):
    """A fresh h2 connection's unary call is answered."""
    client = H2Client(server.port)
    try:
        response = client.response(client.call(ECHO, payload))
        assert (response.status, response.messages) == (0, [payload])
    finally:
        client.close()


def trailers(client, stream_id):
    """The client's trailers, ending its side of the stream."""
    return HeadersFrame(stream_id, client.header_block([("x-trailer", "1")]), flags=["END_HEADERS", "END_STREAM"])


def app_view(events):
    """The events as the application sees them, without connection ids."""
    return [(kind, stream, method, data, metadata) for kind, _, stream, method, data, metadata in events]


# ============================================================================ ordinary HTTP/2


def test_unary_call_through_h2_gets_headers_message_and_ok_trailers(server):
    client = H2Client(server.port)
    stream_id = client.call(ECHO, b"hello", extra=(("token", "t0k3n"), ("x-ignored", "1")))
    response = client.response(stream_id)
    assert response.headers[":status"] == "200"
    assert response.headers["content-type"] == "application/grpc"
    assert response.messages == [b"hello"]
    assert response.trailers == {"grpc-status": "0"}
    assert response.reset is None
    [call] = server.wait_event(CALL)
    assert call[2:] == (stream_id, server.method_index[ECHO], b"hello", (("token", "t0k3n"),))
    assert server.results == [("reply", call[1], stream_id, 0)]
    client.close()


def split_delivery(server, pieces):
    """Send `pieces` one at a time, each read by the edge before the next; the app's events and the bytes back."""
    mark = server.mark()
    client = RawClient(server.port, preface=False)
    for piece in pieces:
        client.send(piece)
        server.settle()
    client.read_until(lambda f: f.stream == 1 and f.kind == HEADERS and f.flags & END_STREAM)
    events = server.wait_events(lambda events: any(e[0] == CALL for e in events), mark)
    client.close()
    return app_view(events), bytes(client.received)


def whole_request():
    """A client's first bytes: preface, SETTINGS, one ECHO call with metadata; and its frame boundaries."""
    settings = SettingsFrame(0, settings={4: 100000}).serialize()
    frames = request_frames(hpack.Encoder(), 1, ECHO, b"split me" * 10, extra=(("token", "abc"), ("hasleader", "true")))
    parts = [PREFACE, settings] + [f.serialize() for f in frames]
    boundaries, at = [], 0
    for part in parts:
        at += len(part)
        boundaries.append(at)
    return b"".join(parts), boundaries[:-1]


def test_one_request_whole_bytewise_and_split_everywhere_gives_the_same_events(server):
    data, boundaries = whole_request()
    expected_events, expected_bytes = split_delivery(server, [data])
    assert [e[0] for e in expected_events] == [CALL]
    assert expected_events[0][3:] == (b"split me" * 10, (("token", "abc"), ("hasleader", "true")))
    assert split_delivery(server, [data[i:i + 1] for i in range(len(data))]) == (expected_events, expected_bytes)
    cuts = [0] + boundaries + [len(data)]
    assert split_delivery(server, [data[a:b] for a, b in zip(cuts, cuts[1:])]) == (expected_events, expected_bytes)


@pytest.mark.parametrize("where", [
    "in the preface", "after the preface", "in a frame header", "in the header block", "in a message prefix",
    "just before the end"])
def test_request_split_at_one_point_gives_the_same_events(server, where):
    data, boundaries = whole_request()
    preface_end, settings_end, headers_end = boundaries
    cut = {"in the preface": 10, "after the preface": preface_end, "in a frame header": settings_end + 4,
           "in the header block": settings_end + 12, "in a message prefix": headers_end + 9 + 3,
           "just before the end": len(data) - 1}[where]
    expected = split_delivery(server, [data])
    assert split_delivery(server, [data[:cut], data[cut:]]) == expected


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(min_value=1, max_value=200), max_size=8, unique=True))
def test_request_split_at_random_points_gives_the_same_events(shared_server, cuts):
    data, _ = whole_request()
    points = [0] + sorted(c for c in cuts if c < len(data)) + [len(data)]
    assert split_delivery(shared_server, [data[a:b] for a, b in zip(points, points[1:])]) == \
        split_delivery(shared_server, [data])


def test_many_streams_on_one_connection_answered_out_of_order(server):
    client = H2Client(server.port)
    streams = [client.call(NEVER, f"request {i}".encode()) for i in range(20)]
    calls = server.wait_event(CALL, count=20)
    assert [c[2] for c in calls] == streams
    answer_order = list(reversed(calls[::2])) + calls[1::2]
    for _, conn, stream, _, data, _ in answer_order:
        assert server.do(lambda edge, conn=conn, stream=stream, data=data: edge.reply(conn, stream, data + b"!")) == 0
    client.wait(lambda: len(client.order) == 20)
    assert client.order == [c[2] for c in answer_order]
    for i, stream_id in enumerate(streams):
        response = client.responses[stream_id]
        assert (response.status, response.messages) == (0, [f"request {i}!".encode()])
    assert server.do(lambda edge: edge.open_streams) == 0
    client.close()


def test_hpack_dynamic_table_and_huffman_from_h2s_encoder(server):
    client = H2Client(server.port)
    encoder = client.conn.encoder
    blocks = []
    encode = encoder.encode
    encoder.encode = lambda headers, **options: blocks.append(encode(headers, **options)) or blocks[-1]
    for i in range(12):
        if i == 5:
            encoder.header_table_size = 64      # a dynamic table size update at the start of the next block
        if i == 8:
            encoder.header_table_size = 4096    # and back up
        mark = server.mark()
        token = "a-long-token-value-that-huffman-and-the-table-shrink" if i % 3 else f"token-{i}"
        stream_id = client.conn.get_next_available_stream_id()
        client.start(stream_id, ECHO, extra=(("token", token), ("hasleader", "true"), ("x-trace", "t" * (i + 1))))
        client.conn.send_data(stream_id, grpc_message(b"m%d" % i), end_stream=True)
        client.flush()
        response = client.response(stream_id)
        assert (response.status, response.messages) == (0, [b"m%d" % i])
        [call] = server.wait_event(CALL, since=mark)
        assert call[5] == (("token", token), ("hasleader", "true"))
    # what the edge decoded: Huffman-coded literals, entries of the dynamic table, and size updates
    raw_bytes = sum(len(n) + len(v) for n, v in request_headers(ECHO, extra=(("token", "x" * 8),) * 3))
    assert len(blocks[0]) < raw_bytes * 0.9, "Huffman-coded"
    assert len(blocks[2]) < len(blocks[0]) / 2, "fields repeated as dynamic table indexes"
    assert blocks[5][0] & 0xE0 == 0x20 and blocks[8][0] & 0xE0 == 0x20, "dynamic table size updates"
    client.close()


def test_large_answer_respects_a_small_window_and_the_default_frame_size(server):
    stream_window = 10000
    client = RawClient(server.port, settings={4: stream_window})
    stream_id = client.request(BIG, b"300000")
    conn_window, window = 65535, stream_window
    granted_stream, granted_conn = stream_window, 65535
    body, trailers = bytearray(), None
    while trailers is None:
        frame = client.read_frame()
        if frame.kind == DATA:
            assert frame.stream == stream_id
            assert len(frame.payload) <= 16384, "a DATA frame above the peer's SETTINGS_MAX_FRAME_SIZE"
            conn_window -= len(frame.payload)
            window -= len(frame.payload)
            assert conn_window >= 0 and window >= 0, "DATA beyond what the windows allowed"
            body += frame.payload
            # The edge sends all a window allows: one of them is used up before it stops.
            if window == 0:
                client.window_update(stream_id, stream_window)
                window += stream_window
                granted_stream += stream_window
            if conn_window == 0:
                client.window_update(0, 30000)
                conn_window += 30000
                granted_conn += 30000
        elif frame.kind == HEADERS and frame.stream == stream_id and frame.flags & END_STREAM:
            trailers = dict(frame.headers)
    assert trailers == {"grpc-status": "0"}
    assert len(body) == 300005 <= min(granted_stream, granted_conn)
    assert bytes(body) == grpc_message(big_answer(300000))
    client.close()


def test_small_answer_is_not_held_behind_a_large_one_waiting_for_its_window(server):
    client = RawClient(server.port)
    client.window_update(0, 1 << 20)  # the connection's window is no bottleneck; the streams' are 65535
    big = client.request(BIG, b"200000")
    frames = client.read_until(lambda f: f.kind == DATA and f.stream == big)
    small = client.request(ECHO, b"small")
    frames += client.read_until(lambda f: f.stream == small and f.kind == HEADERS and f.flags & END_STREAM)
    response = Response.from_frames([f for f in frames if f.stream == small])
    assert (response.status, response.messages) == (0, [b"small"])
    assert sum(len(f.payload) for f in frames if f.kind == DATA and f.stream == big) == 65535, \
        "the big answer sent its stream's whole window, and no more"
    client.window_update(big, 200005 - 65535)
    frames += client.read_until(lambda f: f.stream == big and f.kind == HEADERS and f.flags & END_STREAM)
    response = Response.from_frames([f for f in frames if f.stream == big])
    assert (response.status, response.messages) == (0, [big_answer(200000)])
    client.close()


def test_error_answers_are_not_held_behind_data_waiting_for_the_connections_window(server):
    """Trailers are not flow-controlled: a Trailers-Only answer goes out while another stream's DATA waits for
    the connection's window."""
    client = RawClient(server.port, settings={4: 1 << 20})  # stream windows are no bottleneck; the connection's is
    big = client.request(BIG, b"100000")
    frames = client.read_until(lambda f: f.kind == DATA and f.stream == big)
    unknown = client.request("/x.Y/Z", b"")
    frames += client.read_until(lambda f: f.stream == unknown and f.flags & END_STREAM)
    assert Response.from_frames([f for f in frames if f.stream == unknown]).status == 12
    mark = server.mark()
    never = client.request(NEVER, b"then fail")
    [call] = server.wait_event(CALL, since=mark)
    assert server.do(lambda edge: edge.finish(call[1], call[2], 9, "failed precondition")) == 0
    frames += client.read_until(lambda f: f.stream == never and f.flags & END_STREAM)
    response = Response.from_frames([f for f in frames if f.stream == never])
    assert (response.status, response.message) == (9, "failed precondition")
    assert sum(len(f.payload) for f in frames if f.kind == DATA) == 65535
    client.window_update(0, 100005 - 65535)
    frames += client.read_until(lambda f: f.stream == big and f.flags & END_STREAM)
    assert Response.from_frames([f for f in frames if f.stream == big]).messages == [big_answer(100000)]
    client.close()


def test_writable_is_reported_when_a_streams_queue_drains(server):
    client = RawClient(server.port)
    stream_id, frames = client.request_frames(BIDI, None, end_stream=False)
    client.send_frames(*frames)
    [opened] = server.wait_event(OPEN)
    conn = opened[1]

    def send_a_lot(edge):
        for i in range(4):
            assert edge.send(conn, stream_id, bytes([i]) * 50000) == 0
        return edge.queued(conn, stream_id), edge.want_writable(conn, stream_id, 1)
    queued, asked = server.do(send_a_lot)
    assert (queued, asked) == (4 * 50005 - 65535, 0)
    frames = client.read_until(lambda f: f.kind == DATA and f.stream == stream_id)
    received = sum(len(f.payload) for f in frames if f.kind == DATA)
    mark = server.mark()
    server.settle()
    assert server.events_since(mark) == [], "WRITABLE before the queue drained"
    client.window_update(0, 1 << 20)
    client.window_update(stream_id, 1 << 20)
    while received < 4 * 50005:
        received += sum(len(f.payload) for f in [client.read_frame()] if f.kind == DATA)
    [writable] = server.wait_event(WRITABLE, since=mark)
    assert writable[1:3] == (conn, stream_id)
    assert server.do(lambda edge: edge.queued(conn, stream_id)) == 0
    client.close()


def test_settings_are_acknowledged_and_ours_advertise_no_stream_limit(server):
    client = RawClient(server.port, settings={4: 70000, 5: 20000})
    frames = client.read_until(lambda f: f.kind == SETTINGS and f.flags & ACK)
    first = frames[0]
    assert first.kind == SETTINGS and not first.flags & ACK
    ours = dict(struct.unpack(">HI", first.payload[i:i + 6]) for i in range(0, len(first.payload), 6))
    assert ours[3] == 2**32 - 1, "MAX_CONCURRENT_STREAMS: as etcd, no limit"
    assert ours[6] == HEADER_LIST_BYTES_MAX and ours[2] == 0 and ours[4] == 1 << 20
    window_updates = [f for f in frames if f.kind == WINDOW_UPDATE and f.stream == 0]
    assert [int.from_bytes(f.payload, "big") for f in window_updates] == [(16 << 20) - 65535]
    client.send_frames(SettingsFrame(0, settings={4: 65535}))
    [ack] = [f for f in client.read_until(lambda f: f.kind == SETTINGS) if f.kind == SETTINGS]
    assert ack.flags & ACK and ack.payload == b""
    client.close()


def test_ping_is_answered_with_an_ack_carrying_its_payload(server):
    client = RawClient(server.port)
    client.ping(b"\x01\x02\x03\x04\x05\x06\x07\x08")
    frames = client.read_until(lambda f: f.kind == PING)
    assert (frames[-1].flags, frames[-1].payload) == (ACK, b"\x01\x02\x03\x04\x05\x06\x07\x08")
    client.send_frames(PingFrame(0, b"ackackac", flags=["ACK"]))  # an unsolicited ACK is ignored
    client.ping(b"again!!!")
    frames = client.read_until(lambda f: f.kind == PING)
    assert [(f.flags, f.payload) for f in frames if f.kind == PING] == [(ACK, b"again!!!")]
    client.close()


def test_keepalive_pings_every_few_ms_never_get_a_goaway(server):
    client = RawClient(server.port)
    client.read_until(lambda f: f.kind == SETTINGS)
    for i in range(150):
        payload = i.to_bytes(8, "big")
        client.ping(payload)
        frames = client.read_until(lambda f: f.kind == PING)
        assert [f.kind for f in frames if f.kind == GOAWAY] == []
        assert frames[-1].payload == payload
        time.sleep(0.002)  # the client's keepalive interval, not a wait for the edge
    stream_id = client.request(ECHO, b"after pings")
    assert client.response(stream_id).messages == [b"after pings"]
    client.close()


def test_bidirectional_stream_echoes_each_message_and_finishes_on_half_close(server):
    client = H2Client(server.port)
    stream_id = client.conn.get_next_available_stream_id()
    client.start(stream_id, BIDI, extra=(("token", "s"),))
    client.flush()
    [opened] = server.wait_event(OPEN)
    assert opened[2:] == (stream_id, server.method_index[BIDI], None, (("token", "s"),))
    for i in range(5):
        client.conn.send_data(stream_id, grpc_message(b"msg %d" % i))
        client.flush()
        client.wait(lambda: len(client.responses[stream_id].messages) == i + 1)
    client.conn.end_stream(stream_id)
    client.flush()
    response = client.response(stream_id)
    assert response.messages == [b"msg %d" % i for i in range(5)]
    assert response.status == 0
    server.wait_event(HALF_CLOSE)
    assert [e[0] for e in server.events_since()] == [OPEN] + [MESSAGE] * 5 + [HALF_CLOSE]
    client.close()


def test_server_stream_sends_many_messages_in_order(server):
    client = H2Client(server.port)
    stream_id = client.call(MANY, b"2000 100")
    response = client.response(stream_id, timeout=10)
    assert response.status == 0
    assert response.messages == [many_message(i, 100) for i in range(2000)]
    assert all(r[3] == 0 for r in server.results)
    client.close()


def test_many_large_requests_in_parallel_on_one_connection_all_arrive():
    """Round-robin senders (grpc-go's loopy writer, h2 here) fill every stream a little at a time: the
    requests' bytes held across the connection must not wait for each other forever."""
    big_server = EdgeServer(message_bytes_max=2 << 20)
    try:
        client = H2Client(big_server.port)
        size = 2 << 20
        payloads = {}
        for i in range(9):
            stream_id = client.conn.get_next_available_stream_id()
            client.start(stream_id, NEVER)
            payloads[stream_id] = grpc_message(bytes([i]) * size)
        client.flush()
        sent = dict.fromkeys(payloads, 0)
        while any(sent[s] < len(p) for s, p in payloads.items()):
            progressed = False
            for stream_id, payload in payloads.items():
                left = len(payload) - sent[stream_id]
                window = client.conn.local_flow_control_window(stream_id) if left else 0
                chunk = min(left, window, client.conn.max_outbound_frame_size)
                if chunk > 0:
                    end = chunk == left
                    client.conn.send_data(stream_id, payload[sent[stream_id]:][:chunk], end_stream=end)
                    sent[stream_id] += chunk
                    progressed = True
            client.flush()
            if not progressed:
                client.receive(timeout=3)  # window updates; times out if the edge holds them back forever
        calls = big_server.wait_event(CALL, count=9)
        assert sorted(c[4][0] for c in calls) == list(range(9))
        client.close()
    finally:
        big_server.close()


def test_larger_max_frame_size_of_the_client_is_used_for_data(server):
    client = RawClient(server.port, settings={5: 40000, 4: 1 << 20})
    client.window_update(0, 1 << 20)
    stream_id = client.request(BIG, b"200000")
    response = client.response(stream_id)
    assert response.messages == [big_answer(200000)]
    assert max(response.data_frames) == 40000
    client.close()


# ============================================================================ gRPC semantics


def test_unknown_service_is_unimplemented_in_grpc_gos_words(server):
    client = H2Client(server.port)
    response = client.response(client.call("/x.Y/Z", b""))
    assert response.headers[":status"] == "200"
    assert (response.status, response.message) == (12, "unknown service x.Y")
    assert server.events_since() == []
    client.close()


def test_unknown_method_of_a_known_service_is_unimplemented_in_grpc_gos_words(server):
    client = H2Client(server.port)
    response = client.response(client.call("/test.Echo/Nope", b""))
    assert (response.status, response.message) == (12, "unknown method Nope for service test.Echo")
    client.close()


def test_grpc_timeout_on_a_call_never_answered_is_deadline_exceeded_and_cancels_it(server):
    client = H2Client(server.port)
    started = time.monotonic()
    stream_id = client.call(NEVER, b"wait", timeout="50m")
    response = client.response(stream_id)
    assert time.monotonic() - started >= 0.045
    assert (response.status, response.message) == (4, "context deadline exceeded")
    [call] = server.wait_event(CALL)
    [cancel] = server.wait_event(CANCELLED)
    assert cancel[1:3] == call[1:3]
    assert server.do(lambda edge: edge.reply(call[1], call[2], b"late")) == 1
    client.close()


@pytest.mark.parametrize("timeout", ["1x", "123456789S", "S", "-1m"])
def test_malformed_grpc_timeout_is_refused(server, timeout):
    client = H2Client(server.port)
    response = client.response(client.call(ECHO, b"x", timeout=timeout))
    assert response.status == 13 and "malformed grpc-timeout" in response.message
    client.close()


def test_message_over_the_limit_is_resource_exhausted_in_grpc_gos_words(server):
    client = RawClient(server.port)
    stream_id, frames = client.request_frames(ECHO, None, end_stream=False)
    oversized = (MESSAGE_BYTES_MAX + 1)
    client.send_frames(*frames, DataFrame(stream_id, b"\0" + oversized.to_bytes(4, "big") + b"x" * 1000))
    response = client.response(stream_id)
    assert response.status == 8
    assert response.message == f"grpc: received message larger than max ({oversized} vs. {MESSAGE_BYTES_MAX})"
    assert server.events_since() == []
    # the rest of that message is dropped, and the connection goes on
    client.send_frames(DataFrame(stream_id, b"y" * 16000))
    second = client.request(ECHO, b"next")
    assert client.response(second).messages == [b"next"]
    client.close()


def test_compressed_flag_without_grpc_encoding_is_internal(server):
    client = RawClient(server.port)
    stream_id, frames = client.request_frames(ECHO, None, end_stream=False)
    client.send_frames(*frames, DataFrame(stream_id, grpc_message(b"zipped?", compressed=True), flags=["END_STREAM"]))
    response = client.response(stream_id)
    assert (response.status, response.message) == (13, "grpc: compressed flag set with identity or empty encoding")
    assert server.events_since() == []
    client.close()


def test_request_ended_by_trailers_is_a_whole_call(server):
    client = RawClient(server.port)
    stream_id, frames = client.request_frames(ECHO, b"with trailers", end_stream=False)
    client.send_frames(*frames, trailers(client, stream_id))
    response = client.response(stream_id)
    assert (response.status, response.messages) == (0, [b"with trailers"])
    client.close()


def test_trailers_in_the_middle_of_a_message_end_the_call_with_an_error(server):
    client = RawClient(server.port)
    stream_id, frames = client.request_frames(NEVER, None, end_stream=False)
    client.send_frames(*frames, DataFrame(stream_id, grpc_message(b"cut short")[:8]), trailers(client, stream_id))
    response = client.response(stream_id)
    assert (response.status, response.message) == (13, "grpc: error while receiving the request: unexpected EOF")
    assert server.events_since() == []
    client.close()


def test_bidirectional_stream_half_closed_by_trailers(server):
    client = RawClient(server.port)
    stream_id, frames = client.request_frames(BIDI, b"one", end_stream=False)
    client.send_frames(*frames, DataFrame(stream_id, grpc_message(b"two")), trailers(client, stream_id))
    response = client.response(stream_id)
    assert (response.status, response.messages) == (0, [b"one", b"two"])
    assert [e[0] for e in server.events_since()] == [OPEN, MESSAGE, MESSAGE, HALF_CLOSE]
    client.close()


def test_rst_stream_from_the_client_cancels_the_call_and_a_late_answer_is_dropped(server):
    client = H2Client(server.port)
    stream_id = client.call(NEVER, b"then cancel")
    [call] = server.wait_event(CALL)
    client.reset(stream_id, CANCEL)
    [cancel] = server.wait_event(CANCELLED)
    assert cancel[1:3] == call[1:3]
    assert server.do(lambda edge: edge.reply(call[1], call[2], b"late")) == 1
    assert server.do(lambda edge: edge.open_streams) == 0
    response = client.response(client.call(ECHO, b"next"))  # the connection goes on
    assert response.messages == [b"next"]
    client.close()


def test_connection_closed_mid_call_cancels_its_calls_and_streams(server):
    client = H2Client(server.port)
    unary = client.call(NEVER, b"orphan")
    bidi = client.conn.get_next_available_stream_id()
    client.start(bidi, BIDI)
    client.flush()
    [call] = server.wait_event(CALL)
    [opened] = server.wait_event(OPEN)
    client.close()
    cancels = server.wait_event(CANCELLED, count=2)
    assert sorted(c[2] for c in cancels) == [unary, bidi]
    assert {c[1] for c in cancels} == {call[1], opened[1]}
    assert server.do(lambda edge: edge.reply(call[1], call[2], b"late")) == 1
    server.wait_state(lambda edge: edge.connections == 0 and edge.open_streams == 0)


def test_bad_content_type_is_http_415_in_grpc_gos_words(server):
    client = H2Client(server.port)
    response = client.response(client.call(ECHO, b"x", content_type="text/plain"))
    assert response.headers[":status"] == "415"
    assert (response.status, response.message) == (3, 'invalid gRPC request content-type "text/plain"')
    assert server.events_since() == []
    client.close()


def test_method_other_than_post_is_http_405_in_grpc_gos_words(server):
    client = RawClient(server.port)
    headers = [(":method", "GET")] + request_headers(ECHO)[1:]
    client.send_frames(HeadersFrame(1, client.header_block(headers), flags=["END_HEADERS", "END_STREAM"]))
    response = client.response(1)
    assert response.headers[":status"] == "405"
    assert response.status == 13
    assert response.message == 'Received a HEADERS frame with :method "GET" which should be POST'
    client.close()


def test_goaway_lets_calls_in_flight_finish_and_refuses_new_streams(server):
    client = RawClient(server.port)
    in_flight = client.request(NEVER, b"in flight")
    [call] = server.wait_event(CALL)
    server.do(lambda edge: edge.goaway())
    [goaway] = [f for f in client.read_until(lambda f: f.kind == GOAWAY) if f.kind == GOAWAY]
    assert goaway.error_code == NO_ERROR
    assert int.from_bytes(goaway.payload[:4], "big") == in_flight
    late = client.request(ECHO, b"too late")
    frames = client.read_until(lambda f: f.stream == late)
    assert (frames[-1].kind, frames[-1].error_code) == (RST_STREAM, REFUSED_STREAM)
    with pytest.raises(ConnectionRefusedError):
        connect(server.port)
    assert server.do(lambda edge: edge.reply(call[1], call[2], b"answered")) == 0
    response = client.response(in_flight)
    assert (response.status, response.messages) == (0, [b"answered"])
    client.read_to_close()  # with its last stream done, the connection closes
    assert [e[0] for e in server.events_since()] == [CALL]
    client.close()


def test_goaway_closes_a_connection_whose_calls_never_finish_after_closing_ms(server):
    client = RawClient(server.port)
    client.request(NEVER, b"never answered")
    [call] = server.wait_event(CALL)
    server.do(lambda edge: edge.goaway())
    client.read_until(lambda f: f.kind == GOAWAY)
    now_ms = int(time.monotonic() * 1000)
    assert server.do(lambda edge: edge.expire(now_ms + 9000)) == []  # CLOSING_MS (10 s) not yet over
    cancels = server.do(lambda edge: edge.expire(now_ms + 10_500))
    assert [(e[0], e[1], e[2]) for e in cancels] == [(CANCELLED, call[1], call[2])]
    client.read_to_close()
    assert server.do(lambda edge: (edge.connections, edge.open_streams)) == (0, 0)
    client.close()


def test_connections_beyond_connections_max_are_closed_at_once():
    server = EdgeServer(connections_max=2)
    try:
        first, second = H2Client(server.port), H2Client(server.port)
        server.wait_state(lambda edge: edge.connections == 2)
        third = connect(server.port)
        assert third.recv(100) == b""  # closed without a byte
        for client in (first, second):
            assert client.response(client.call(ECHO, b"in")).messages == [b"in"]
            client.close()
        server.wait_state(lambda edge: edge.connections == 0)
        echo_works(server)
    finally:
        server.close()


# ============================================================================ hostile peers


def test_frame_longer_than_16384_is_frame_size_error(server):
    client = RawClient(server.port)
    client.send(raw_frame(DATA, 0, 1, length=16385))
    client.expect_goaway(FRAME_SIZE_ERROR)
    echo_works(server)


def test_broken_hpack_block_is_compression_error(server):
    client = RawClient(server.port)
    client.send(raw_frame(HEADERS, END_HEADERS, 1, b"\x80"))  # indexed field 0: no such index
    client.expect_goaway(COMPRESSION_ERROR)
    client = RawClient(server.port)
    client.send(raw_frame(HEADERS, END_HEADERS, 1, b"\x82\x86\x44\x8f"))  # a truncated literal
    client.expect_goaway(COMPRESSION_ERROR)
    echo_works(server)


def test_oversized_header_list_resets_the_stream_and_the_connection_goes_on(server):
    client = RawClient(server.port)
    big = ("x-big", "a" * 3000)  # enters the dynamic table once, then costs a byte per repeat
    block = client.header_block(request_headers(ECHO, extra=(big,) * 25))
    assert len(block) < 3000  # a small block, a list of 25 x 3037 bytes
    client.send_frames(HeadersFrame(1, block, flags=["END_HEADERS"]),
                       DataFrame(1, grpc_message(b"x"), flags=["END_STREAM"]))
    frames = client.read_until(lambda f: f.stream == 1)
    assert (frames[-1].kind, frames[-1].error_code) == (RST_STREAM, FRAME_SIZE_ERROR)
    # the decoder kept its table in step: the next block refers to the big entry by index
    block = client.header_block(request_headers(ECHO, extra=(big,)))
    assert len(block) < 100
    client.send_frames(HeadersFrame(3, block, flags=["END_HEADERS"]),
                       DataFrame(3, grpc_message(b"fine"), flags=["END_STREAM"]))
    response = client.response(3)
    assert (response.status, response.messages) == (0, [b"fine"])
    assert [e[2] for e in server.events_since()] == [3]
    client.close()


def test_header_list_just_over_the_limit_in_continuations_resets_the_stream(server):
    client = RawClient(server.port)
    block = client.header_block(request_headers(ECHO, extra=(("x-big", "b" * HEADER_LIST_BYTES_MAX),)),
                                huffman=False)
    assert HEADER_LIST_BYTES_MAX < len(block) < HEADER_LIST_BYTES_MAX + 1024
    client.send_frames(*header_frames(1, block, end_stream=True))
    frames = client.read_until(lambda f: f.stream == 1)
    assert (frames[-1].kind, frames[-1].error_code) == (RST_STREAM, FRAME_SIZE_ERROR)
    stream_id = client.request(ECHO, b"next", stream_id=3)
    assert client.response(stream_id).messages == [b"next"]
    client.close()


def test_header_block_far_over_the_limit_is_enhance_your_calm(server):
    client = RawClient(server.port)
    block = client.header_block(request_headers(ECHO, extra=(("x-big", "c" * (2 * HEADER_LIST_BYTES_MAX)),)),
                                huffman=False)
    client.send_frames(*header_frames(1, block, end_stream=True))
    client.expect_goaway(ENHANCE_YOUR_CALM)
    echo_works(server)


def test_continuation_flood_is_enhance_your_calm_and_closed(server):
    client = RawClient(server.port)
    block = client.header_block(request_headers(ECHO))
    flood = [HeadersFrame(1, block[:5])] + [ContinuationFrame(1, b"") for _ in range(1000)]
    try:
        client.send_frames(*flood)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the edge may close before it has read them all
    client.expect_goaway(ENHANCE_YOUR_CALM)
    assert server.events_since() == []
    echo_works(server)


def test_settings_flood_is_enhance_your_calm(server):
    client = RawClient(server.port)
    try:
        client.send_frames(*[SettingsFrame(0, settings={4: 65535 + i}) for i in range(1000)])
    except (BrokenPipeError, ConnectionResetError):
        pass
    frames = client.read_to_close()
    acks = [f for f in frames if f.kind == SETTINGS and f.flags & ACK]
    assert 90 <= len(acks) < 300  # the burst allowed (100, refilled at 100 a second), then
    assert [f.error_code for f in frames if f.kind == GOAWAY] == [ENHANCE_YOUR_CALM]
    echo_works(server)


def test_rapid_reset_flood_is_enhance_your_calm_and_every_call_seen_is_cancelled(server):
    client = RawClient(server.port)
    frames = []
    for i in range(5000):
        stream_id, request = client.request_frames(NEVER, b"r")
        frames += request + [RstStreamFrame(stream_id, CANCEL)]
    try:
        client.send_frames(*frames)
    except (BrokenPipeError, ConnectionResetError):
        pass
    client.expect_goaway(ENHANCE_YOUR_CALM)
    server.wait_state(lambda edge: edge.connections == 0)
    events = server.events_since()
    calls = [e[2] for e in events if e[0] == CALL]
    cancels = [e[2] for e in events if e[0] == CANCELLED]
    assert 900 <= len(calls) < 2500  # the burst of resets allowed (1000, refilled at 1000 a second), then
    assert sorted(calls) == sorted(cancels), "every call the application saw was cancelled"
    assert server.do(lambda edge: edge.open_streams) == 0
    echo_works(server)


def test_ping_flood_from_a_client_that_never_reads_is_bounded_and_others_are_served(server):
    flooder = RawClient(server.port, rcvbuf=4096)
    flooder.sock.setblocking(False)
    ping = PingFrame(0, b"flooding").serialize()
    pings = memoryview(ping * 4096)
    view, sent = pings, 0
    deadline = time.monotonic() + 20
    while sent < 64 << 20:
        try:
            count = flooder.sock.send(view)
        except BlockingIOError:
            # The kernel's buffers are full: the edge has stopped reading if it reads nothing for a second
            # (and it may stop only once OUTPUT_BYTES_PAUSE of answers wait: before that, a quiet second is
            # only a busy machine).
            _, writable, _ = select.select([], [flooder.sock], [], 1.0)
            if not writable and sent > 8 << 20:
                break
            assert time.monotonic() < deadline, f"the edge stopped reading after {sent} bytes"
            continue
        sent += count
        view = view[count:] if count < len(view) else pings
    # OUTPUT_BYTES_PAUSE (8 MiB) of ACKs unread, then the edge stops reading; the kernel's socket buffers
    # hold the rest of what was sent.
    assert sent < 40 << 20, f"the edge kept reading a client that never reads ({sent} bytes of PINGs)"
    assert sent > 8 << 20, "the edge stopped reading before its output reached OUTPUT_BYTES_PAUSE"
    echo_works(server, b"served while another connection floods")
    # The flooder reads at last: the edge resumes it, and answers a call sent behind the flood.
    flooder.sock.setblocking(True)
    flooder.read_until(lambda f: f.kind == SETTINGS and f.flags & ACK)
    rest_of_frame = bytes(view[:len(view) % len(ping)])
    pings_sent = (sent + len(rest_of_frame)) // len(ping)
    acks, request_sent = 0, False
    ack = PingFrame(0, b"flooding", flags=["ACK"]).serialize()
    while True:
        buffer, at = flooder.buffer, 0
        while len(buffer) - at >= 17 and buffer[at + 3] == PING:
            assert buffer[at:at + 17] == ack
            at += 17
        del buffer[:at]
        acks += at // 17
        if len(buffer) >= 9 and buffer[3] != PING:
            break
        if not request_sent and acks * 2 >= pings_sent:
            _, frames = flooder.request_frames(ECHO, b"after the flood")
            flooder.send(rest_of_frame + b"".join(f.serialize() for f in frames))
            request_sent = True
        flooder._fill(5)
    assert acks == pings_sent, "every PING answered, in order, before the call behind them"
    response = flooder.response(1)
    assert (response.status, response.messages) == (0, [b"after the flood"])
    flooder.close()


def test_a_client_that_grants_no_window_is_read_no_more_once_its_answers_pile_up(server):
    """Answers held back by a zero stream window count against OUTPUT_BYTES_PAUSE as written
    ones do: the edge stops taking requests from a client that never opens its windows."""
    greedy = RawClient(server.port, settings={4: 0})  # INITIAL_WINDOW_SIZE 0: no DATA may come to it
    for _ in range(16):  # one at a time, each taken in (or not) by a poll of its own
        greedy.request(BIG, str(1 << 20).encode())
        server.settle()
    answered = [result for result in server.results if result[0] == "reply"]
    # Each 1 MiB answer (and its 5-byte prefix) waits whole in its stream; the eighth takes the backlog
    # past 8 MiB, and the edge reads nothing more from that client: the rest stay in the kernel's buffers.
    assert len(answered) == 8, f"{len(answered)} answers of 1 MiB queued for a client with no window"
    echo_works(server, b"others are served meanwhile")
    greedy.close()


def test_half_open_clients_do_not_block_others(server):
    half_preface = connect(server.port)
    half_preface.sendall(PREFACE[:12])
    silent = connect(server.port)
    half_frame = RawClient(server.port)
    half_frame.send(raw_frame(HEADERS, END_HEADERS, 1, b"\x83", length=40)[:12])
    server.wait_state(lambda edge: edge.connections == 3)
    echo_works(server, b"not blocked")
    half_preface.setblocking(False)
    with pytest.raises(BlockingIOError):
        half_preface.recv(100)  # no server preface before the client's is whole
    frames = half_frame.read_until(lambda f: f.kind == WINDOW_UPDATE)
    assert [f.kind for f in frames] == [SETTINGS, WINDOW_UPDATE]
    for sock in (half_preface, silent, half_frame.sock):
        sock.close()
    server.wait_state(lambda edge: edge.connections == 0)


def test_client_that_stops_reading_is_closed_after_stalled_ms_and_its_calls_cancelled(server):
    client = RawClient(server.port, settings={4: 2**31 - 1}, rcvbuf=4096)
    client.window_update(0, 2**31 - 1 - 65535)
    never = client.request(NEVER, b"pending")
    [pending] = server.wait_event(CALL)
    client.request(BIG, b"%d" % (16 << 20))  # all of it allowed by the windows, none of it read
    server.wait_event(CALL, count=2)
    server.settle()  # the flush that found the output over OUTPUT_BYTES_PAUSE
    now_ms = int(time.monotonic() * 1000)
    assert server.do(lambda edge: edge.expire(now_ms + 50_000)) == []
    assert server.do(lambda edge: edge.connections) == 1
    cancels = server.do(lambda edge: edge.expire(now_ms + 61_000))  # STALLED_MS (60 s) over
    assert [(e[0], e[1], e[2]) for e in cancels] == [(CANCELLED, pending[1], never)]
    assert server.do(lambda edge: (edge.connections, edge.open_streams)) == (0, 0)
    client.close()
    echo_works(server)


PROTOCOL_VIOLATIONS = {
    "DATA on stream 0": ([raw_frame(DATA, 0, 0, b"x")], PROTOCOL_ERROR),
    "HEADERS on stream 0": ([raw_frame(HEADERS, END_HEADERS, 0, b"\x82")], PROTOCOL_ERROR),
    "HEADERS with an even stream id": ([raw_frame(HEADERS, END_HEADERS, 2, b"\x83\x86\x84")], PROTOCOL_ERROR),
    "HEADERS with an even stream id below the last": (
        [raw_frame(HEADERS, END_HEADERS | END_STREAM, 3, b"\x83\x86\x84"), raw_frame(HEADERS, END_HEADERS, 2, b"\x83")],
        PROTOCOL_ERROR),
    "PUSH_PROMISE from the client": ([raw_frame(PUSH_PROMISE, END_HEADERS, 1, b"\0\0\0\2\x82")], PROTOCOL_ERROR),
    "WINDOW_UPDATE of 0 on the connection": ([raw_frame(WINDOW_UPDATE, 0, 0, b"\0\0\0\0")], PROTOCOL_ERROR),
    "connection window over 2^31-1": ([raw_frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 2**31 - 1))],
                                      FLOW_CONTROL_ERROR),
    "INITIAL_WINDOW_SIZE over 2^31-1": ([raw_frame(SETTINGS, 0, 0, settings_payload({4: 2**31}))],
                                        FLOW_CONTROL_ERROR),
    "ENABLE_PUSH of 2": ([raw_frame(SETTINGS, 0, 0, settings_payload({2: 2}))], PROTOCOL_ERROR),
    "MAX_FRAME_SIZE below 16384": ([raw_frame(SETTINGS, 0, 0, settings_payload({5: 100}))], PROTOCOL_ERROR),
    "SETTINGS length not a multiple of 6": ([raw_frame(SETTINGS, 0, 0, b"\0\4\0\0\0")], FRAME_SIZE_ERROR),
    "SETTINGS ACK with a payload": ([raw_frame(SETTINGS, ACK, 0, settings_payload({4: 1}))], FRAME_SIZE_ERROR),
    "SETTINGS on a stream": ([raw_frame(SETTINGS, 0, 1, b"")], PROTOCOL_ERROR),
    "PING of 7 bytes": ([raw_frame(PING, 0, 0, b"1234567")], FRAME_SIZE_ERROR),
    "PING on a stream": ([raw_frame(PING, 0, 1, b"12345678")], PROTOCOL_ERROR),
    "RST_STREAM on an idle stream": ([raw_frame(RST_STREAM, 0, 5, b"\0\0\0\x08")], PROTOCOL_ERROR),
    "RST_STREAM of 3 bytes": ([raw_frame(RST_STREAM, 0, 1, b"\0\0\0")], FRAME_SIZE_ERROR),
    "WINDOW_UPDATE on an idle stream": ([raw_frame(WINDOW_UPDATE, 0, 7, b"\0\0\1\0")], PROTOCOL_ERROR),
    "WINDOW_UPDATE of 3 bytes": ([raw_frame(WINDOW_UPDATE, 0, 0, b"\0\0\1")], FRAME_SIZE_ERROR),
    "DATA on an idle stream": ([raw_frame(DATA, 0, 9, b"x")], PROTOCOL_ERROR),
    "CONTINUATION without HEADERS": ([raw_frame(CONTINUATION, END_HEADERS, 1, b"\x82")], PROTOCOL_ERROR),
    "a PING inside a header block": ([raw_frame(HEADERS, 0, 1, b"\x83"), raw_frame(PING, 0, 0, b"12345678")],
                                     PROTOCOL_ERROR),
    "PRIORITY on stream 0": ([raw_frame(PRIORITY, 0, 0, b"\0\0\0\1\x10")], PROTOCOL_ERROR),
    "GOAWAY on a stream": ([raw_frame(GOAWAY, 0, 1, b"\0" * 8)], PROTOCOL_ERROR),
    "DATA whose padding is longer than it": ([raw_frame(HEADERS, END_HEADERS, 1, b"\x83\x86\x84"),
                                              raw_frame(DATA, PADDED, 1, b"\x09abc")], PROTOCOL_ERROR),
}


@pytest.mark.parametrize("violation", sorted(PROTOCOL_VIOLATIONS))
def test_protocol_violations_get_the_goaway_code_rfc_9113_names(server, violation):
    frames, code = PROTOCOL_VIOLATIONS[violation]
    client = RawClient(server.port)
    client.send(b"".join(frames))
    client.expect_goaway(code)
    server.wait_state(lambda edge: edge.connections == 0)


@pytest.mark.parametrize("value", ["a\0token\0forged", "a\r\nb", "a\nb"])
def test_field_value_with_nul_cr_or_lf_is_a_malformed_request(server, value):
    """RFC 9113 8.2.1. A NUL would also break the metadata's name NUL value NUL framing: the application would
    see a "token" the client never sent as one."""
    client = RawClient(server.port)
    client.send_frames(*request_frames(client.encoder, 1, ECHO, b"x", extra=(("hasleader", value),)))
    frames = client.read_until(lambda f: f.stream == 1)
    assert (frames[-1].kind, frames[-1].error_code) == (RST_STREAM, PROTOCOL_ERROR)
    assert client.response(client.request(ECHO, b"ok", stream_id=3)).messages == [b"ok"]
    assert [e[5] for e in server.events_since()] == [()]
    client.close()


def test_stream_window_over_2_31_is_a_stream_error_and_cancels_the_call(server):
    client = RawClient(server.port)
    stream_id = client.request(NEVER, b"w")
    [call] = server.wait_event(CALL)
    client.window_update(stream_id, 2**31 - 1)
    frames = client.read_until(lambda f: f.stream == stream_id)
    assert (frames[-1].kind, frames[-1].error_code) == (RST_STREAM, FLOW_CONTROL_ERROR)
    [cancel] = server.wait_event(CANCELLED)
    assert cancel[1:3] == call[1:3]
    assert client.response(client.request(ECHO, b"ok")).messages == [b"ok"]
    client.close()


def test_data_after_the_client_ended_its_stream_is_stream_closed_and_cancels(server):
    client = RawClient(server.port)
    stream_id = client.request(NEVER, b"done")
    [call] = server.wait_event(CALL)
    client.send_frames(DataFrame(stream_id, b"more"))
    frames = client.read_until(lambda f: f.stream == stream_id)
    assert (frames[-1].kind, frames[-1].error_code) == (RST_STREAM, STREAM_CLOSED)
    [cancel] = server.wait_event(CANCELLED)
    assert cancel[1:3] == call[1:3]
    assert server.do(lambda edge: edge.reply(call[1], call[2], b"late")) == 1
    client.close()


def test_headers_after_the_client_ended_its_stream_is_stream_closed_and_cancels(server):
    client = RawClient(server.port)
    stream_id = client.request(NEVER, b"done")
    [call] = server.wait_event(CALL)
    client.send_frames(trailers(client, stream_id))
    frames = client.read_until(lambda f: f.stream == stream_id)
    assert (frames[-1].kind, frames[-1].error_code) == (RST_STREAM, STREAM_CLOSED)
    [cancel] = server.wait_event(CANCELLED)
    assert cancel[1:3] == call[1:3]
    assert server.do(lambda edge: edge.reply(call[1], call[2], b"late")) == 1
    client.close()


FRAME_TYPES = st.integers(min_value=0, max_value=12)


@st.composite
def frame_soup(draw):
    """Frames of any type, flags and small stream id, payloads random or a valid request's pieces."""
    frames = []
    for _ in range(draw(st.integers(min_value=1, max_value=8))):
        kind = draw(FRAME_TYPES)
        flags = draw(st.integers(min_value=0, max_value=255))
        stream_id = draw(st.sampled_from([0, 1, 2, 3, 5, 2**31 - 1]))
        payload = draw(st.one_of(
            st.binary(max_size=40),
            st.sampled_from([b"\x83\x86\x84", b"\0\0\0\0\x05hello", b"\0\0\0\x08", b"\0\0\x10\0", b"\x82" * 8])))
        frames.append(raw_frame(kind, flags, stream_id, payload))
    return b"".join(frames)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.one_of(st.binary(min_size=1, max_size=300), frame_soup()))
def test_random_bytes_after_the_preface_never_crash_the_edge(shared_server, garbage):
    client = RawClient(shared_server.port)
    try:
        client.send(garbage)
    except (BrokenPipeError, ConnectionResetError):
        pass
    shared_server.settle()
    client.close()
    assert shared_server.alive()
    echo_works(shared_server)
    shared_server.wait_state(lambda edge: edge.connections == 0)


# ============================================================================ one port, two protocols


def test_http1_request_is_handed_over_with_its_fd_and_bytes(server):
    request = b"GET /health HTTP/1.1\r\nHost: edge.test\r\n\r\n"
    client = connect(server.port)
    client.sendall(request)
    [event] = server.wait_event(HTTP1)
    _, _, fd, _, data, _ = event
    assert data == request
    handed = socket.socket(fileno=fd)
    handed.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    handed.close()
    answer = b""
    while chunk := client.recv(1000):
        answer += chunk
    assert answer == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    assert server.do(lambda edge: edge.connections) == 0
    client.close()


def test_http1_request_arriving_a_byte_at_a_time_is_handed_over_at_its_first_differing_byte(server):
    request = b"POST /v3/kv/range HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"
    client = connect(server.port)
    client.sendall(request[:1])
    server.settle()
    assert server.events_since() == []  # "P" could still be the HTTP/2 preface
    client.sendall(request[1:2])
    [event] = server.wait_event(HTTP1)
    assert event[4] == b"PO"
    handed = socket.socket(fileno=event[2])
    client.sendall(request[2:])
    rest = b""
    handed.settimeout(5)
    while len(rest) < len(request) - 2:
        rest += handed.recv(1000)
    assert rest == request[2:]
    handed.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
    handed.close()
    assert client.recv(1000) == b"HTTP/1.1 204 No Content\r\n\r\n"
    client.close()
