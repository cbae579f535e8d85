/* The router's client port: HTTP/2 and gRPC framing over epoll, in one thread.
 *
 * See h2edge.c for the theory of operation. The application (native/edge.pyx)
 * registers its gRPC methods, then alternates edge_poll() (read what the
 * sockets hold, hand complete calls and stream messages to a callback) and
 * edge_flush() (write what its answers queued). Connections and streams are
 * named by ids that stay valid, and unique, after they close: an answer to a
 * call whose client has gone is dropped.
 */
#ifndef TESSERA_H2EDGE_H
#define TESSERA_H2EDGE_H

#include <stddef.h>
#include <stdint.h>

#include "tls.h"

typedef struct edge_server edge_server;

enum edge_method_kind {
    EDGE_UNARY = 0,          /* one request, one answer */
    EDGE_SERVER_STREAM = 1,  /* one request, answers until the server finishes */
    EDGE_BIDI_STREAM = 2,    /* requests and answers until either side finishes */
};

enum edge_event_kind {
    EDGE_EVENT_CALL = 1,        /* a unary or server-streaming call's request is whole: method, data, metadata */
    EDGE_EVENT_OPEN = 2,        /* a bidirectional stream opened: method, metadata */
    EDGE_EVENT_MESSAGE = 3,     /* one request message on a bidirectional stream: data */
    EDGE_EVENT_HALF_CLOSE = 4,  /* the client sent its last request message */
    EDGE_EVENT_CANCEL = 5,      /* the client reset the stream, its deadline passed, or its connection closed */
    EDGE_EVENT_HTTP1 = 6,       /* an HTTP/1 connection, handed over: fd and the bytes read from it (data);
                                   over TLS, fd is a plaintext socket the edge relays through the TLS one */
    EDGE_EVENT_WRITABLE = 7,    /* a stream that had too much queued has room again (edge_want_writable) */
};

typedef struct edge_event {
    int kind;
    uint64_t conn;      /* connection id */
    uint32_t stream;    /* stream id on that connection */
    int32_t method;     /* CALL, OPEN: the index edge_add_method returned */
    int fd;             /* HTTP1 */
    const uint8_t *data;
    size_t data_len;
    /* CALL, OPEN: the metadata asked for with edge_add_metadata_name, as
       name NUL value NUL pairs; empty when the call carried none. */
    const uint8_t *metadata;
    size_t metadata_len;
} edge_event;

/* Return 0 to go on; non-zero ends the poll or flush early with that value. */
typedef int (*edge_event_fn)(void *context, const edge_event *event);

typedef struct edge_limits {
    size_t message_bytes_max;      /* a request message larger is RESOURCE_EXHAUSTED (grpc-go's words) */
    size_t header_list_bytes_max;  /* SETTINGS_MAX_HEADER_LIST_SIZE we advertise and enforce */
    uint32_t connections_max;      /* accepted beyond this are closed at once */
} edge_limits;

/* Listen on host:port (an IPv4 or IPv6 literal, or "localhost"); SO_REUSEPORT when reuse_port.
   NULL with errno set on failure; `error` gets a message. */
edge_server *edge_server_new(const char *host, int port, int reuse_port, const edge_limits *limits,
                             char *error, size_t error_len);
void edge_server_free(edge_server *server);
int edge_epoll_fd(const edge_server *server);   /* readable when edge_poll has work */
int edge_listen_port(const edge_server *server);

/* Serve TLS on every connection accepted from now on; the edge owns `tls` (tls.h) from here. */
void edge_use_tls(edge_server *server, tls_server *tls);
/* The Common Name of the client certificate the connection's TLS handshake verified, or NULL
   (plaintext, no client certificate asked for, or the connection is gone). */
const char *edge_peer_common_name(edge_server *server, uint64_t conn);

/* Register "/package.Service/Method"; returns its index (>= 0), or -1. */
int edge_add_method(edge_server *server, const char *path, int kind);
/* A request header the application wants to see (lowercase), e.g. "hasleader", "token". */
int edge_add_metadata_name(edge_server *server, const char *name);

/* Accept, read and parse what is ready, without blocking; events go to `on_event`.
   `now_ms`: a monotonic clock, for deadlines and flood limits. */
int edge_poll(edge_server *server, int64_t now_ms, edge_event_fn on_event, void *context);
/* Write what is queued, without blocking. May report EDGE_EVENT_WRITABLE. */
int edge_flush(edge_server *server, edge_event_fn on_event, void *context);
/* Cancel calls past their grpc-timeout (answered DEADLINE_EXCEEDED, reported as CANCEL) and close
   connections that would not finish closing. */
int edge_expire(edge_server *server, int64_t now_ms, edge_event_fn on_event, void *context);

/* Answers. Each returns 0 when queued, 1 when the stream or connection is gone (the answer is
   dropped), -1 on a bad argument or no memory. */
int edge_reply(edge_server *server, uint64_t conn, uint32_t stream, const uint8_t *message, size_t len);
int edge_send_message(edge_server *server, uint64_t conn, uint32_t stream, const uint8_t *message, size_t len);
int edge_finish(edge_server *server, uint64_t conn, uint32_t stream, int code, const uint8_t *message,
                size_t message_len);
/* Bytes queued on the stream that flow control has not let out yet (0 for a gone stream). */
size_t edge_stream_queued(edge_server *server, uint64_t conn, uint32_t stream);
/* Report EDGE_EVENT_WRITABLE once the stream's queue drops below `bytes`. */
int edge_want_writable(edge_server *server, uint64_t conn, uint32_t stream, size_t bytes);

/* Graceful stop: GOAWAY to every connection, no new streams or connections; calls in flight
   may still be answered. edge_open_streams() says how many remain. */
void edge_goaway(edge_server *server);
size_t edge_open_streams(const edge_server *server);
size_t edge_connection_count(const edge_server *server);

#endif
