/* Server-side TLS for the native edge, on the OpenSSL the Python process already has.
 *
 * See tls.c for why OpenSSL is reached through dlsym rather than its headers.
 * A tls_server holds one SSL_CTX (certificate, key, client-certificate policy,
 * ALPN); each accepted connection gets a tls_conn (an SSL object on its
 * non-blocking fd). The I/O calls never block: they say what they wait for.
 */
#ifndef TESSERA_TLS_H
#define TESSERA_TLS_H

#include <stddef.h>
#include <sys/types.h>

typedef struct tls_server tls_server;
typedef struct tls_conn tls_conn;

/* What a handshake, read or write that did not complete waits for. */
enum tls_status {
    TLS_WANT_READ = -2,
    TLS_WANT_WRITE = -3,
    TLS_FAILED = -1,   /* a protocol error, a refused certificate, or the connection broke */
    TLS_CLOSED = 0,    /* the peer closed (close_notify or end of stream) */
};

/* Find OpenSSL's functions in `library` (a loaded module that links libssl, e.g. Python's _ssl;
   NULL: the process's global symbols). 0 on success, else -1 and a message in `error`. */
int tls_load(const char *library, char *error, size_t error_len);

/* A server context: the chain in cert_file, its key, and, with trusted_ca_file or
   client_cert_auth, a client certificate verified against trusted_ca_file required of every
   client (etcd's rule). NULL and a message in `error` on failure. tls_load must have succeeded. */
tls_server *tls_server_new(const char *cert_file, const char *key_file, const char *trusted_ca_file,
                           int client_cert_auth, char *error, size_t error_len);
void tls_server_free(tls_server *server);

tls_conn *tls_conn_new(tls_server *server, int fd);
/* Sends close_notify if it can without blocking, then frees. Does not close the fd. */
void tls_conn_free(tls_conn *conn);
/* 1 when the handshake is complete, TLS_WANT_READ/TLS_WANT_WRITE, or TLS_FAILED. */
int tls_handshake(tls_conn *conn);
/* Bytes read or written (> 0), or a tls_status. */
ssize_t tls_read(tls_conn *conn, void *data, size_t len);
ssize_t tls_write(tls_conn *conn, const void *data, size_t len);
/* The Common Name of the client certificate the handshake verified (malloc'd), or NULL. */
char *tls_peer_common_name(tls_conn *conn);

#endif
