/* The router's client port: HTTP/2 (RFC 9113) and gRPC framing over epoll.
 *
 * Theory of operation
 * -------------------
 * One edge_server owns a listening socket and an epoll set holding it and
 * every accepted connection. The application registers the epoll fd with its
 * event loop; when it is readable it calls edge_poll(), which accepts, reads
 * every ready socket (at most READ_BYTES_PER_POLL each, for fairness), parses
 * the frames, answers the protocol's own frames (SETTINGS, PING, WINDOW_UPDATE)
 * and hands the application what it must act on through one callback: a
 * unary call once its request is whole, a stream's open and its messages, a
 * cancel. Python is entered once per poll, never per frame. Answers
 * (edge_reply, edge_send_message, edge_finish) only queue bytes; edge_flush()
 * writes each connection's queue with one write, once per turn of the loop.
 *
 * One port, two protocols (etcd's cmux): a connection whose first bytes are
 * not the HTTP/2 client preface is handed to the application as an HTTP/1
 * connection (EDGE_EVENT_HTTP1: the fd and the bytes read so far), and the
 * edge forgets it: the JSON gateway, /metrics, /health and /version are served
 * there in Python.
 *
 * Flow control. Inbound: the windows of each stream and of the connection are
 * given back as bytes arrive, as grpc-go does: a message is bounded by
 * message_bytes_max, and holding the connection's window until messages were
 * whole would let a client's concurrent large requests (grpc-go sends its
 * streams' DATA round-robin) fill it with partial messages and wait forever
 * (tests/native/test_native_edge.py: many large requests in parallel). What one
 * connection's partial messages hold is therefore bounded per stream only, by
 * message_bytes_max, and by STREAMS_PER_CONNECTION_MAX. Outbound: answers
 * wait in their stream's queue for both windows; streams with data waiting
 * take turns a frame at a time, so one large Range answer or watch cannot
 * starve the others.
 *
 * Limits and hostile peers. Every buffer has a named bound. A connection whose
 * peer does not read what we write, or grants no window for it
 * (OUTPUT_BYTES_PAUSE queued in all), is no longer read, so a PING or SETTINGS flood from a peer that does not read costs a
 * bounded amount of memory; it is closed if it stays stalled STALLED_MS. A peer
 * that resets more in-progress streams than RESETS_PER_SECOND allows (the rapid
 * reset attack, CVE-2023-44487), changes SETTINGS faster than SETTINGS_PER_SECOND,
 * or sends more than CONTINUATION_FRAMES_MAX CONTINUATION frames or a header
 * block above the header list limit in one block, gets GOAWAY
 * ENHANCE_YOUR_CALM and is closed. Protocol errors get the GOAWAY code RFC 9113
 * names. Keepalive PINGs are always answered, never counted against the peer
 * (etcdctl pings every 2 s, the apiserver every 30 s; grpc-go's bandwidth
 * probes more often).
 *
 * TLS. The edge reads and writes plaintext through conn_read()/conn_write()
 * only (and conn_fail's last write). With edge_use_tls, every connection gets
 * a TLS object on its non-blocking fd (native/src/tls.c: the process's own
 * OpenSSL, found at run time), and its first state is the handshake
 * (CONN_TLS_HANDSHAKE; ALPN below); then the connection goes on
 * as a plaintext one does. A plaintext connection never reaches TLS code: one
 * test of a pointer in each of those functions. A client that does not finish
 * its handshake within TLS_HANDSHAKE_MS is closed. The Common Name of a
 * verified client certificate is kept per connection (edge_peer_common_name).
 * HTTP/1 over TLS cannot be handed over as its fd (the application could not
 * continue the TLS session), so the application gets one end of a socket pair
 * instead (EDGE_EVENT_HTTP1 as ever) and the edge relays plaintext between it
 * and the TLS connection (CONN_RELAY: c->in towards the application, c->out
 * towards the client, each bounded by RELAY_BYTES_MAX). ALPN picks the
 * protocol a client offers: "http/1.1" when offered (browsers, curl: the
 * gateway), else "h2" (gRPC clients offer only "h2").
 */
#define _GNU_SOURCE
#include "h2edge.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "hpack.h"
#include "tls.h"

/* --- limits, each with why ------------------------------------------------------------- */

#define PREFACE "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define PREFACE_BYTES 24
#define FRAME_HEADER_BYTES 9
/* The SETTINGS_MAX_FRAME_SIZE we advertise: the default; gRPC clients send 16 KiB frames anyway. */
#define FRAME_BYTES_MAX 16384
/* Our SETTINGS_INITIAL_WINDOW_SIZE: a 1.5 MiB Put arrives in two rounds of window updates at most. */
#define STREAM_WINDOW_BYTES (1u << 20)
/* The connection's receive window, given back a quarter at a time as bytes arrive. */
#define CONNECTION_WINDOW_BYTES (16u << 20)
#define WINDOW_MAX 0x7fffffffLL
/* Read at most this much from one connection per poll, so no client starves the others. */
#define READ_BYTES_PER_POLL (256u * 1024u)
#define READ_CHUNK_BYTES (64u * 1024u)
/* Stop reading a connection whose peer leaves this much of our output unread. */
#define OUTPUT_BYTES_PAUSE (8u << 20)
/* ...and close it if it stays like that this long. */
#define STALLED_MS 60000
/* A closing connection (GOAWAY sent) gets this long to finish its streams. */
#define CLOSING_MS 10000
/* Header blocks are small in gRPC; a long run of CONTINUATION frames is an attack. */
#define CONTINUATION_FRAMES_MAX 32
/* Streams one connection may hold open; beyond it new ones are refused (REFUSED_STREAM).
   etcd advertises no limit; watches and keep-alives of one apiserver stay far below this. */
#define STREAMS_PER_CONNECTION_MAX 100000u
/* Token buckets: a burst of this many, refilled at this many per second. */
#define RESETS_PER_SECOND 1000
#define SETTINGS_PER_SECOND 100
/* The HPACK dynamic table we let the peer use (SETTINGS_HEADER_TABLE_SIZE default). */
#define HPACK_TABLE_BYTES 4096
/* An error message in grpc-message is cut to this many bytes before percent-encoding. */
#define STATUS_MESSAGE_BYTES_MAX 4096
#define EPOLL_BATCH 256
/* A client gets this long from its connect to the end of its TLS handshake (etcd's clients dial
   with a few seconds' timeout; a peer that stops mid-handshake would otherwise hold a slot). */
#define TLS_HANDSHAKE_MS 10000
/* HTTP/1 over TLS: what the relay holds each way. Reading the other side stops at it (bytes from
   the application); a client that sends more than the application takes is closed. */
#define RELAY_BYTES_MAX (4u << 20)
/* epoll data of a relay's application end: this bit and the connection's slot. */
#define RELAY_TAG (1ull << 32)

enum frame_type {
    FRAME_DATA = 0, FRAME_HEADERS = 1, FRAME_PRIORITY = 2, FRAME_RST_STREAM = 3, FRAME_SETTINGS = 4,
    FRAME_PUSH_PROMISE = 5, FRAME_PING = 6, FRAME_GOAWAY = 7, FRAME_WINDOW_UPDATE = 8, FRAME_CONTINUATION = 9,
};
enum { FLAG_END_STREAM = 0x1, FLAG_ACK = 0x1, FLAG_END_HEADERS = 0x4, FLAG_PADDED = 0x8, FLAG_PRIORITY = 0x20 };
enum h2_error {
    H2_NO_ERROR = 0, H2_PROTOCOL_ERROR = 1, H2_INTERNAL_ERROR = 2, H2_FLOW_CONTROL_ERROR = 3,
    H2_SETTINGS_TIMEOUT = 4, H2_STREAM_CLOSED = 5, H2_FRAME_SIZE_ERROR = 6, H2_REFUSED_STREAM = 7,
    H2_CANCEL = 8, H2_COMPRESSION_ERROR = 9, H2_ENHANCE_YOUR_CALM = 11,
};
enum grpc_code {
    GRPC_CANCELLED = 1, GRPC_INVALID_ARGUMENT = 3, GRPC_DEADLINE_EXCEEDED = 4, GRPC_RESOURCE_EXHAUSTED = 8,
    GRPC_UNIMPLEMENTED = 12, GRPC_INTERNAL = 13, GRPC_UNAVAILABLE = 14,
};

/* --- byte buffers ---------------------------------------------------------------------- */

typedef struct buffer {
    uint8_t *data;
    size_t start, end, capacity;  /* bytes [start, end) are held */
} buffer;

static size_t buffer_len(const buffer *b) { return b->end - b->start; }

static int buffer_reserve(buffer *b, size_t more) {
    if (b->capacity - b->end >= more) return 0;
    size_t held = buffer_len(b);
    if (b->start > 0 && b->capacity - held >= more && b->start >= held) {
        memmove(b->data, b->data + b->start, held);  /* compact rather than grow */
        b->start = 0;
        b->end = held;
        return 0;
    }
    size_t capacity = b->capacity ? b->capacity : 256;
    while (capacity - held < more) capacity *= 2;
    uint8_t *data = malloc(capacity);
    if (!data) return -1;
    if (held) memcpy(data, b->data + b->start, held);
    free(b->data);
    b->data = data;
    b->capacity = capacity;
    b->start = 0;
    b->end = held;
    return 0;
}

static int buffer_append(buffer *b, const void *bytes, size_t len) {
    if (len == 0) return 0;
    if (buffer_reserve(b, len)) return -1;
    memcpy(b->data + b->end, bytes, len);
    b->end += len;
    return 0;
}

static void buffer_consume(buffer *b, size_t len) {
    b->start += len;
    if (b->start == b->end) b->start = b->end = 0;
}

static void buffer_free(buffer *b) {
    free(b->data);
    memset(b, 0, sizeof *b);
}

/* Give back memory a burst made a buffer grow to, once it is empty. */
static void buffer_shrink_if_idle(buffer *b) {
    if (buffer_len(b) == 0 && b->capacity > 64 * 1024) buffer_free(b);
}

static void put_u32(uint8_t *p, uint32_t v) {
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}
static uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void frame_header(uint8_t *out, size_t len, int type, int flags, uint32_t stream) {
    out[0] = len >> 16; out[1] = len >> 8; out[2] = len;
    out[3] = type; out[4] = flags;
    put_u32(out + 5, stream & 0x7fffffff);
}

/* --- streams and connections ----------------------------------------------------------- */

