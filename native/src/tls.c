/* Server-side TLS for the native edge, on the OpenSSL the Python process already has.
 *
 * Why no OpenSSL headers: `pip install -e .` must build on a machine that has
 * only Python, pip and gcc, and OpenSSL's headers (libssl-dev) are not part of
 * that. The library itself always is: Python's ssl module links it. So the
 * few functions the edge needs are declared here with opaque pointers, and
 * tls_load() resolves them at run time with dlsym from the module that links
 * libssl (Python's _ssl, whose dependencies dlsym searches too). The constants
 * below are OpenSSL's ABI, unchanged across 1.1.1 and 3.x, the versions Python
 * 3.11 accepts. Nothing here is touched when TLS is off.
 *
 * One SSL object per connection sits on its non-blocking fd; OpenSSL's own
 * socket BIO does the reads and writes. Writes may be partial and the buffer
 * may move between retries (our output buffer compacts), hence the two modes
 * set on the context.
 */
#define _GNU_SOURCE
#include "tls.h"

#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* OpenSSL's values (ssl.h, x509.h, obj_mac.h, tls1.h). */
enum {
    SSL_FILETYPE_PEM = 1,
    SSL_VERIFY_PEER = 0x01,
    SSL_VERIFY_FAIL_IF_NO_PEER_CERT = 0x02,
    SSL_ERROR_WANT_READ = 2,
    SSL_ERROR_WANT_WRITE = 3,
    SSL_ERROR_ZERO_RETURN = 6,
    SSL_CTRL_MODE = 33,
    SSL_CTRL_SET_MIN_PROTO_VERSION = 123,
    SSL_MODE_ENABLE_PARTIAL_WRITE = 0x1,
    SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER = 0x2,
    SSL_MODE_RELEASE_BUFFERS = 0x10,
    TLS1_2_VERSION = 0x0303,
    NID_COMMON_NAME = 13,
    X509_V_ERR_CERT_REJECTED = 28,
    SSL_TLSEXT_ERR_OK = 0,
    SSL_TLSEXT_ERR_NOACK = 3,
};

typedef int (*alpn_select_fn)(void *ssl, const unsigned char **out, unsigned char *out_len,
                              const unsigned char *in, unsigned int in_len, void *arg);
typedef int (*verify_fn)(int verified, void *store_ctx);

static struct {
    int loaded;
    const void *(*TLS_server_method)(void);
    void *(*SSL_CTX_new)(const void *method);
    void (*SSL_CTX_free)(void *ctx);
    long (*SSL_CTX_ctrl)(void *ctx, int cmd, long larg, void *parg);
    int (*SSL_CTX_use_certificate_chain_file)(void *ctx, const char *file);
    int (*SSL_CTX_use_PrivateKey_file)(void *ctx, const char *file, int type);
    int (*SSL_CTX_check_private_key)(const void *ctx);
    int (*SSL_CTX_load_verify_locations)(void *ctx, const char *file, const char *path);
    int (*SSL_CTX_set_default_verify_paths)(void *ctx);
    void (*SSL_CTX_set_verify)(void *ctx, int mode, verify_fn callback);
    void *(*SSL_load_client_CA_file)(const char *file);
    void (*SSL_CTX_set_client_CA_list)(void *ctx, void *names);
    int (*SSL_CTX_set_session_id_context)(void *ctx, const unsigned char *id, unsigned int len);
    void (*SSL_CTX_set_alpn_select_cb)(void *ctx, alpn_select_fn callback, void *arg);
    void *(*SSL_new)(void *ctx);
    void (*SSL_free)(void *ssl);
    int (*SSL_set_fd)(void *ssl, int fd);
    int (*SSL_accept)(void *ssl);
    int (*SSL_read)(void *ssl, void *data, int len);
    int (*SSL_write)(void *ssl, const void *data, int len);
    int (*SSL_get_error)(const void *ssl, int result);
    int (*SSL_shutdown)(void *ssl);
    void *(*SSL_get1_peer_certificate)(const void *ssl);  /* SSL_get_peer_certificate before 3.0 */
    void (*X509_free)(void *certificate);
    void *(*X509_get_subject_name)(const void *certificate);
    int (*X509_NAME_get_text_by_NID)(void *name, int nid, char *buf, int len);
    void (*X509_STORE_CTX_set_error)(void *store_ctx, int error);
    unsigned long (*ERR_get_error)(void);
    void (*ERR_error_string_n)(unsigned long code, char *buf, size_t len);
    void (*ERR_clear_error)(void);
} ssl;

struct tls_server {
    void *ctx;
};

struct tls_conn {
    void *ssl;
    int established;  /* the handshake completed */
    int broken;       /* a fatal error: OpenSSL forbids a shutdown after one */
};

static void *find(void *handle, const char *name, const char *fallback) {
    void *symbol = dlsym(handle, name);
    if (!symbol && fallback) symbol = dlsym(handle, fallback);
    return symbol;
}

