"""The router's client port in native code: HTTP/2 and gRPC framing (native/src/h2edge.c).

`Edge` owns a listening socket and an epoll set. Its `fileno()` is that
epoll fd: register it with the event loop, and when it is readable call
`poll()`, which returns everything the sockets brought as one list of event
tuples (Python is entered once per poll, not per call). Answers only queue
bytes; `flush()` writes them, once per turn of the loop.

Events, by their first item:
    (CALL, conn, stream, method, data, metadata)    a unary or server-streaming call, request whole
    (OPEN, conn, stream, method, None, metadata)    a bidirectional stream opened
    (MESSAGE, conn, stream, -1, data, ())           a request message on a bidirectional stream
    (HALF_CLOSE, conn, stream, -1, None, ())        the client sent its last message
    (CANCEL, conn, stream, -1, None, ())            reset by the client, deadline passed, or connection gone
    (HTTP1, conn, fd, -1, data, ())                 an HTTP/1 connection handed over, with the bytes read
    (WRITABLE, conn, stream, -1, None, ())          a stream's queue fell below what want_writable named
`metadata` is a tuple of (name, value) strings: the headers named by
add_metadata_name that the call carried.

TLS: `use_tls()` before the first poll serves every connection over TLS with
the OpenSSL Python's ssl module links (native/src/tls.c says why it is found
at run time); `peer_common_name(conn)` is the Common Name of the client
certificate that connection's handshake verified.
"""

import _ssl

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t

cdef extern from "h2edge.h":
    ctypedef struct edge_server:
        pass
    ctypedef struct edge_event:
        int kind
        uint64_t conn
        uint32_t stream
        int32_t method
        int fd
        const uint8_t *data
        size_t data_len
        const uint8_t *metadata
        size_t metadata_len
    ctypedef int (*edge_event_fn)(void *context, const edge_event *event) noexcept
    ctypedef struct tls_server:
        pass
    ctypedef struct edge_limits:
        size_t message_bytes_max
        size_t header_list_bytes_max
        uint32_t connections_max

    edge_server *edge_server_new(const char *host, int port, int reuse_port, const edge_limits *limits,
                                 char *error, size_t error_len)
    void edge_server_free(edge_server *server)
    void edge_use_tls(edge_server *server, tls_server *tls)
    const char *edge_peer_common_name(edge_server *server, uint64_t conn)
    int edge_epoll_fd(const edge_server *server)
    int edge_listen_port(const edge_server *server)
    int edge_add_method(edge_server *server, const char *path, int kind)
    int edge_add_metadata_name(edge_server *server, const char *name)
    int edge_poll(edge_server *server, int64_t now_ms, edge_event_fn on_event, void *context)
    int edge_flush(edge_server *server, edge_event_fn on_event, void *context)
    int edge_expire(edge_server *server, int64_t now_ms, edge_event_fn on_event, void *context)
    int edge_reply(edge_server *server, uint64_t conn, uint32_t stream, const uint8_t *message, size_t len)
    int edge_send_message(edge_server *server, uint64_t conn, uint32_t stream, const uint8_t *message, size_t len)
    int edge_finish(edge_server *server, uint64_t conn, uint32_t stream, int code, const uint8_t *message,
                    size_t message_len)
    size_t edge_stream_queued(edge_server *server, uint64_t conn, uint32_t stream)
    int edge_want_writable(edge_server *server, uint64_t conn, uint32_t stream, size_t bytes)
    void edge_goaway(edge_server *server)
    size_t edge_open_streams(const edge_server *server)
    size_t edge_connection_count(const edge_server *server)

cdef extern from "tls.h":
    int tls_load(const char *library, char *error, size_t error_len)
    tls_server *tls_server_new(const char *cert_file, const char *key_file, const char *trusted_ca_file,
                               int client_cert_auth, char *error, size_t error_len)

UNARY = 0
SERVER_STREAM = 1
BIDI_STREAM = 2

CALL = 1
OPEN = 2
MESSAGE = 3
HALF_CLOSE = 4
CANCEL = 5
HTTP1 = 6
WRITABLE = 7

cdef tuple NO_METADATA = ()


cdef tuple parse_metadata(const uint8_t *data, size_t length):
    if length == 0:
        return NO_METADATA
    parts = PyBytes_FromStringAndSize(<const char *>data, length - 1).split(b"\0")
    return tuple((parts[i].decode("latin-1"), parts[i + 1].decode("latin-1")) for i in range(0, len(parts) - 1, 2))


cdef int collect(void *context, const edge_event *event) noexcept:
    cdef list events = <list>context
    try:
        data = None
        if event.data != NULL:
            data = PyBytes_FromStringAndSize(<const char *>event.data, event.data_len)
        if event.kind == HTTP1:
            events.append((HTTP1, event.conn, event.fd, -1, data, NO_METADATA))
        else:
            events.append((event.kind, event.conn, event.stream, event.method, data,
                           parse_metadata(event.metadata, event.metadata_len)))
    except BaseException:
        return 1  # out of memory: the poll stops; what was read stays for the next one
    return 0