typedef struct stream {
    uint32_t id;
    int32_t method;
    uint8_t kind;              /* enum edge_method_kind */
    uint8_t remote_ended;      /* the client sent END_STREAM */
    uint8_t headers_sent;      /* our response HEADERS went out (no Trailers-Only any more) */
    uint8_t finished;          /* our trailers are queued: nothing more may be sent */
    uint8_t app_owned;         /* the application knows this stream and has not finished it */
    uint8_t compressed_ok;     /* grpc-encoding named a compression (we accept none) */
    uint8_t in_pending;        /* on the connection's list of streams with output waiting */
    int64_t send_window;
    uint32_t recv_unacked;     /* stream window used since our last WINDOW_UPDATE for it */
    int64_t deadline_ms;       /* 0: none */
    size_t writable_below;     /* report WRITABLE when out drops below this; 0: not asked */
    buffer in;                 /* request bytes not yet a whole gRPC message */
    buffer message;            /* a unary call's request until END_STREAM */
    uint8_t has_message;
    buffer out;                /* DATA payload waiting for flow control */
    buffer trailers;           /* the trailers' header block, once finished, sent after `out` */
    buffer metadata;           /* name NUL value NUL ... of the headers the application asked for */
    struct stream *hash_next;
    struct stream *pending_next;
} stream;

enum conn_state { CONN_TLS_HANDSHAKE, CONN_PREFACE, CONN_OPEN, CONN_RELAY, CONN_CLOSING, CONN_DEAD };

typedef struct conn {
    int fd;
    uint32_t slot, generation;
    enum conn_state state;
    tls_conn *tls;                 /* NULL: plaintext */
    char *peer_common_name;        /* of the verified client certificate; NULL without one */
    int64_t accepted_ms;
    int relay_fd;                  /* HTTP/1 over TLS: the edge's end of the socket pair; -1 when none */
    uint8_t relayed;               /* it was, or is, relayed: its bytes are never HTTP/2 frames */
    buffer in, out;
    hpack_decoder *hpack;
    uint32_t peer_frame_max;
    int64_t peer_initial_window;
    int64_t send_window;
    int64_t recv_window;           /* what the peer may still send us on the connection */
    uint32_t recv_unacked;         /* connection window freed and not yet given back */
    uint32_t last_stream_id;       /* highest stream the peer opened */
    /* a header block being assembled from HEADERS and CONTINUATION frames */
    uint32_t continuation_stream;
    int continuation_frames;
    int continuation_end_stream;
    buffer header_block;
    /* streams */
    stream **buckets;
    uint32_t bucket_count, stream_count;
    stream *pending_head, *pending_tail;
    /* flood limits */
    double reset_tokens, settings_tokens;
    int64_t tokens_at_ms;
    int64_t stalled_since_ms;      /* output over OUTPUT_BYTES_PAUSE since then; 0: not stalled */
    int64_t closing_since_ms;
    size_t stream_queued;          /* answer bytes waiting in streams for flow control */
    uint8_t reading_paused, epoll_out, dirty, goaway_sent;
    struct conn *dirty_next;
} conn;

typedef struct method {
    char *path;
    size_t path_len;
    int kind;
} method;

struct edge_server {
    int epoll_fd, listen_fd, port;
    edge_limits limits;
    tls_server *tls;  /* NULL: plaintext */
    conn **slots;
    uint32_t slot_count, connection_count;
    uint32_t *free_slots;
    uint32_t free_count;
    method *methods;
    int method_count;
    char **metadata_names;
    int metadata_name_count;
    conn *dirty_head;
    int stopping;
    int64_t now_ms;
    size_t open_streams;
    /* the poll's callback, for code deep in frame handling */
    edge_event_fn on_event;
    void *context;
    int callback_result;
    buffer deferred;  /* WRITABLE events raised outside a poll or flush: (conn, stream) pairs */
};

static uint64_t conn_id(const conn *c) { return (uint64_t)c->generation << 32 | c->slot; }

static conn *find_conn(edge_server *s, uint64_t id) {
    uint32_t slot = (uint32_t)id, generation = (uint32_t)(id >> 32);
    if (slot >= s->slot_count) return NULL;
    conn *c = s->slots[slot];
    if (!c || c->generation != generation || c->state == CONN_DEAD) return NULL;
    return c;
}

static stream *find_stream(const conn *c, uint32_t id) {
    if (!c->bucket_count) return NULL;
    for (stream *st = c->buckets[id & (c->bucket_count - 1)]; st; st = st->hash_next)
        if (st->id == id) return st;
    return NULL;
}

static int streams_grow(conn *c) {
    uint32_t count = c->bucket_count ? c->bucket_count * 2 : 16;
    stream **buckets = calloc(count, sizeof *buckets);
    if (!buckets) return -1;
    for (uint32_t i = 0; i < c->bucket_count; i++) {
        stream *st = c->buckets[i];
        while (st) {
            stream *next = st->hash_next;
            st->hash_next = buckets[st->id & (count - 1)];
            buckets[st->id & (count - 1)] = st;
            st = next;
        }
    }
    free(c->buckets);
    c->buckets = buckets;
    c->bucket_count = count;
    return 0;
}

static stream *stream_new(edge_server *s, conn *c, uint32_t id) {
    if (c->stream_count >= c->bucket_count && streams_grow(c)) return NULL;
    stream *st = calloc(1, sizeof *st);
    if (!st) return NULL;
    st->id = id;
    st->method = -1;
    st->send_window = c->peer_initial_window;
    uint32_t b = id & (c->bucket_count - 1);
    st->hash_next = c->buckets[b];
    c->buckets[b] = st;
    c->stream_count++;
    s->open_streams++;
    return st;
}

static void stream_free_buffers(stream *st) {
    buffer_free(&st->in);
    buffer_free(&st->message);
    buffer_free(&st->out);
    buffer_free(&st->trailers);
    buffer_free(&st->metadata);
}

static void pending_remove(conn *c, stream *st) {
    if (!st->in_pending) return;
    stream **link = &c->pending_head;
    stream *previous = NULL;
    while (*link && *link != st) { previous = *link; link = &(*link)->pending_next; }
    if (*link) *link = st->pending_next;
    if (c->pending_tail == st) c->pending_tail = previous;
    st->pending_next = NULL;
    st->in_pending = 0;
}

static void stream_remove(edge_server *s, conn *c, stream *st) {
    pending_remove(c, st);
    stream **link = &c->buckets[st->id & (c->bucket_count - 1)];
    while (*link != st) link = &(*link)->hash_next;
    *link = st->hash_next;
    c->stream_count--;
    s->open_streams--;
    c->stream_queued -= buffer_len(&st->out);
    stream_free_buffers(st);
    free(st);
}

/* --- events ---------------------------------------------------------------------------- */

static void emit(edge_server *s, edge_event *event) {
    if (s->on_event && !s->callback_result) s->callback_result = s->on_event(s->context, event);
}

typedef struct deferred_writable {
    uint64_t conn;
    uint32_t stream;
} deferred_writable;

static void emit_stream_event(edge_server *s, conn *c, stream *st, int kind, const uint8_t *data, size_t len) {
    if (!s->on_event && kind == EDGE_EVENT_WRITABLE) {  /* an answer's pump drained it: report it at the flush */
        deferred_writable pair = {conn_id(c), st->id};
        buffer_append(&s->deferred, &pair, sizeof pair);
        return;
    }
    if (!data && (kind == EDGE_EVENT_CALL || kind == EDGE_EVENT_MESSAGE)) data = (const uint8_t *)"";  /* an empty message */
    edge_event event = {.kind = kind, .conn = conn_id(c), .stream = st->id, .method = st->method,
                        .fd = -1, .data = data, .data_len = len};
    if (kind == EDGE_EVENT_CALL || kind == EDGE_EVENT_OPEN) {
        event.metadata = st->metadata.data + st->metadata.start;
        event.metadata_len = buffer_len(&st->metadata);
    }
    emit(s, &event);
}

/* --- writing frames -------------------------------------------------------------------- */

static void mark_dirty(edge_server *s, conn *c) {
    if (c->dirty) return;
    c->dirty = 1;
    c->dirty_next = s->dirty_head;
    s->dirty_head = c;
}

static int queue_frame(edge_server *s, conn *c, int type, int flags, uint32_t stream_id,
                       const void *payload, size_t len) {
    if (buffer_reserve(&c->out, FRAME_HEADER_BYTES + len)) return -1;
    frame_header(c->out.data + c->out.end, len, type, flags, stream_id);
    c->out.end += FRAME_HEADER_BYTES;
    if (len) memcpy(c->out.data + c->out.end, payload, len);
    c->out.end += len;
    mark_dirty(s, c);
    return 0;
}

/* A header block as HEADERS plus CONTINUATION frames no larger than the peer's frame limit. */
static int queue_header_block(edge_server *s, conn *c, uint32_t stream_id, const uint8_t *block, size_t len,
                              int end_stream) {
    size_t first = len < c->peer_frame_max ? len : c->peer_frame_max;
    int flags = (end_stream ? FLAG_END_STREAM : 0) | (first == len ? FLAG_END_HEADERS : 0);
    if (queue_frame(s, c, FRAME_HEADERS, flags, stream_id, block, first)) return -1;
    for (size_t at = first; at < len;) {
        size_t part = len - at < c->peer_frame_max ? len - at : c->peer_frame_max;
        if (queue_frame(s, c, FRAME_CONTINUATION, at + part == len ? FLAG_END_HEADERS : 0, stream_id,
                        block + at, part))
            return -1;
        at += part;
    }
    return 0;
}

static void queue_rst_stream(edge_server *s, conn *c, uint32_t stream_id, uint32_t code) {
    uint8_t payload[4];
    put_u32(payload, code);
    queue_frame(s, c, FRAME_RST_STREAM, 0, stream_id, payload, 4);
}

static void queue_window_update(edge_server *s, conn *c, uint32_t stream_id, uint32_t increment) {
    uint8_t payload[4];
    put_u32(payload, increment & 0x7fffffff);
    queue_frame(s, c, FRAME_WINDOW_UPDATE, 0, stream_id, payload, 4);
}

static void queue_goaway(edge_server *s, conn *c, uint32_t code, const char *debug) {
    size_t debug_len = debug ? strlen(debug) : 0;
    uint8_t payload[8 + 256];
    if (debug_len > 256) debug_len = 256;
    put_u32(payload, c->last_stream_id);
    put_u32(payload + 4, code);
    if (debug_len) memcpy(payload + 8, debug, debug_len);
    queue_frame(s, c, FRAME_GOAWAY, 0, 0, payload, 8 + debug_len);
    c->goaway_sent = 1;
}

/* The response HEADERS every answer starts with: ":status 200", "content-type: application/grpc". */
static const uint8_t RESPONSE_HEADERS[] = {
    0x88, 0x0f, 0x10, 16, 'a', 'p', 'p', 'l', 'i', 'c', 'a', 't', 'i', 'o', 'n', '/', 'g', 'r', 'p', 'c',
};
/* The trailers of a success: "grpc-status: 0" (a literal without indexing, new name). */
static const uint8_t OK_TRAILERS[] = {
    0x00, 11, 'g', 'r', 'p', 'c', '-', 's', 't', 'a', 't', 'u', 's', 1, '0',
};