int tls_load(const char *library, char *error, size_t error_len) {
    if (ssl.loaded) return 0;
    void *handle = library ? dlopen(library, RTLD_NOW | RTLD_LOCAL) : RTLD_DEFAULT;
    if (!handle) {
        snprintf(error, error_len, "cannot load %s: %s", library, dlerror());
        return -1;
    }
    struct { void **slot; const char *name, *fallback; } wanted[] = {
#define WANT(field) {(void **)&ssl.field, #field, NULL}
        WANT(TLS_server_method), WANT(SSL_CTX_new), WANT(SSL_CTX_free), WANT(SSL_CTX_ctrl),
        WANT(SSL_CTX_use_certificate_chain_file), WANT(SSL_CTX_use_PrivateKey_file),
        WANT(SSL_CTX_check_private_key), WANT(SSL_CTX_load_verify_locations),
        WANT(SSL_CTX_set_default_verify_paths), WANT(SSL_CTX_set_verify), WANT(SSL_load_client_CA_file),
        WANT(SSL_CTX_set_client_CA_list), WANT(SSL_CTX_set_session_id_context),
        WANT(SSL_CTX_set_alpn_select_cb), WANT(SSL_new), WANT(SSL_free), WANT(SSL_set_fd), WANT(SSL_accept),
        WANT(SSL_read), WANT(SSL_write), WANT(SSL_get_error), WANT(SSL_shutdown),
        {(void **)&ssl.SSL_get1_peer_certificate, "SSL_get1_peer_certificate", "SSL_get_peer_certificate"},
        WANT(X509_free), WANT(X509_get_subject_name), WANT(X509_NAME_get_text_by_NID),
        WANT(X509_STORE_CTX_set_error), WANT(ERR_get_error),
        WANT(ERR_error_string_n), WANT(ERR_clear_error),
#undef WANT
    };
    for (size_t i = 0; i < sizeof wanted / sizeof wanted[0]; i++) {
        *wanted[i].slot = find(handle, wanted[i].name, wanted[i].fallback);
        if (!*wanted[i].slot) {
            snprintf(error, error_len, "OpenSSL's %s not found in %s", wanted[i].name,
                     library ? library : "the process");
            return -1;
        }
    }
    ssl.loaded = 1;  /* the handle stays open: the functions live as long as the process */
    return 0;
}

/* OpenSSL's oldest queued error, after `what`, into `error`. */
static void describe_error(const char *what, const char *file, char *error, size_t error_len) {
    char reason[256] = "";
    unsigned long code = ssl.ERR_get_error();
    if (code) ssl.ERR_error_string_n(code, reason, sizeof reason);
    snprintf(error, error_len, "%s %s: %s", what, file, code ? reason : "failed");
    ssl.ERR_clear_error();
}

/* The protocol `name` in a client's ALPN list (length-prefixed names), or NULL. */
static const unsigned char *offered(const unsigned char *in, unsigned int in_len, const char *name) {
    size_t name_len = strlen(name);
    for (unsigned int at = 0; at < in_len;) {
        unsigned int len = in[at];
        if (at + 1 + len > in_len) break;
        if (len == name_len && memcmp(in + at + 1, name, len) == 0) return in + at + 1;
        at += 1 + len;
    }
    return NULL;
}

/* ALPN: "http/1.1" when the client offers it (browsers and curl offer both; the edge serves
   HTTP/2 to gRPC only, the gateway over HTTP/1), else "h2" (gRPC clients offer only that);
   neither: none, and the client's first bytes decide, as in plaintext. */
static int select_protocol(void *ssl_object, const unsigned char **out, unsigned char *out_len,
                           const unsigned char *in, unsigned int in_len, void *arg) {
    (void)ssl_object;
    (void)arg;
    static const char *preferred[] = {"http/1.1", "h2"};
    for (size_t i = 0; i < sizeof preferred / sizeof preferred[0]; i++) {
        const unsigned char *found = offered(in, in_len, preferred[i]);
        if (found) {
            *out = found;
            *out_len = (unsigned char)strlen(preferred[i]);
            return SSL_TLSEXT_ERR_OK;
        }
    }
    return SSL_TLSEXT_ERR_NOACK;
}

/* A client certificate that does not verify gets the alert etcd (Go's TLS) sends, bad_certificate,
   rather than OpenSSL's more specific one (unknown_ca, ...): OpenSSL picks the alert from the
   verification error, and a rejected certificate's is bad_certificate. Clients print the alert. */
static int verify_as_etcd(int verified, void *store_ctx) {
    if (!verified) ssl.X509_STORE_CTX_set_error(store_ctx, X509_V_ERR_CERT_REJECTED);
    return verified;
}