cdef class Edge:
    cdef edge_server *server

    def __cinit__(self, str host, int port, bint reuse_port=False, size_t message_bytes_max=2 * 1024 * 1024,
                  size_t header_list_bytes_max=64 * 1024, uint32_t connections_max=10000):
        cdef edge_limits limits
        cdef char error[256]
        limits.message_bytes_max = message_bytes_max
        limits.header_list_bytes_max = header_list_bytes_max
        limits.connections_max = connections_max
        error[0] = 0
        encoded = host.strip("[]").encode()
        self.server = edge_server_new(encoded, port, reuse_port, &limits, error, sizeof(error))
        if self.server == NULL:
            raise OSError(error.decode() or f"cannot listen on {host}:{port}")

    def __dealloc__(self):
        if self.server != NULL:
            edge_server_free(self.server)
            self.server = NULL

    def close(self):
        """Close every connection and the listening socket (calls in flight are dropped)."""
        if self.server != NULL:
            edge_server_free(self.server)
            self.server = NULL

    cdef edge_server *live(self) except NULL:
        if self.server == NULL:
            raise ValueError("the edge is closed")
        return self.server

    def fileno(self) -> int:
        return edge_epoll_fd(self.live())

    @property
    def port(self) -> int:
        return edge_listen_port(self.live())

    @property
    def open_streams(self) -> int:
        return edge_open_streams(self.live())

    @property
    def connections(self) -> int:
        return edge_connection_count(self.live())

    def use_tls(self, str cert_file, str key_file, str trusted_ca_file=None, bint client_cert_auth=False):
        """Serve TLS with this certificate chain and key. With `trusted_ca_file` or
        `client_cert_auth`, every client must present a certificate that verifies against
        `trusted_ca_file` (etcd's rule). ValueError naming the file that would not load."""
        cdef char error[512]
        cdef bytes library_path
        cdef tls_server *tls
        error[0] = 0
        # Python's _ssl links libssl: dlsym through it finds libssl's functions (or, where _ssl
        # is built into the interpreter, they are the process's own).
        library = getattr(_ssl, "__file__", None)
        library_path = library.encode() if library else None
        if tls_load(<const char *>library_path if library_path is not None else NULL, error, sizeof(error)):
            raise OSError(error.decode(errors="replace"))
        ca = trusted_ca_file.encode() if trusted_ca_file else b""
        tls = tls_server_new(cert_file.encode(), key_file.encode(), ca, client_cert_auth, error, sizeof(error))
        if tls == NULL:
            raise ValueError(error.decode(errors="replace"))
        edge_use_tls(self.live(), tls)

    def peer_common_name(self, uint64_t conn):
        """The Common Name of the client certificate `conn`'s TLS handshake verified; None
        without one (plaintext, client certificates not required, or the connection is gone)."""
        cdef const char *name = edge_peer_common_name(self.live(), conn)
        return None if name == NULL else name.decode("utf-8", "replace")

    def add_method(self, str path, int kind) -> int:
        index = edge_add_method(self.live(), path.encode(), kind)
        if index < 0:
            raise MemoryError()
        return index

    def add_metadata_name(self, str name):
        if edge_add_metadata_name(self.live(), name.lower().encode()):
            raise MemoryError()

    def poll(self, int64_t now_ms) -> list:
        cdef list events = []
        edge_poll(self.live(), now_ms, collect, <void *>events)
        return events

    def flush(self) -> list:
        cdef list events = []
        edge_flush(self.live(), collect, <void *>events)
        return events

    def expire(self, int64_t now_ms) -> list:
        cdef list events = []
        edge_expire(self.live(), now_ms, collect, <void *>events)
        return events

    def reply(self, uint64_t conn, uint32_t stream, bytes message) -> int:
        """A unary call's answer, with status OK. 1 if the call is gone."""
        result = edge_reply(self.live(), conn, stream, <const uint8_t *>PyBytes_AS_STRING(message),
                            PyBytes_GET_SIZE(message))
        if result < 0:
            raise MemoryError()
        return result

    def send(self, uint64_t conn, uint32_t stream, bytes message) -> int:
        """One message on a stream. 1 if the stream is gone."""
        result = edge_send_message(self.live(), conn, stream, <const uint8_t *>PyBytes_AS_STRING(message),
                                   PyBytes_GET_SIZE(message))
        if result < 0:
            raise MemoryError()
        return result

    def finish(self, uint64_t conn, uint32_t stream, int code, str message="") -> int:
        """End a call with a gRPC status (Trailers-Only if nothing was sent). 1 if it is gone."""
        encoded = message.encode()
        result = edge_finish(self.live(), conn, stream, code, encoded, len(encoded))
        if result < 0:
            raise MemoryError()
        return result

    def queued(self, uint64_t conn, uint32_t stream) -> int:
        return edge_stream_queued(self.live(), conn, stream)

    def want_writable(self, uint64_t conn, uint32_t stream, size_t below) -> int:
        return edge_want_writable(self.live(), conn, stream, below)

    def goaway(self):
        """Stop taking connections and streams; those in flight may finish."""
        edge_goaway(self.live())