/* grpc-message is percent-encoded: bytes outside printable ASCII, and '%', become %XX. */
static size_t percent_encode(uint8_t *out, const uint8_t *text, size_t len) {
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        uint8_t ch = text[i];
        if (ch < 0x20 || ch > 0x7e || ch == '%') {
            out[n++] = '%'; out[n++] = hex[ch >> 4]; out[n++] = hex[ch & 15];
        } else {
            out[n++] = ch;
        }
    }
    return n;
}

/* The header block of trailers carrying `code` and `message`; with `trailers_only`, the response
   headers go first (a Trailers-Only answer: one HEADERS frame with END_STREAM). */
static int build_trailers(buffer *out, int code, const uint8_t *message, size_t message_len, int trailers_only,
                          int http_status) {
    static const uint8_t grpc_status[] = "grpc-status";
    static const uint8_t grpc_message[] = "grpc-message";
    if (message_len > STATUS_MESSAGE_BYTES_MAX) message_len = STATUS_MESSAGE_BYTES_MAX;
    uint8_t *encoded = malloc(message_len * 3 + 1);
    if (!encoded) return -1;
    size_t encoded_len = percent_encode(encoded, message, message_len);
    char code_text[16];
    int code_len = snprintf(code_text, sizeof code_text, "%d", code);
    int failed = buffer_reserve(out, sizeof RESPONSE_HEADERS + 16 + hpack_literal_bytes_max(11, code_len) +
                                     hpack_literal_bytes_max(12, encoded_len));
    if (!failed) {
        if (trailers_only) {
            if (http_status == 200) {
                out->data[out->end++] = 0x88;
            } else {
                char status_text[4];
                snprintf(status_text, sizeof status_text, "%03d", http_status);
                out->end += hpack_encode_literal_indexed_name(out->data + out->end, 8, (const uint8_t *)status_text, 3);
            }
            memcpy(out->data + out->end, RESPONSE_HEADERS + 1, sizeof RESPONSE_HEADERS - 1);
            out->end += sizeof RESPONSE_HEADERS - 1;
        }
        out->end += hpack_encode_literal(out->data + out->end, grpc_status, 11, (const uint8_t *)code_text, code_len);
        if (encoded_len)
            out->end += hpack_encode_literal(out->data + out->end, grpc_message, 12, encoded, encoded_len);
    }
    free(encoded);
    return failed ? -1 : 0;
}

/* A finished stream's trailers, once all its data is out; then it is forgotten. */
static void send_trailers(edge_server *s, conn *c, stream *st) {
    queue_header_block(s, c, st->id, st->trailers.data + st->trailers.start, buffer_len(&st->trailers), 1);
    buffer_free(&st->trailers);
    stream_remove(s, c, st);
}

/* Send what flow control allows of the streams with data waiting, a frame per stream per turn;
   a stream whose data is all out sends its trailers and is forgotten. A client that has not ended
   its side is not reset (grpc-go sends RST_STREAM NO_ERROR): a client's write racing the status
   would then fail instead of reading it. What it still sends for that stream is dropped. */
static void pump(edge_server *s, conn *c) {
    while (c->pending_head) {
        stream *st = c->pending_head;
        size_t waiting = buffer_len(&st->out);
        if (waiting) {
            int64_t window = c->send_window < st->send_window ? c->send_window : st->send_window;
            if (window <= 0) {
                if (c->send_window <= 0) return;  /* every stream waits for the connection's window */
                /* this stream waits for its own window: take it off the list until a WINDOW_UPDATE */
                pending_remove(c, st);
                continue;
            }
            size_t part = waiting < (size_t)window ? waiting : (size_t)window;
            if (part > c->peer_frame_max) part = c->peer_frame_max;
            if (queue_frame(s, c, FRAME_DATA, 0, st->id, st->out.data + st->out.start, part)) return;
            buffer_consume(&st->out, part);
            c->stream_queued -= part;
            c->send_window -= part;
            st->send_window -= part;
            if (st->writable_below && buffer_len(&st->out) < st->writable_below) {
                st->writable_below = 0;
                emit_stream_event(s, c, st, EDGE_EVENT_WRITABLE, NULL, 0);
            }
        }
        pending_remove(c, st);
        if (buffer_len(&st->out)) {  /* more to send: back of the line */
            st->in_pending = 1;
            if (c->pending_tail) c->pending_tail->pending_next = st; else c->pending_head = st;
            c->pending_tail = st;
            continue;
        }
        buffer_shrink_if_idle(&st->out);
        if (st->finished && buffer_len(&st->trailers)) send_trailers(s, c, st);
    }
}

static void make_pending(conn *c, stream *st) {
    if (st->in_pending) return;
    st->in_pending = 1;
    st->pending_next = NULL;
    if (c->pending_tail) c->pending_tail->pending_next = st; else c->pending_head = st;
    c->pending_tail = st;
}

static int send_response_headers(edge_server *s, conn *c, stream *st) {
    if (st->headers_sent) return 0;
    st->headers_sent = 1;
    return queue_frame(s, c, FRAME_HEADERS, FLAG_END_HEADERS, st->id, RESPONSE_HEADERS, sizeof RESPONSE_HEADERS);
}

/* Queue one gRPC message on a stream: to the wire at once when nothing waits before it and the
   windows allow, else behind what waits. */
static int queue_message(edge_server *s, conn *c, stream *st, const uint8_t *message, size_t len) {
    uint8_t prefix[5] = {0};
    put_u32(prefix + 1, (uint32_t)len);
    size_t total = len + 5;
    if (!buffer_len(&st->out) && !st->in_pending && total <= c->peer_frame_max &&
        (int64_t)total <= c->send_window && (int64_t)total <= st->send_window) {
        if (buffer_reserve(&c->out, FRAME_HEADER_BYTES + total)) return -1;
        frame_header(c->out.data + c->out.end, total, FRAME_DATA, 0, st->id);
        memcpy(c->out.data + c->out.end + FRAME_HEADER_BYTES, prefix, 5);
        memcpy(c->out.data + c->out.end + FRAME_HEADER_BYTES + 5, message, len);
        c->out.end += FRAME_HEADER_BYTES + total;
        c->send_window -= total;
        st->send_window -= total;
        mark_dirty(s, c);
        return 0;
    }
    if (buffer_append(&st->out, prefix, 5) || buffer_append(&st->out, message, len)) return -1;
    c->stream_queued += total;
    make_pending(c, st);
    pump(s, c);
    mark_dirty(s, c);  /* the flush weighs the backlog: a client that grants no window is read no more */
    return 0;
}

/* End a stream with trailers (or Trailers-Only, if nothing was sent on it). */
static int finish_stream(edge_server *s, conn *c, stream *st, int code, const uint8_t *message, size_t len,
                         int http_status) {
    if (st->finished) return 1;
    st->finished = 1;
    if (st->app_owned) {
        st->app_owned = 0;
    }
    int trailers_only = !st->headers_sent;
    st->headers_sent = 1;
    if (!trailers_only && !code && !len && !buffer_len(&st->out) && !st->in_pending) {
        if (queue_frame(s, c, FRAME_HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, st->id, OK_TRAILERS,
                        sizeof OK_TRAILERS))
            return -1;
        stream_remove(s, c, st);
        return 0;
    }
    if (build_trailers(&st->trailers, code, message, len, trailers_only, http_status)) return -1;
    if (!buffer_len(&st->out) && !st->in_pending) {
        /* No DATA of its own waits: trailers are not flow-controlled, so they go now, not behind other
           streams' DATA waiting for the connection's window (an error answer to a client whose window
           is full of a large answer would otherwise wait as long as that answer). */
        send_trailers(s, c, st);
        return 0;
    }
    make_pending(c, st);
    pump(s, c);
    return 0;
}

static int finish_with_text(edge_server *s, conn *c, stream *st, int code, const char *text) {
    return finish_stream(s, c, st, code, (const uint8_t *)text, strlen(text), 200);
}

/* --- connection lifetime --------------------------------------------------------------- */

static void epoll_watch(edge_server *s, conn *c) {
    struct epoll_event event = {.events = (c->reading_paused ? 0 : EPOLLIN) | (c->epoll_out ? EPOLLOUT : 0),
                                .data.u64 = c->slot};
    epoll_ctl(s->epoll_fd, EPOLL_CTL_MOD, c->fd, &event);
}

static void relay_close(edge_server *s, conn *c) {
    if (c->relay_fd < 0) return;
    epoll_ctl(s->epoll_fd, EPOLL_CTL_DEL, c->relay_fd, NULL);
    close(c->relay_fd);
    c->relay_fd = -1;
}

/* Forget a connection: its streams the application holds are reported cancelled. `keep_fd`: it
   was handed over (HTTP/1), so it is not closed. */
static void conn_release(edge_server *s, conn *c, int keep_fd) {
    epoll_ctl(s->epoll_fd, EPOLL_CTL_DEL, c->fd, NULL);
    if (c->tls) tls_conn_free(c->tls);
    c->tls = NULL;
    relay_close(s, c);
    free(c->peer_common_name);
    c->peer_common_name = NULL;
    if (!keep_fd) close(c->fd);
    c->state = CONN_DEAD;
    for (uint32_t i = 0; i < c->bucket_count; i++) {
        stream *st = c->buckets[i];
        while (st) {
            stream *next = st->hash_next;
            if (st->app_owned) emit_stream_event(s, c, st, EDGE_EVENT_CANCEL, NULL, 0);
            stream_free_buffers(st);
            free(st);
            s->open_streams--;
            st = next;
        }
    }
    free(c->buckets);
    c->buckets = NULL;
    c->bucket_count = c->stream_count = 0;
    c->pending_head = c->pending_tail = NULL;
    buffer_free(&c->in);
    buffer_free(&c->out);
    buffer_free(&c->header_block);
    if (c->hpack) hpack_decoder_free(c->hpack);
    c->hpack = NULL;
    mark_dirty(s, c);  /* freed when the flush walks past it: callers may still look at it */
    s->connection_count--;
}

/* Write some of `len` bytes without blocking: the count written, 0 when the socket is full, -1 when
   the connection broke. */
static ssize_t conn_send(conn *c, const uint8_t *data, size_t len) {
    if (c->tls) {
        ssize_t n = tls_write(c->tls, data, len);
        if (n > 0) return n;
        return n == TLS_WANT_WRITE || n == TLS_WANT_READ ? 0 : -1;
    }
    for (;;) {
        ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n >= 0) return n;
        if (errno == EINTR) continue;
        return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
    }
}