tls_server *tls_server_new(const char *cert_file, const char *key_file, const char *trusted_ca_file,
                           int client_cert_auth, char *error, size_t error_len) {
    if (!ssl.loaded) {
        snprintf(error, error_len, "OpenSSL is not loaded");
        return NULL;
    }
    ssl.ERR_clear_error();
    void *ctx = ssl.SSL_CTX_new(ssl.TLS_server_method());
    if (!ctx) {
        describe_error("cannot make a TLS context", "", error, error_len);
        return NULL;
    }
    static const unsigned char session_context[] = "tessera";
    ssl.SSL_CTX_ctrl(ctx, SSL_CTRL_SET_MIN_PROTO_VERSION, TLS1_2_VERSION, NULL);  /* etcd's minimum */
    ssl.SSL_CTX_ctrl(ctx, SSL_CTRL_MODE,
                     SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS,
                     NULL);
    /* resumed sessions with client certificates need a session id context */
    ssl.SSL_CTX_set_session_id_context(ctx, session_context, sizeof session_context - 1);
    ssl.SSL_CTX_set_alpn_select_cb(ctx, select_protocol, NULL);
    if (ssl.SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        describe_error("cannot load the certificate", cert_file, error, error_len);
        goto failed;
    }
    if (ssl.SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
        describe_error("cannot load the key", key_file, error, error_len);
        goto failed;
    }
    if (ssl.SSL_CTX_check_private_key(ctx) != 1) {
        describe_error("the key does not match the certificate", cert_file, error, error_len);
        goto failed;
    }
    int has_ca = trusted_ca_file && *trusted_ca_file;
    if (has_ca || client_cert_auth) {
        if (has_ca) {
            if (ssl.SSL_CTX_load_verify_locations(ctx, trusted_ca_file, NULL) != 1) {
                describe_error("cannot load the trusted CA file", trusted_ca_file, error, error_len);
                goto failed;
            }
            void *names = ssl.SSL_load_client_CA_file(trusted_ca_file);  /* told to clients choosing a certificate */
            if (names) ssl.SSL_CTX_set_client_CA_list(ctx, names);
        } else {
            ssl.SSL_CTX_set_default_verify_paths(ctx);  /* as Go with no ClientCAs: the system's roots */
        }
        ssl.SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, verify_as_etcd);
    }
    ssl.ERR_clear_error();
    tls_server *server = malloc(sizeof *server);
    if (!server) goto failed;
    server->ctx = ctx;
    return server;
failed:
    ssl.SSL_CTX_free(ctx);
    return NULL;
}

void tls_server_free(tls_server *server) {
    if (!server) return;
    ssl.SSL_CTX_free(server->ctx);
    free(server);
}

tls_conn *tls_conn_new(tls_server *server, int fd) {
    tls_conn *conn = calloc(1, sizeof *conn);
    if (!conn) return NULL;
    conn->ssl = ssl.SSL_new(server->ctx);
    if (!conn->ssl || ssl.SSL_set_fd(conn->ssl, fd) != 1) {
        if (conn->ssl) ssl.SSL_free(conn->ssl);
        free(conn);
        ssl.ERR_clear_error();
        return NULL;
    }
    return conn;
}

void tls_conn_free(tls_conn *conn) {
    if (!conn) return;
    if (conn->established && !conn->broken) {
        ssl.ERR_clear_error();
        ssl.SSL_shutdown(conn->ssl);  /* one non-blocking try at close_notify; the fd closes next */
        ssl.ERR_clear_error();
    }
    ssl.SSL_free(conn->ssl);
    free(conn);
}

/* What a call that returned `result` <= 0 means, the error queue left empty for the next. */
static int status_of(tls_conn *conn, int result) {
    int code = ssl.SSL_get_error(conn->ssl, result);
    ssl.ERR_clear_error();
    switch (code) {
    case SSL_ERROR_WANT_READ: return TLS_WANT_READ;
    case SSL_ERROR_WANT_WRITE: return TLS_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN: return TLS_CLOSED;
    default:
        conn->broken = 1;
        return TLS_FAILED;
    }
}

int tls_handshake(tls_conn *conn) {
    ssl.ERR_clear_error();
    int result = ssl.SSL_accept(conn->ssl);
    if (result != 1) return status_of(conn, result);
    conn->established = 1;
    return 1;
}

ssize_t tls_read(tls_conn *conn, void *data, size_t len) {
    ssl.ERR_clear_error();
    int result = ssl.SSL_read(conn->ssl, data, len > INT32_MAX ? INT32_MAX : (int)len);
    return result > 0 ? result : status_of(conn, result);
}

ssize_t tls_write(tls_conn *conn, const void *data, size_t len) {
    ssl.ERR_clear_error();
    int result = ssl.SSL_write(conn->ssl, data, len > INT32_MAX ? INT32_MAX : (int)len);
    return result > 0 ? result : status_of(conn, result);
}

char *tls_peer_common_name(tls_conn *conn) {
    void *certificate = ssl.SSL_get1_peer_certificate(conn->ssl);
    if (!certificate) return NULL;
    char name[256];
    int len = ssl.X509_NAME_get_text_by_NID(ssl.X509_get_subject_name(certificate), NID_COMMON_NAME, name,
                                            sizeof name);
    ssl.X509_free(certificate);
    ssl.ERR_clear_error();
    return len >= 0 ? strdup(name) : NULL;
}