/* A connection error: GOAWAY with the code, a last attempt to write it, then close. */
static void conn_fail(edge_server *s, conn *c, uint32_t code, const char *debug) {
    if (c->state == CONN_DEAD) return;
    if (!c->goaway_sent && c->state != CONN_PREFACE && c->state != CONN_TLS_HANDSHAKE)
        queue_goaway(s, c, code, debug);
    if (buffer_len(&c->out)) conn_send(c, c->out.data + c->out.start, buffer_len(&c->out));
    conn_release(s, c, 0);
}

static int add_slot(edge_server *s, conn *c) {
    if (!s->free_count) {
        uint32_t count = s->slot_count ? s->slot_count * 2 : 64;
        conn **slots = realloc(s->slots, count * sizeof *slots);
        if (!slots) return -1;
        s->slots = slots;
        uint32_t *free_slots = realloc(s->free_slots, count * sizeof *free_slots);
        if (!free_slots) return -1;
        s->free_slots = free_slots;
        for (uint32_t i = count; i > s->slot_count; i--) {
            slots[i - 1] = NULL;
            s->free_slots[s->free_count++] = i - 1;
        }
        s->slot_count = count;
    }
    c->slot = s->free_slots[--s->free_count];
    s->slots[c->slot] = c;
    return 0;
}

static uint32_t next_generation = 1;

static void accept_connections(edge_server *s) {
    for (;;) {
        int fd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;  /* EAGAIN, or an error the next poll meets again */
        if (s->stopping || s->connection_count >= s->limits.connections_max) {
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conn *c = calloc(1, sizeof *c);
        if (!c || add_slot(s, c)) {
            free(c);
            close(fd);
            continue;
        }
        c->fd = fd;
        c->generation = next_generation++;
        c->state = CONN_PREFACE;
        c->accepted_ms = s->now_ms;
        c->relay_fd = -1;
        if (s->tls) {
            c->state = CONN_TLS_HANDSHAKE;
            c->tls = tls_conn_new(s->tls, fd);
        }
        c->peer_frame_max = 16384;
        c->peer_initial_window = 65535;
        c->send_window = 65535;
        c->recv_window = CONNECTION_WINDOW_BYTES;  /* opened so by the server preface */
        c->reset_tokens = RESETS_PER_SECOND;
        c->settings_tokens = SETTINGS_PER_SECOND;
        c->tokens_at_ms = s->now_ms;
        c->hpack = hpack_decoder_new(HPACK_TABLE_BYTES);
        struct epoll_event event = {.events = EPOLLIN, .data.u64 = c->slot};
        if (!c->hpack || (s->tls && !c->tls) || epoll_ctl(s->epoll_fd, EPOLL_CTL_ADD, fd, &event)) {
            if (c->hpack) hpack_decoder_free(c->hpack);
            if (c->tls) tls_conn_free(c->tls);
            s->slots[c->slot] = NULL;
            s->free_slots[s->free_count++] = c->slot;
            free(c);
            close(fd);
            continue;
        }
        s->connection_count++;
    }
}

/* Our SETTINGS, and the connection window opened to CONNECTION_WINDOW_BYTES. */
static void queue_server_preface(edge_server *s, conn *c) {
    uint8_t settings[4 * 6];
    const uint32_t values[4][2] = {
        {3, 0xffffffffu},                    /* MAX_CONCURRENT_STREAMS: as etcd, no limit */
        {4, STREAM_WINDOW_BYTES},            /* INITIAL_WINDOW_SIZE */
        {6, (uint32_t)s->limits.header_list_bytes_max},  /* MAX_HEADER_LIST_SIZE */
        {2, 0},                              /* ENABLE_PUSH: we never push */
    };
    for (int i = 0; i < 4; i++) {
        settings[i * 6] = values[i][0] >> 8;
        settings[i * 6 + 1] = values[i][0];
        put_u32(settings + i * 6 + 2, values[i][1]);
    }
    queue_frame(s, c, FRAME_SETTINGS, 0, 0, settings, sizeof settings);
    queue_window_update(s, c, 0, CONNECTION_WINDOW_BYTES - 65535);
}

/* --- reading frames -------------------------------------------------------------------- */

static void refill_tokens(edge_server *s, conn *c) {
    double seconds = (s->now_ms - c->tokens_at_ms) / 1000.0;
    if (seconds <= 0) return;
    c->tokens_at_ms = s->now_ms;
    c->reset_tokens += seconds * RESETS_PER_SECOND;
    if (c->reset_tokens > RESETS_PER_SECOND) c->reset_tokens = RESETS_PER_SECOND;
    c->settings_tokens += seconds * SETTINGS_PER_SECOND;
    if (c->settings_tokens > SETTINGS_PER_SECOND) c->settings_tokens = SETTINGS_PER_SECOND;
}

/* Give back connection window for bytes received, a quarter of it at a time. */
static void give_back(edge_server *s, conn *c, size_t len) {
    c->recv_unacked += len;
    if (c->recv_unacked >= CONNECTION_WINDOW_BYTES / 4) {
        queue_window_update(s, c, 0, c->recv_unacked);
        c->recv_window += c->recv_unacked;
        c->recv_unacked = 0;
    }
}

/* A stream's request bytes are dropped (its call failed). */
static void drop_input(stream *st) {
    buffer_free(&st->in);
    buffer_free(&st->message);
}

typedef struct header_fields {
    edge_server *server;
    stream *stream;
    const uint8_t *method, *path, *content_type, *timeout, *encoding;
    size_t method_len, path_len, content_type_len, timeout_len, encoding_len;
    int uppercase, bad_value, pseudo_after_regular, seen_regular;
    buffer *copies;  /* the values above point into this */
} header_fields;

static int field_is(const uint8_t *name, size_t len, const char *literal) {
    return len == strlen(literal) && memcmp(name, literal, len) == 0;
}

static int on_header_field(void *context, const uint8_t *name, size_t name_len, const uint8_t *value,
                           size_t value_len) {
    header_fields *h = context;
    for (size_t i = 0; i < name_len; i++)
        if (name[i] >= 'A' && name[i] <= 'Z') h->uppercase = 1;
    /* RFC 9113 8.2.1: a NUL, CR or LF in a value makes the request malformed. A NUL would also break the
       name NUL value NUL framing of the metadata the application gets (a forged "token" pair). */
    if (value_len && (memchr(value, 0, value_len) || memchr(value, '\r', value_len) || memchr(value, '\n', value_len)))
        h->bad_value = 1;
    if (name_len && name[0] == ':') {
        if (h->seen_regular) h->pseudo_after_regular = 1;
    } else {
        h->seen_regular = 1;
    }
    const uint8_t **slot = NULL;
    size_t *slot_len = NULL;
    if (field_is(name, name_len, ":method")) { slot = &h->method; slot_len = &h->method_len; }
    else if (field_is(name, name_len, ":path")) { slot = &h->path; slot_len = &h->path_len; }
    else if (field_is(name, name_len, "content-type")) { slot = &h->content_type; slot_len = &h->content_type_len; }
    else if (field_is(name, name_len, "grpc-timeout")) { slot = &h->timeout; slot_len = &h->timeout_len; }
    else if (field_is(name, name_len, "grpc-encoding")) { slot = &h->encoding; slot_len = &h->encoding_len; }
    if (slot) {
        /* the decoder's memory is valid during this call only: keep an offset into `copies` */
        size_t at = buffer_len(h->copies);
        if (buffer_append(h->copies, value, value_len)) return -1;
        *slot = (const uint8_t *)(uintptr_t)(at + 1);  /* an offset, resolved after decoding */
        *slot_len = value_len;
        return 0;
    }
    edge_server *s = h->server;
    for (int i = 0; i < s->metadata_name_count; i++) {
        if (field_is(name, name_len, s->metadata_names[i])) {
            buffer *m = &h->stream->metadata;
            const uint8_t nul = 0;
            if (buffer_append(m, name, name_len) || buffer_append(m, &nul, 1) ||
                buffer_append(m, value, value_len) || buffer_append(m, &nul, 1))
                return -1;
        }
    }
    return 0;
}

static const uint8_t *resolve(const buffer *copies, const uint8_t *offset) {
    return offset ? copies->data + copies->start + ((uintptr_t)offset - 1) : NULL;
}

/* grpc-timeout: up to 8 digits and a unit (H M S m u n), as milliseconds; -1 if malformed. */
static int64_t parse_timeout_ms(const uint8_t *text, size_t len) {
    if (len < 2 || len > 9) return -1;
    int64_t value = 0;
    for (size_t i = 0; i + 1 < len; i++) {
        if (text[i] < '0' || text[i] > '9') return -1;
        value = value * 10 + (text[i] - '0');
    }
    switch (text[len - 1]) {
    case 'H': return value * 3600000;
    case 'M': return value * 60000;
    case 'S': return value * 1000;
    case 'm': return value;
    case 'u': return (value + 999) / 1000;
    case 'n': return (value + 999999) / 1000000;
    default: return -1;
    }
}

static int find_method(const edge_server *s, const uint8_t *path, size_t len) {
    for (int i = 0; i < s->method_count; i++)
        if (s->methods[i].path_len == len && memcmp(s->methods[i].path, path, len) == 0) return i;
    return -1;
}

/* grpc-go's words for a path it does not serve. */
static void unknown_method_text(char *out, size_t out_len, const uint8_t *path, size_t len) {
    const uint8_t *service = len && path[0] == '/' ? path + 1 : path;
    size_t rest = len && path[0] == '/' ? len - 1 : len;
    const uint8_t *slash = memchr(service, '/', rest);
    if (!slash) {
        snprintf(out, out_len, "malformed method name: %.*s", (int)(len > 200 ? 200 : len), path);
        return;
    }
    int service_len = (int)(slash - service);
    int method_len = (int)(rest - service_len - 1);
    if (service_len > 200) service_len = 200;
    if (method_len > 200) method_len = 200;
    snprintf(out, out_len, "unknown method %.*s for service %.*s", method_len, slash + 1, service_len, service);
}

static int service_known(const edge_server *s, const uint8_t *path, size_t len) {
    const uint8_t *slash = len > 1 ? memchr(path + 1, '/', len - 1) : NULL;
    if (!slash) return 0;
    size_t service_len = slash - path + 1;  /* "/svc/" */
    for (int i = 0; i < s->method_count; i++)
        if (s->methods[i].path_len > service_len && memcmp(s->methods[i].path, path, service_len) == 0) return 1;
    return 0;
}

static void on_remote_end(edge_server *s, conn *c, stream *st);

/* A whole header block opening a stream (or a client's trailers on one). */
static void on_header_block(edge_server *s, conn *c, uint32_t stream_id, int end_stream) {
    const uint8_t *block = c->header_block.data + c->header_block.start;
    size_t block_len = buffer_len(&c->header_block);
    if (!(stream_id & 1)) {  /* before the trailers' test: an even id below the last stream is no trailers */
        conn_fail(s, c, H2_PROTOCOL_ERROR, "client stream ids are odd");
        return;
    }
    stream *st = find_stream(c, stream_id);
    if (st || stream_id <= c->last_stream_id) {
        /* trailers from the client: decode (the table must stay in step), then it is the end of its side */
        buffer ignored = {0};
        header_fields h = {.server = s, .stream = NULL, .copies = &ignored};
        stream scratch = {0};
        h.stream = &scratch;
        int result = hpack_decode_block(c->hpack, block, block_len, s->limits.header_list_bytes_max,
                                        on_header_field, &h);
        buffer_free(&ignored);
        stream_free_buffers(&scratch);
        if (result == HPACK_ERROR_COMPRESSION || result == HPACK_ERROR_NO_MEMORY) {
            conn_fail(s, c, H2_COMPRESSION_ERROR, "bad header block");
            return;
        }
        if (!st) return;  /* a stream already finished: nothing to do */
        if (!end_stream) {
            conn_fail(s, c, H2_PROTOCOL_ERROR, "trailers without END_STREAM");
            return;
        }
        if (st->remote_ended) {
            /* As DATA after END_STREAM: our RST_STREAM closes the stream (RFC 9113 5.1, 5.4.2), so it is
               removed and the application told, or its answer would go out on a stream we reset. */
            queue_rst_stream(s, c, stream_id, H2_STREAM_CLOSED);
            if (st->app_owned) emit_stream_event(s, c, st, EDGE_EVENT_CANCEL, NULL, 0);
            stream_remove(s, c, st);
            return;
        }
        /* Trailers end the request as END_STREAM on DATA does: a unary call is whole now (or a message
           cut short), a stream half-closed. */
        st->remote_ended = 1;
        on_remote_end(s, c, st);
        return;
    }
    c->last_stream_id = stream_id;
    st = stream_new(s, c, stream_id);
    if (!st) {
        conn_fail(s, c, H2_INTERNAL_ERROR, "out of memory");
        return;
    }
    buffer copies = {0};
    header_fields h = {.server = s, .stream = st, .copies = &copies};
    int result = hpack_decode_block(c->hpack, block, block_len, s->limits.header_list_bytes_max, on_header_field, &h);
    if (result == HPACK_ERROR_COMPRESSION || result == HPACK_ERROR_NO_MEMORY || result == -1) {
        buffer_free(&copies);
        conn_fail(s, c, H2_COMPRESSION_ERROR, "bad header block");
        return;
    }
    st->remote_ended = end_stream;
    h.method = resolve(&copies, h.method);
    h.path = resolve(&copies, h.path);
    h.content_type = resolve(&copies, h.content_type);
    h.timeout = resolve(&copies, h.timeout);
    h.encoding = resolve(&copies, h.encoding);
    if (result == HPACK_ERROR_LIST_TOO_LARGE) {
        /* grpc-go resets a stream whose header list is over its limit */
        queue_rst_stream(s, c, stream_id, H2_FRAME_SIZE_ERROR);
        stream_remove(s, c, st);
    } else if (h.uppercase || h.bad_value || h.pseudo_after_regular || !h.method || !h.path) {
        queue_rst_stream(s, c, stream_id, H2_PROTOCOL_ERROR);  /* a malformed request (RFC 9113 8.1.1) */
        stream_remove(s, c, st);
    } else if (s->stopping || c->goaway_sent || c->stream_count > STREAMS_PER_CONNECTION_MAX) {
        queue_rst_stream(s, c, stream_id, H2_REFUSED_STREAM);
        stream_remove(s, c, st);
    } else if (!field_is(h.method, h.method_len, "POST")) {
        char text[128];  /* grpc-go's code and words (internal/transport/http2_server.go, operateHeaders) */
        int len = snprintf(text, sizeof text, "Received a HEADERS frame with :method \"%.*s\" which should be POST",
                           (int)(h.method_len > 32 ? 32 : h.method_len), h.method);
        finish_stream(s, c, st, GRPC_INTERNAL, (const uint8_t *)text, (size_t)len, 405);
    } else if (!h.content_type || h.content_type_len < 16 || memcmp(h.content_type, "application/grpc", 16) != 0 ||
               (h.content_type_len > 16 && h.content_type[16] != '+' && h.content_type[16] != ';')) {
        char text[160];  /* grpc-go's code (INVALID_ARGUMENT, not INTERNAL) and words, as for the method */
        int len = snprintf(text, sizeof text, "invalid gRPC request content-type \"%.*s\"",
                           h.content_type ? (int)(h.content_type_len > 64 ? 64 : h.content_type_len) : 0,
                           h.content_type ? (const char *)h.content_type : "");
        finish_stream(s, c, st, GRPC_INVALID_ARGUMENT, (const uint8_t *)text, (size_t)len, 415);
    } else {
        st->method = find_method(s, h.path, h.path_len);
        int64_t timeout_ms = h.timeout ? parse_timeout_ms(h.timeout, h.timeout_len) : 0;
        st->compressed_ok = h.encoding && !field_is(h.encoding, h.encoding_len, "identity");
        if (st->method < 0) {
            char text[512];
            if (service_known(s, h.path, h.path_len)) {
                unknown_method_text(text, sizeof text, h.path, h.path_len);
            } else {
                const uint8_t *service = h.path + (h.path_len && h.path[0] == '/');
                size_t service_len = h.path_len - (h.path_len && h.path[0] == '/');
                const uint8_t *slash = memchr(service, '/', service_len);
                if (slash) service_len = slash - service;
                snprintf(text, sizeof text, "unknown service %.*s", (int)(service_len > 200 ? 200 : service_len), service);
            }
            finish_with_text(s, c, st, GRPC_UNIMPLEMENTED, text);
        } else if (timeout_ms < 0) {
            char text[128];
            snprintf(text, sizeof text, "transport: malformed grpc-timeout: %.*s",
                     (int)(h.timeout_len > 64 ? 64 : h.timeout_len), h.timeout);
            finish_with_text(s, c, st, GRPC_INTERNAL, text);
        } else {
            st->kind = s->methods[st->method].kind;
            st->deadline_ms = h.timeout ? s->now_ms + timeout_ms : 0;
            if (st->kind == EDGE_BIDI_STREAM) {
                st->app_owned = 1;
                emit_stream_event(s, c, st, EDGE_EVENT_OPEN, NULL, 0);
                if (end_stream) emit_stream_event(s, c, st, EDGE_EVENT_HALF_CLOSE, NULL, 0);
            } else if (end_stream) {
                finish_with_text(s, c, st, GRPC_INTERNAL, "grpc: error while receiving the request: EOF");
            }
        }
    }
    buffer_free(&copies);
}

/* Whole gRPC messages out of a stream's bytes. */
static void on_stream_data(edge_server *s, conn *c, stream *st) {
    while (buffer_len(&st->in) >= 5 && !st->finished) {
        const uint8_t *p = st->in.data + st->in.start;
        uint32_t len = get_u32(p + 1);
        if (len > s->limits.message_bytes_max) {
            char text[128];
            snprintf(text, sizeof text, "grpc: received message larger than max (%u vs. %zu)", len,
                     s->limits.message_bytes_max);
            if (st->app_owned) emit_stream_event(s, c, st, EDGE_EVENT_CANCEL, NULL, 0);
            drop_input(st);
            finish_with_text(s, c, st, GRPC_RESOURCE_EXHAUSTED, text);
            return;
        }
        if (buffer_len(&st->in) < 5 + (size_t)len) return;
        if (p[0] && !st->compressed_ok) {
            if (st->app_owned) emit_stream_event(s, c, st, EDGE_EVENT_CANCEL, NULL, 0);
            drop_input(st);
            finish_with_text(s, c, st, GRPC_INTERNAL, "grpc: compressed flag set with identity or empty encoding");
            return;
        }
        if (p[0]) {
            if (st->app_owned) emit_stream_event(s, c, st, EDGE_EVENT_CANCEL, NULL, 0);
            drop_input(st);
            finish_with_text(s, c, st, GRPC_UNIMPLEMENTED, "grpc: Decompressor is not installed for grpc-encoding");
            return;
        }
        if (st->kind == EDGE_BIDI_STREAM) {
            emit_stream_event(s, c, st, EDGE_EVENT_MESSAGE, p + 5, len);
            buffer_consume(&st->in, 5 + len);
            continue;
        } else if (st->has_message) {
            drop_input(st);
            finish_with_text(s, c, st, GRPC_INTERNAL, "grpc: received more than one request message for a unary call");
            return;
        } else {
            st->has_message = 1;
            if (buffer_append(&st->message, p + 5, len)) {
                conn_fail(s, c, H2_INTERNAL_ERROR, "out of memory");
                return;
            }
        }
        buffer_consume(&st->in, 5 + len);
    }
    buffer_shrink_if_idle(&st->in);
}

static void on_remote_end(edge_server *s, conn *c, stream *st) {
    if (st->finished) return;
    if (buffer_len(&st->in)) {  /* END_STREAM in the middle of a message */
        if (st->app_owned) emit_stream_event(s, c, st, EDGE_EVENT_CANCEL, NULL, 0);
        drop_input(st);
        finish_with_text(s, c, st, GRPC_INTERNAL, "grpc: error while receiving the request: unexpected EOF");
        return;
    }
    if (st->kind == EDGE_BIDI_STREAM) {
        if (st->app_owned) emit_stream_event(s, c, st, EDGE_EVENT_HALF_CLOSE, NULL, 0);
    } else if (!st->has_message) {
        finish_with_text(s, c, st, GRPC_INTERNAL, "grpc: error while receiving the request: EOF");
    } else {
        st->app_owned = 1;
        emit_stream_event(s, c, st, EDGE_EVENT_CALL, st->message.data + st->message.start, buffer_len(&st->message));
        buffer_free(&st->message);
    }
}

/* Strip padding (and a HEADERS frame's priority fields); -1 if the lengths do not add up. */
static int unpad(const uint8_t **payload, size_t *len, int flags, int priority_bytes) {
    size_t pad = 0;
    if (flags & FLAG_PADDED) {
        if (*len < 1) return -1;
        pad = (*payload)[0];
        (*payload)++;
        (*len)--;
    }
    if (*len < (size_t)priority_bytes + pad) return -1;
    *payload += priority_bytes;
    *len -= priority_bytes + pad;
    return 0;
}

static void on_settings(edge_server *s, conn *c, int flags, const uint8_t *p, size_t len) {
    if (flags & FLAG_ACK) {
        if (len) conn_fail(s, c, H2_FRAME_SIZE_ERROR, "SETTINGS ACK with a payload");
        return;
    }
    if (len % 6) {
        conn_fail(s, c, H2_FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6");
        return;
    }
    refill_tokens(s, c);
    if (--c->settings_tokens < 0) {
        conn_fail(s, c, H2_ENHANCE_YOUR_CALM, "too many SETTINGS");
        return;
    }
    for (size_t at = 0; at < len; at += 6) {
        uint32_t id = (uint32_t)p[at] << 8 | p[at + 1], value = get_u32(p + at + 2);
        if (id == 2 && value > 1) {
            conn_fail(s, c, H2_PROTOCOL_ERROR, "ENABLE_PUSH not 0 or 1");
            return;
        }
        if (id == 4) {
            if (value > WINDOW_MAX) {
                conn_fail(s, c, H2_FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE too large");
                return;
            }
            int64_t delta = (int64_t)value - c->peer_initial_window;
            c->peer_initial_window = value;
            for (uint32_t i = 0; i < c->bucket_count; i++)
                for (stream *st = c->buckets[i]; st; st = st->hash_next) {
                    st->send_window += delta;
                    if (st->send_window > WINDOW_MAX) {
                        conn_fail(s, c, H2_FLOW_CONTROL_ERROR, "a stream window over 2^31-1");
                        return;
                    }
                    if (delta > 0 && buffer_len(&st->out)) make_pending(c, st);
                }
        }
        if (id == 5) {
            if (value < 16384 || value > 16777215) {
                conn_fail(s, c, H2_PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range");
                return;
            }
            c->peer_frame_max = value;
        }
    }
    queue_frame(s, c, FRAME_SETTINGS, FLAG_ACK, 0, NULL, 0);
    pump(s, c);
}

/* One frame, whole. */
static void on_frame(edge_server *s, conn *c, int type, int flags, uint32_t stream_id, const uint8_t *p,
                     size_t len) {
    if (c->continuation_stream && type != FRAME_CONTINUATION) {
        conn_fail(s, c, H2_PROTOCOL_ERROR, "expected CONTINUATION");
        return;
    }
    switch (type) {
    case FRAME_DATA: {
        if (!stream_id) { conn_fail(s, c, H2_PROTOCOL_ERROR, "DATA on stream 0"); return; }
        size_t frame_len = len;
        if (unpad(&p, &len, flags, 0)) { conn_fail(s, c, H2_PROTOCOL_ERROR, "bad padding"); return; }
        c->recv_window -= frame_len;
        if (c->recv_window < 0) { conn_fail(s, c, H2_FLOW_CONTROL_ERROR, "connection window exceeded"); return; }
        give_back(s, c, frame_len - len);  /* the padding */
        stream *st = find_stream(c, stream_id);
        if (!st) {
            if (stream_id > c->last_stream_id) { conn_fail(s, c, H2_PROTOCOL_ERROR, "DATA on an idle stream"); return; }
            give_back(s, c, len);  /* a stream we finished: its bytes are dropped */
            return;
        }
        if (st->remote_ended) {
            give_back(s, c, len);
            queue_rst_stream(s, c, stream_id, H2_STREAM_CLOSED);
            if (st->app_owned) emit_stream_event(s, c, st, EDGE_EVENT_CANCEL, NULL, 0);
            stream_remove(s, c, st);
            return;
        }
        st->recv_unacked += frame_len;
        if (st->recv_unacked > STREAM_WINDOW_BYTES) {
            queue_rst_stream(s, c, stream_id, H2_FLOW_CONTROL_ERROR);
            give_back(s, c, len);
            if (st->app_owned) emit_stream_event(s, c, st, EDGE_EVENT_CANCEL, NULL, 0);
            stream_remove(s, c, st);
            return;
        }
        if (!(flags & FLAG_END_STREAM) && st->recv_unacked >= STREAM_WINDOW_BYTES / 2) {
            /* the stream's window comes back as it arrives: a message is bounded by message_bytes_max */
            queue_window_update(s, c, stream_id, st->recv_unacked);
            st->recv_unacked = 0;
        }
        give_back(s, c, len);  /* as the bytes arrive: see "Flow control" at the top */
        if (!st->finished) {
            if (buffer_append(&st->in, p, len)) { conn_fail(s, c, H2_INTERNAL_ERROR, "out of memory"); return; }
            on_stream_data(s, c, st);
            if (c->state == CONN_DEAD) return;
            st = find_stream(c, stream_id);
        }
        if (st && (flags & FLAG_END_STREAM)) {
            st->remote_ended = 1;
            on_remote_end(s, c, st);
        }
        return;
    }
    case FRAME_HEADERS: {
        if (!stream_id) { conn_fail(s, c, H2_PROTOCOL_ERROR, "HEADERS on stream 0"); return; }
        if (unpad(&p, &len, flags, flags & FLAG_PRIORITY ? 5 : 0)) {
            conn_fail(s, c, H2_PROTOCOL_ERROR, "bad padding");
            return;
        }
        buffer_consume(&c->header_block, buffer_len(&c->header_block));
        if (len > s->limits.header_list_bytes_max + 1024) {
            conn_fail(s, c, H2_ENHANCE_YOUR_CALM, "header block too large");
            return;
        }
        if (buffer_append(&c->header_block, p, len)) { conn_fail(s, c, H2_INTERNAL_ERROR, "out of memory"); return; }
        if (!(flags & FLAG_END_HEADERS)) {
            c->continuation_stream = stream_id;
            c->continuation_frames = 0;
            c->continuation_end_stream = flags & FLAG_END_STREAM;
            return;
        }
        on_header_block(s, c, stream_id, flags & FLAG_END_STREAM);
        buffer_shrink_if_idle(&c->header_block);
        return;
    }
    case FRAME_CONTINUATION: {
        if (!c->continuation_stream || stream_id != c->continuation_stream) {
            conn_fail(s, c, H2_PROTOCOL_ERROR, "unexpected CONTINUATION");
            return;
        }
        if (++c->continuation_frames > CONTINUATION_FRAMES_MAX ||
            buffer_len(&c->header_block) + len > s->limits.header_list_bytes_max + 1024) {
            conn_fail(s, c, H2_ENHANCE_YOUR_CALM, "CONTINUATION flood");
            return;
        }
        if (buffer_append(&c->header_block, p, len)) { conn_fail(s, c, H2_INTERNAL_ERROR, "out of memory"); return; }
        if (flags & FLAG_END_HEADERS) {
            c->continuation_stream = 0;
            on_header_block(s, c, stream_id, c->continuation_end_stream);
            buffer_consume(&c->header_block, buffer_len(&c->header_block));
            buffer_shrink_if_idle(&c->header_block);
        }
        return;
    }
    case FRAME_PRIORITY:
        if (!stream_id) { conn_fail(s, c, H2_PROTOCOL_ERROR, "PRIORITY on stream 0"); return; }
        if (len != 5) queue_rst_stream(s, c, stream_id, H2_FRAME_SIZE_ERROR);
        return;
    case FRAME_RST_STREAM: {
        if (len != 4) { conn_fail(s, c, H2_FRAME_SIZE_ERROR, "RST_STREAM length"); return; }
        if (!stream_id || stream_id > c->last_stream_id) {
            conn_fail(s, c, H2_PROTOCOL_ERROR, "RST_STREAM on an idle stream");
            return;
        }
        stream *st = find_stream(c, stream_id);
        if (!st) return;
        if (!st->finished) {
            refill_tokens(s, c);
            if (--c->reset_tokens < 0) {
                conn_fail(s, c, H2_ENHANCE_YOUR_CALM, "too many streams reset");
                return;
            }
        }
        if (st->app_owned) emit_stream_event(s, c, st, EDGE_EVENT_CANCEL, NULL, 0);
        stream_remove(s, c, st);
        return;
    }
    case FRAME_SETTINGS:
        if (stream_id) { conn_fail(s, c, H2_PROTOCOL_ERROR, "SETTINGS on a stream"); return; }
        on_settings(s, c, flags, p, len);
        return;
    case FRAME_PUSH_PROMISE:
        conn_fail(s, c, H2_PROTOCOL_ERROR, "a client may not push");
        return;
    case FRAME_PING:
        if (len != 8) { conn_fail(s, c, H2_FRAME_SIZE_ERROR, "PING length"); return; }
        if (stream_id) { conn_fail(s, c, H2_PROTOCOL_ERROR, "PING on a stream"); return; }
        if (!(flags & FLAG_ACK)) queue_frame(s, c, FRAME_PING, FLAG_ACK, 0, p, 8);
        return;
    case FRAME_GOAWAY:
        if (stream_id) { conn_fail(s, c, H2_PROTOCOL_ERROR, "GOAWAY on a stream"); return; }
        if (len < 8) { conn_fail(s, c, H2_FRAME_SIZE_ERROR, "GOAWAY length"); return; }
        return;  /* the client opens no more streams; those open finish, then it closes */
    case FRAME_WINDOW_UPDATE: {
        if (len != 4) { conn_fail(s, c, H2_FRAME_SIZE_ERROR, "WINDOW_UPDATE length"); return; }
        uint32_t increment = get_u32(p) & 0x7fffffff;
        if (!stream_id) {
            if (!increment) { conn_fail(s, c, H2_PROTOCOL_ERROR, "WINDOW_UPDATE of 0"); return; }
            c->send_window += increment;
            if (c->send_window > WINDOW_MAX) { conn_fail(s, c, H2_FLOW_CONTROL_ERROR, "window over 2^31-1"); return; }
            pump(s, c);
            return;
        }
        stream *st = find_stream(c, stream_id);
        if (!st) {
            if (stream_id > c->last_stream_id) conn_fail(s, c, H2_PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream");
            return;
        }
        if (!increment) {
            queue_rst_stream(s, c, stream_id, H2_PROTOCOL_ERROR);
            if (st->app_owned) emit_stream_event(s, c, st, EDGE_EVENT_CANCEL, NULL, 0);
            stream_remove(s, c, st);
            return;
        }
        st->send_window += increment;
        if (st->send_window > WINDOW_MAX) {
            queue_rst_stream(s, c, stream_id, H2_FLOW_CONTROL_ERROR);
            if (st->app_owned) emit_stream_event(s, c, st, EDGE_EVENT_CANCEL, NULL, 0);
            stream_remove(s, c, st);
            return;
        }
        if (buffer_len(&st->out) || (st->finished && buffer_len(&st->trailers))) make_pending(c, st);
        pump(s, c);
        return;
    }
    default:
        return;  /* unknown frame types are ignored (RFC 9113 4.1) */
    }
}

/* Hand an HTTP/1 connection to the application. */
static void hand_over_http1(edge_server *s, conn *c) {
    edge_event event = {.kind = EDGE_EVENT_HTTP1, .conn = conn_id(c), .fd = c->fd,
                        .data = c->in.data + c->in.start, .data_len = buffer_len(&c->in)};
    emit(s, &event);
    conn_release(s, c, 1);
}

/* The relay's application side: what it may read and write now. */
static void relay_watch(edge_server *s, conn *c) {
    if (c->relay_fd < 0) return;
    struct epoll_event event = {.events = (buffer_len(&c->out) < RELAY_BYTES_MAX ? EPOLLIN : 0) |
                                          (buffer_len(&c->in) ? EPOLLOUT : 0),
                                .data.u64 = RELAY_TAG | c->slot};
    epoll_ctl(s->epoll_fd, EPOLL_CTL_MOD, c->relay_fd, &event);
}

/* Client bytes (c->in) to the application, as far as its socket takes them. */
static void relay_to_application(edge_server *s, conn *c) {
    if (c->relay_fd < 0) {  /* the application closed its end: what the client still sends is dropped */
        buffer_consume(&c->in, buffer_len(&c->in));
        return;
    }
    while (buffer_len(&c->in)) {
        ssize_t n = send(c->relay_fd, c->in.data + c->in.start, buffer_len(&c->in), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            buffer_consume(&c->in, n);
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        } else {
            conn_release(s, c, 0);
            return;
        }
    }
    if (buffer_len(&c->in) > RELAY_BYTES_MAX) {
        conn_release(s, c, 0);
        return;
    }
    relay_watch(s, c);
}

/* Application bytes to the client (c->out, written over TLS by the flush). Its end closed: the
   connection closes once c->out is out. */
static void relay_from_application(edge_server *s, conn *c) {
    while (buffer_len(&c->out) < RELAY_BYTES_MAX) {
        if (buffer_reserve(&c->out, READ_CHUNK_BYTES)) {
            conn_release(s, c, 0);
            return;
        }
        ssize_t n = recv(c->relay_fd, c->out.data + c->out.end, c->out.capacity - c->out.end, 0);
        if (n > 0) {
            c->out.end += n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        relay_close(s, c);
        c->state = CONN_CLOSING;
        c->closing_since_ms = s->now_ms;
        break;
    }
    mark_dirty(s, c);
    relay_watch(s, c);
}

/* HTTP/1 over TLS: the application gets a socket pair's end and the bytes read so far. */
static void relay_http1(edge_server *s, conn *c) {
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair)) {
        conn_release(s, c, 0);
        return;
    }
    struct epoll_event event = {.events = EPOLLIN, .data.u64 = RELAY_TAG | c->slot};
    if (epoll_ctl(s->epoll_fd, EPOLL_CTL_ADD, pair[0], &event)) {
        close(pair[0]);
        close(pair[1]);
        conn_release(s, c, 0);
        return;
    }
    c->relay_fd = pair[0];
    c->relayed = 1;
    c->state = CONN_RELAY;
    edge_event handed = {.kind = EDGE_EVENT_HTTP1, .conn = conn_id(c), .fd = pair[1],
                         .data = c->in.data + c->in.start, .data_len = buffer_len(&c->in)};
    emit(s, &handed);
    buffer_consume(&c->in, buffer_len(&c->in));
}

static void parse_input(edge_server *s, conn *c) {
    if (c->relayed) {
        relay_to_application(s, c);
        return;
    }
    if (c->state == CONN_PREFACE) {
        size_t have = buffer_len(&c->in);
        size_t compare = have < PREFACE_BYTES ? have : PREFACE_BYTES;
        if (memcmp(c->in.data + c->in.start, PREFACE, compare) != 0) {
            if (c->tls) relay_http1(s, c);
            else hand_over_http1(s, c);
            return;
        }
        if (have < PREFACE_BYTES) return;
        buffer_consume(&c->in, PREFACE_BYTES);
        c->state = CONN_OPEN;
        queue_server_preface(s, c);
    }
    while (c->state != CONN_DEAD && buffer_len(&c->in) >= FRAME_HEADER_BYTES) {
        const uint8_t *h = c->in.data + c->in.start;
        size_t len = (size_t)h[0] << 16 | (size_t)h[1] << 8 | h[2];
        if (len > FRAME_BYTES_MAX) {
            conn_fail(s, c, H2_FRAME_SIZE_ERROR, "frame larger than MAX_FRAME_SIZE");
            return;
        }
        if (buffer_len(&c->in) < FRAME_HEADER_BYTES + len) break;
        int type = h[3], flags = h[4];
        uint32_t stream_id = get_u32(h + 5) & 0x7fffffff;
        on_frame(s, c, type, flags, stream_id, h + FRAME_HEADER_BYTES, len);
        if (c->state == CONN_DEAD) return;
        buffer_consume(&c->in, FRAME_HEADER_BYTES + len);
    }
    buffer_shrink_if_idle(&c->in);
}

/* TLS records come at most 16 KiB at a time: read until OpenSSL waits for the socket. */
static int conn_read_tls(conn *c) {
    size_t total = 0;
    while (total < READ_BYTES_PER_POLL) {
        if (buffer_reserve(&c->in, READ_CHUNK_BYTES)) return -1;
        ssize_t n = tls_read(c->tls, c->in.data + c->in.end, c->in.capacity - c->in.end);
        if (n > 0) {
            c->in.end += n;
            total += n;
            continue;
        }
        return n == TLS_WANT_READ || n == TLS_WANT_WRITE ? 0 : -1;
    }
    return 0;  /* more may wait in the socket: epoll is level-triggered, the next poll reads it */
}

static int conn_read(edge_server *s, conn *c) {
    if (c->tls) return conn_read_tls(c);
    size_t total = 0;
    while (total < READ_BYTES_PER_POLL) {
        if (buffer_reserve(&c->in, READ_CHUNK_BYTES)) return -1;
        ssize_t n = recv(c->fd, c->in.data + c->in.end, c->in.capacity - c->in.end, 0);
        if (n > 0) {
            c->in.end += n;
            total += n;
            if ((size_t)n < READ_CHUNK_BYTES) break;
            continue;
        }
        if (n == 0) return -1;  /* the peer closed */
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        if (errno == EINTR) continue;
        return -1;
    }
    (void)s;
    return 0;
}

/* Write as much of the connection's queue as the socket takes. -1: the connection broke. */
static int conn_write(edge_server *s, conn *c) {
    while (buffer_len(&c->out)) {
        ssize_t n = conn_send(c, c->out.data + c->out.start, buffer_len(&c->out));
        if (n > 0) {
            buffer_consume(&c->out, n);
            continue;
        }
        if (n == 0) break;
        return -1;
    }
    buffer_shrink_if_idle(&c->out);
    size_t queued = buffer_len(&c->out) + c->stream_queued;  /* written, and waiting for windows */
    int want_out = buffer_len(&c->out) > 0;
    int pause = queued > OUTPUT_BYTES_PAUSE;
    if (pause && !c->stalled_since_ms) c->stalled_since_ms = s->now_ms ? s->now_ms : 1;
    if (!pause) c->stalled_since_ms = 0;
    /* reading resumes once half the backlog is out */
    int paused = c->reading_paused ? queued > OUTPUT_BYTES_PAUSE / 2 : pause;
    if (want_out != c->epoll_out || paused != c->reading_paused) {
        c->epoll_out = want_out;
        c->reading_paused = paused;
        epoll_watch(s, c);
    }
    return 0;
}

/* Take the TLS handshake a step further; once done, the connection waits for the preface as a
   plaintext one does, and its first bytes may have come with the handshake's last flight. */
static void conn_handshake(edge_server *s, conn *c) {
    int result = tls_handshake(c->tls);
    if (result == TLS_WANT_READ || result == TLS_WANT_WRITE) {
        int want_out = result == TLS_WANT_WRITE;
        if (want_out != c->epoll_out) {
            c->epoll_out = want_out;
            epoll_watch(s, c);
        }
        return;
    }
    if (result != 1) {  /* a refused certificate, not TLS at all, or a broken connection */
        conn_release(s, c, 0);
        return;
    }
    c->state = CONN_PREFACE;
    c->peer_common_name = tls_peer_common_name(c->tls);
    if (c->epoll_out) {
        c->epoll_out = 0;
        epoll_watch(s, c);
    }
    int failed = conn_read(s, c);
    if (buffer_len(&c->in) && c->state != CONN_DEAD) parse_input(s, c);
    if (failed && c->state != CONN_DEAD) conn_release(s, c, 0);
}

static int flush_dirty(edge_server *s) {
    while (s->dirty_head || buffer_len(&s->deferred)) {
        if (!s->dirty_head) {  /* WRITABLE events an answer's pump raised */
            for (size_t at = s->deferred.start; at < s->deferred.end; at += sizeof(deferred_writable)) {
                deferred_writable pair;
                memcpy(&pair, s->deferred.data + at, sizeof pair);
                edge_event event = {.kind = EDGE_EVENT_WRITABLE, .conn = pair.conn, .stream = pair.stream, .fd = -1};
                emit(s, &event);
            }
            buffer_free(&s->deferred);
            break;
        }
        conn *c = s->dirty_head;
        s->dirty_head = c->dirty_next;
        c->dirty = 0;
        if (c->state == CONN_DEAD) {  /* released while dirty: free it now */
            s->slots[c->slot] = NULL;
            s->free_slots[s->free_count++] = c->slot;
            free(c);
            continue;
        }
        if (conn_write(s, c)) conn_release(s, c, 0);
        else if (c->state == CONN_CLOSING && !c->stream_count && !buffer_len(&c->out)) conn_release(s, c, 0);
        else if (c->relay_fd >= 0) relay_watch(s, c);  /* c->out drained: the application may write again */
    }
    return s->callback_result;
}

/* --- the application's side ------------------------------------------------------------ */

static int resolve_host(const char *host, int port, struct sockaddr_storage *address, socklen_t *len) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *found = NULL;
    char port_text[16];
    snprintf(port_text, sizeof port_text, "%d", port);
    if (getaddrinfo(host, port_text, &hints, &found) || !found) return -1;
    memcpy(address, found->ai_addr, found->ai_addrlen);
    *len = found->ai_addrlen;
    freeaddrinfo(found);
    return 0;
}

edge_server *edge_server_new(const char *host, int port, int reuse_port, const edge_limits *limits,
                             char *error, size_t error_len) {
    struct sockaddr_storage address;
    socklen_t address_len;
    if (resolve_host(host, port, &address, &address_len)) {
        snprintf(error, error_len, "cannot resolve %s", host);
        errno = EINVAL;
        return NULL;
    }
    edge_server *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->limits = *limits;
    s->listen_fd = socket(address.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (s->listen_fd >= 0) {
        setsockopt(s->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (reuse_port) setsockopt(s->listen_fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    }
    if (s->listen_fd < 0 || bind(s->listen_fd, (struct sockaddr *)&address, address_len) ||
        listen(s->listen_fd, 4096)) {
        snprintf(error, error_len, "cannot listen on %s:%d: %s", host, port, strerror(errno));
        if (s->listen_fd >= 0) close(s->listen_fd);
        free(s);
        return NULL;
    }
    struct sockaddr_storage bound;
    socklen_t bound_len = sizeof bound;
    getsockname(s->listen_fd, (struct sockaddr *)&bound, &bound_len);
    s->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                : ((struct sockaddr_in *)&bound)->sin_port);
    s->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event event = {.events = EPOLLIN, .data.u64 = UINT64_MAX};
    if (s->epoll_fd < 0 || epoll_ctl(s->epoll_fd, EPOLL_CTL_ADD, s->listen_fd, &event)) {
        snprintf(error, error_len, "epoll: %s", strerror(errno));
        close(s->listen_fd);
        if (s->epoll_fd >= 0) close(s->epoll_fd);
        free(s);
        return NULL;
    }
    return s;
}

void edge_server_free(edge_server *s) {
    if (!s) return;
    s->on_event = NULL;
    for (uint32_t i = 0; i < s->slot_count; i++)
        if (s->slots[i] && s->slots[i]->state != CONN_DEAD) conn_release(s, s->slots[i], 0);
    flush_dirty(s);
    for (uint32_t i = 0; i < s->slot_count; i++) free(s->slots[i]);
    free(s->slots);
    free(s->free_slots);
    for (int i = 0; i < s->method_count; i++) free(s->methods[i].path);
    free(s->methods);
    for (int i = 0; i < s->metadata_name_count; i++) free(s->metadata_names[i]);
    free(s->metadata_names);
    buffer_free(&s->deferred);
    tls_server_free(s->tls);
    if (s->listen_fd >= 0) close(s->listen_fd);
    close(s->epoll_fd);
    free(s);
}

void edge_use_tls(edge_server *s, tls_server *tls) {
    tls_server_free(s->tls);
    s->tls = tls;
}

const char *edge_peer_common_name(edge_server *s, uint64_t conn_ref) {
    conn *c = find_conn(s, conn_ref);
    return c ? c->peer_common_name : NULL;
}

int edge_epoll_fd(const edge_server *s) { return s->epoll_fd; }
int edge_listen_port(const edge_server *s) { return s->port; }
size_t edge_open_streams(const edge_server *s) { return s->open_streams; }
size_t edge_connection_count(const edge_server *s) { return s->connection_count; }

int edge_add_method(edge_server *s, const char *path, int kind) {
    method *methods = realloc(s->methods, (s->method_count + 1) * sizeof *methods);
    if (!methods) return -1;
    s->methods = methods;
    char *copy = strdup(path);
    if (!copy) return -1;
    methods[s->method_count] = (method){.path = copy, .path_len = strlen(path), .kind = kind};
    return s->method_count++;
}

int edge_add_metadata_name(edge_server *s, const char *name) {
    char **names = realloc(s->metadata_names, (s->metadata_name_count + 1) * sizeof *names);
    if (!names) return -1;
    s->metadata_names = names;
    if (!(names[s->metadata_name_count] = strdup(name))) return -1;
    s->metadata_name_count++;
    return 0;
}

static void begin_callbacks(edge_server *s, edge_event_fn on_event, void *context) {
    s->on_event = on_event;
    s->context = context;
    s->callback_result = 0;
}

int edge_poll(edge_server *s, int64_t now_ms, edge_event_fn on_event, void *context) {
    begin_callbacks(s, on_event, context);
    s->now_ms = now_ms;
    struct epoll_event events[EPOLL_BATCH];
    int n = epoll_wait(s->epoll_fd, events, EPOLL_BATCH, 0);
    for (int i = 0; i < n && !s->callback_result; i++) {
        if (events[i].data.u64 == UINT64_MAX) {
            accept_connections(s);
            continue;
        }
        uint32_t slot = (uint32_t)events[i].data.u64;
        conn *c = slot < s->slot_count ? s->slots[slot] : NULL;
        if (!c || c->state == CONN_DEAD) continue;
        if (events[i].data.u64 & RELAY_TAG) {  /* the application's end of an HTTP/1-over-TLS relay */
            if (c->relay_fd < 0) continue;
            if (events[i].events & EPOLLOUT) relay_to_application(s, c);
            if (c->relay_fd >= 0 && (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
                relay_from_application(s, c);
            continue;
        }
        if (c->state == CONN_TLS_HANDSHAKE) {
            conn_handshake(s, c);
            continue;
        }
        if (events[i].events & EPOLLOUT) mark_dirty(s, c);
        if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
            if (c->reading_paused && !(events[i].events & (EPOLLHUP | EPOLLERR))) continue;
            int failed = conn_read(s, c);
            if (buffer_len(&c->in) && c->state != CONN_DEAD) parse_input(s, c);
            if (failed && c->state != CONN_DEAD) conn_release(s, c, 0);
        }
    }
    int result = s->callback_result;
    flush_dirty(s);
    s->on_event = NULL;
    return result ? result : s->callback_result;
}

int edge_flush(edge_server *s, edge_event_fn on_event, void *context) {
    begin_callbacks(s, on_event, context);
    int result = flush_dirty(s);
    s->on_event = NULL;
    return result;
}

int edge_expire(edge_server *s, int64_t now_ms, edge_event_fn on_event, void *context) {
    begin_callbacks(s, on_event, context);
    s->now_ms = now_ms;
    for (uint32_t i = 0; i < s->slot_count; i++) {
        conn *c = s->slots[i];
        if (!c || c->state == CONN_DEAD) continue;
        if ((c->stalled_since_ms && now_ms - c->stalled_since_ms > STALLED_MS) ||
            (c->state == CONN_CLOSING && now_ms - c->closing_since_ms > CLOSING_MS) ||
            (c->state == CONN_TLS_HANDSHAKE && now_ms - c->accepted_ms > TLS_HANDSHAKE_MS)) {
            conn_release(s, c, 0);
            continue;
        }
        for (uint32_t b = 0; b < c->bucket_count && c->state != CONN_DEAD; b++) {
            stream *st = c->buckets[b];
            while (st) {
                stream *next = st->hash_next;
                if (st->deadline_ms && st->deadline_ms <= now_ms && !st->finished) {
                    if (st->app_owned) emit_stream_event(s, c, st, EDGE_EVENT_CANCEL, NULL, 0);
                    finish_with_text(s, c, st, GRPC_DEADLINE_EXCEEDED, "context deadline exceeded");
                }
                st = next;
            }
        }
    }
    flush_dirty(s);
    s->on_event = NULL;
    return s->callback_result;
}

static stream *app_stream(edge_server *s, uint64_t conn_ref, uint32_t stream_id, conn **c_out) {
    conn *c = find_conn(s, conn_ref);
    if (!c) return NULL;
    stream *st = find_stream(c, stream_id);
    if (!st || st->finished) return NULL;
    *c_out = c;
    return st;
}

int edge_reply(edge_server *s, uint64_t conn_ref, uint32_t stream_id, const uint8_t *message, size_t len) {
    conn *c;
    stream *st = app_stream(s, conn_ref, stream_id, &c);
    if (!st) return 1;
    size_t total = len + 5;
    if (!st->headers_sent && !st->in_pending && total <= c->peer_frame_max && (int64_t)total <= c->send_window &&
        (int64_t)total <= st->send_window) {
        /* the common case: headers, message and trailers as three frames in one go */
        size_t frames = 3 * FRAME_HEADER_BYTES + sizeof RESPONSE_HEADERS + total + sizeof OK_TRAILERS;
        if (buffer_reserve(&c->out, frames)) return -1;
        uint8_t *out = c->out.data + c->out.end;
        frame_header(out, sizeof RESPONSE_HEADERS, FRAME_HEADERS, FLAG_END_HEADERS, stream_id);
        memcpy(out + FRAME_HEADER_BYTES, RESPONSE_HEADERS, sizeof RESPONSE_HEADERS);
        out += FRAME_HEADER_BYTES + sizeof RESPONSE_HEADERS;
        frame_header(out, total, FRAME_DATA, 0, stream_id);
        out[FRAME_HEADER_BYTES] = 0;
        put_u32(out + FRAME_HEADER_BYTES + 1, (uint32_t)len);
        memcpy(out + FRAME_HEADER_BYTES + 5, message, len);
        out += FRAME_HEADER_BYTES + total;
        frame_header(out, sizeof OK_TRAILERS, FRAME_HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, stream_id);
        memcpy(out + FRAME_HEADER_BYTES, OK_TRAILERS, sizeof OK_TRAILERS);
        c->out.end += frames;
        c->send_window -= total;
        mark_dirty(s, c);
        stream_remove(s, c, st);
        return 0;
    }
    if (send_response_headers(s, c, st) || queue_message(s, c, st, message, len)) return -1;
    return finish_stream(s, c, st, 0, NULL, 0, 200) < 0 ? -1 : 0;
}

int edge_send_message(edge_server *s, uint64_t conn_ref, uint32_t stream_id, const uint8_t *message, size_t len) {
    conn *c;
    stream *st = app_stream(s, conn_ref, stream_id, &c);
    if (!st) return 1;
    if (send_response_headers(s, c, st) || queue_message(s, c, st, message, len)) return -1;
    return 0;
}

int edge_finish(edge_server *s, uint64_t conn_ref, uint32_t stream_id, int code, const uint8_t *message,
                size_t message_len) {
    conn *c;
    stream *st = app_stream(s, conn_ref, stream_id, &c);
    if (!st) return 1;
    st->app_owned = 0;
    return finish_stream(s, c, st, code, message, message_len, 200) < 0 ? -1 : 0;
}

size_t edge_stream_queued(edge_server *s, uint64_t conn_ref, uint32_t stream_id) {
    conn *c;
    stream *st = app_stream(s, conn_ref, stream_id, &c);
    return st ? buffer_len(&st->out) : 0;
}

int edge_want_writable(edge_server *s, uint64_t conn_ref, uint32_t stream_id, size_t bytes) {
    conn *c;
    stream *st = app_stream(s, conn_ref, stream_id, &c);
    if (!st) return 1;
    st->writable_below = bytes ? bytes : 1;
    return 0;
}

void edge_goaway(edge_server *s) {
    s->stopping = 1;
    if (s->listen_fd >= 0) {
        epoll_ctl(s->epoll_fd, EPOLL_CTL_DEL, s->listen_fd, NULL);
        close(s->listen_fd);
        s->listen_fd = -1;
    }
    for (uint32_t i = 0; i < s->slot_count; i++) {
        conn *c = s->slots[i];
        if (!c || c->state == CONN_DEAD) continue;
        if (c->state == CONN_PREFACE || c->state == CONN_TLS_HANDSHAKE) {
            conn_release(s, c, 0);
            continue;
        }
        if (c->state == CONN_OPEN && !c->goaway_sent) {
            uint32_t last = c->last_stream_id;
            queue_goaway(s, c, H2_NO_ERROR, NULL);
            c->last_stream_id = last;
        }
        c->state = CONN_CLOSING;
        c->closing_since_ms = s->now_ms;
        mark_dirty(s, c);
    }
}
