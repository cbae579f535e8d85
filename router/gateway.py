"""etcd 3.5's HTTP/JSON gateway (grpc-gateway v1) in front of the router's own methods.

etcd's gateway is an HTTP mux that turns JSON into the gRPC request and the
answer back into JSON. This one does the same without the loopback: it
calls the very methods the gRPC front end serves (router/rpc.py), so every
answer and error is the gRPC front end's. It serves etcd 3.5's /v3 paths
(_PATHS; a method the router does not serve answers UNIMPLEMENTED, as over
gRPC), and GET /version, by which gateway clients (etcd3gw) pick the API
path. It runs on the router's client port,
as etcd's does (the native edge hands it every HTTP/1 connection,
`serve_connection`), and on a port of its own if asked (`start`).

What etcd 3.5's gateway does (observed on etcd 3.5.1 with curl):
- Only POST: another method on a known path gets 405 "Method Not Allowed\n",
  an unknown path 404 "Not Found\n" (text/plain). OPTIONS gets 200 and no
  body. Every answer carries the CORS headers below. The query is ignored.
- The body is a JSON request; only its first value is read (trailing bytes
  are ignored); an empty body or `null` is the empty request. Unknown fields
  are ignored. Fields may be named as in the .proto or lowerCamel; int64 a
  JSON number or string; enums a name or a number; bytes standard base64.
- The answer is compact JSON (Content-Type application/json) with the .proto
  field names, int64/uint64 as strings, enums as names, bytes as base64,
  fields at their default left out, and <, >, & escaped as Go does (\u003c).
- An error answers {"error": M, "code": C, "message": M}, C the gRPC code's
  number, with the HTTP status grpc-gateway derives from it (_HTTP_STATUS:
  INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE -> 400, NOT_FOUND ->
  404, RESOURCE_EXHAUSTED -> 429, ...). A body that is not valid JSON is
  INVALID_ARGUMENT with Go's decoder's words ("invalid character 'b' looking
  for beginning of object key string", "unexpected EOF").
- Streams (/v3/watch, /v3/lease/keepalive): the body is a sequence of JSON
  requests, read as they arrive; each answer is a chunk `{"result": {...}}\n`.
  Headers go out with the first answer (200). A first request that does not
  decode gets the plain error body with code 2 (UNKNOWN), HTTP 500; a later
  one just ends the request side. The end of the body ends the request side
  only: a watch stays open, a keep-alive stream ends. An error on the stream
  is a last chunk {"error": {"grpc_code": C, "http_code": H, "message": M,
  "http_status": "Too Many Requests"}} (status H if nothing went before).
- HTTP headers become gRPC metadata: `Grpc-Metadata-<Name>` as `<name>` (so
  `Grpc-Metadata-Hasleader: true` is clientv3's WithRequireLeader), and
  Authorization as `authorization`.
- `Grpc-Timeout: <integer><H|M|S|m|u|n>` is the call's deadline (0: none; a
  negative one has passed): past it, a unary call answers DEADLINE_EXCEEDED
  "context deadline exceeded" (504), a stream ends with that error as its last
  chunk. A value that does not parse is INVALID_ARGUMENT "invalid
  grpc-timeout: <value>", before the body is read.

Where this differs: JSON that parses but does not fit the request (a string
where a bool goes, an unknown enum name) gets protobuf's message, not Go's
(still INVALID_ARGUMENT, 400); base64 that etcd rejects (URL-safe alphabet,
no padding) is accepted; a stream's requests are not held to gRPC's message
size limit; a Grpc-Timeout that has passed already (negative) is answered
before the body is read, so a bad body then gets the deadline's error.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import http
import json
import logging
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple

from aiohttp import web
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.message import Message

from router.core import MAX_REQUEST_BYTES
from router.rpc import BIDI_STREAM, SERVER_STREAM, UNARY, Call, Method, unexpected
from tessera.api import errors
# The services of _PATHS, in protobuf's default pool, where _route finds their messages.
from tessera.api import rpc_pb2, v3election_pb2, v3lock_pb2  # noqa: F401

log = logging.getLogger("tessera.router")

# grpc-go's receive limit on etcd's server, which the gateway's loopback call meets (and the
# native edge enforces for gRPC calls): max-request-bytes plus gRPC's overhead allowance.
MAX_MESSAGE_BYTES = MAX_REQUEST_BYTES + 512 * 1024
SHUTDOWN_SECONDS = 1.0
CORS_HEADERS = {  # etcd's default --cors "*"
    "Access-Control-Allow-Headers": "accept, content-type, authorization",
    "Access-Control-Allow-Methods": "POST, GET, OPTIONS, PUT, DELETE",
    "Access-Control-Allow-Origin": "*",
}
# grpc-gateway forwards the gRPC server's header metadata; etcd's answers all carry this one.
ANSWER_HEADERS = {**CORS_HEADERS, "Content-Type": "application/json",
                  "Grpc-Metadata-Content-Type": "application/grpc"}
JSON_HEADERS = {**CORS_HEADERS, "Content-Type": "application/json"}

# grpc-gateway v1's HTTPStatusFromCode.
_HTTP_STATUS = {
    "OK": 200,
    "CANCELLED": 408,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "UNAUTHENTICATED": 401,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
}

# path -> gRPC method: etcd 3.5's gateway paths (the request and answer types are the method's in
# its .proto). A method the router does not serve is answered as its gRPC front end answers it
# (UNIMPLEMENTED, 501). HashKV has no path: etcd 3.5's .proto gives it Hash's,
# /v3/maintenance/hash, where Hash answers.
_PATHS = {
    "/v3/kv/range": "/etcdserverpb.KV/Range",
    "/v3/kv/put": "/etcdserverpb.KV/Put",
    "/v3/kv/deleterange": "/etcdserverpb.KV/DeleteRange",
    "/v3/kv/txn": "/etcdserverpb.KV/Txn",
    "/v3/kv/compaction": "/etcdserverpb.KV/Compact",
    "/v3/watch": "/etcdserverpb.Watch/Watch",
    "/v3/lease/grant": "/etcdserverpb.Lease/LeaseGrant",
    "/v3/lease/revoke": "/etcdserverpb.Lease/LeaseRevoke",
    "/v3/kv/lease/revoke": "/etcdserverpb.Lease/LeaseRevoke",
    "/v3/lease/keepalive": "/etcdserverpb.Lease/LeaseKeepAlive",
    "/v3/lease/timetolive": "/etcdserverpb.Lease/LeaseTimeToLive",
    "/v3/kv/lease/timetolive": "/etcdserverpb.Lease/LeaseTimeToLive",
    "/v3/lease/leases": "/etcdserverpb.Lease/LeaseLeases",
    "/v3/kv/lease/leases": "/etcdserverpb.Lease/LeaseLeases",
    "/v3/cluster/member/add": "/etcdserverpb.Cluster/MemberAdd",
    "/v3/cluster/member/remove": "/etcdserverpb.Cluster/MemberRemove",
    "/v3/cluster/member/update": "/etcdserverpb.Cluster/MemberUpdate",
    "/v3/cluster/member/list": "/etcdserverpb.Cluster/MemberList",
    "/v3/cluster/member/promote": "/etcdserverpb.Cluster/MemberPromote",
    "/v3/maintenance/status": "/etcdserverpb.Maintenance/Status",
    "/v3/maintenance/alarm": "/etcdserverpb.Maintenance/Alarm",
    "/v3/maintenance/defragment": "/etcdserverpb.Maintenance/Defragment",
    "/v3/maintenance/hash": "/etcdserverpb.Maintenance/Hash",
    "/v3/maintenance/transfer-leadership": "/etcdserverpb.Maintenance/MoveLeader",
    "/v3/maintenance/snapshot": "/etcdserverpb.Maintenance/Snapshot",
    "/v3/maintenance/downgrade": "/etcdserverpb.Maintenance/Downgrade",
    "/v3/auth/status": "/etcdserverpb.Auth/AuthStatus",
    "/v3/auth/authenticate": "/etcdserverpb.Auth/Authenticate",
    "/v3/auth/enable": "/etcdserverpb.Auth/AuthEnable",
    "/v3/auth/disable": "/etcdserverpb.Auth/AuthDisable",
    "/v3/auth/user/add": "/etcdserverpb.Auth/UserAdd",
    "/v3/auth/user/get": "/etcdserverpb.Auth/UserGet",
    "/v3/auth/user/list": "/etcdserverpb.Auth/UserList",
    "/v3/auth/user/delete": "/etcdserverpb.Auth/UserDelete",
    "/v3/auth/user/changepw": "/etcdserverpb.Auth/UserChangePassword",
    "/v3/auth/user/grant": "/etcdserverpb.Auth/UserGrantRole",
    "/v3/auth/user/revoke": "/etcdserverpb.Auth/UserRevokeRole",
    "/v3/auth/role/add": "/etcdserverpb.Auth/RoleAdd",
    "/v3/auth/role/get": "/etcdserverpb.Auth/RoleGet",
    "/v3/auth/role/list": "/etcdserverpb.Auth/RoleList",
    "/v3/auth/role/delete": "/etcdserverpb.Auth/RoleDelete",
    "/v3/auth/role/grant": "/etcdserverpb.Auth/RoleGrantPermission",
    "/v3/auth/role/revoke": "/etcdserverpb.Auth/RoleRevokePermission",
    "/v3/lock/lock": "/v3lockpb.Lock/Lock",
    "/v3/lock/unlock": "/v3lockpb.Lock/Unlock",
    "/v3/election/campaign": "/v3electionpb.Election/Campaign",
    "/v3/election/proclaim": "/v3electionpb.Election/Proclaim",
    "/v3/election/leader": "/v3electionpb.Election/Leader",
    "/v3/election/observe": "/v3electionpb.Election/Observe",
    "/v3/election/resign": "/v3electionpb.Election/Resign",
}


class _Route(NamedTuple):
    method: Method
    request_type: type[Message]
    answer_type: type[Message]


class _BadBody(Exception):
    """A request body that does not decode to the request; the message is etcd's gateway's for it."""


class Gateway:
    """The gateway over `methods`, the router's methods as its gRPC front end serves them.

    `version` is the etcd version the router answers as, for GET /version.
    """

    def __init__(self, methods: Sequence[Method], version: str,
                 get_routes: dict[str, Callable[[web.BaseRequest], Awaitable[web.Response]]] | None = None):
        """`get_routes`: more paths answered to GET (the router's /metrics and /health)."""
        by_path = {method.path: method for method in methods}
        self._routes = {path: _route(method, by_path) for path, method in _PATHS.items()}
        self._get_routes = get_routes or {}
        major, minor, _ = version.split(".", 2)
        self._version = _json({"etcdserver": version, "etcdcluster": f"{major}.{minor}.0"})
        # Cancelling a handler when its client goes away is what ends an idle watch.
        self._server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        self._runner: web.ServerRunner | None = None
        self._connections: set[asyncio.Task] = set()

    def serve_connection(self, connection: socket.socket, first_bytes: bytes) -> None:
        """Serve an HTTP/1 connection another listener accepted, `first_bytes` already read from it."""
        task = asyncio.get_running_loop().create_task(self._serve_connection(connection, first_bytes))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _serve_connection(self, connection: socket.socket, first_bytes: bytes) -> None:
        try:
            _, protocol = await asyncio.get_running_loop().connect_accepted_socket(self._server, connection)
        except OSError:
            connection.close()
            return
        if first_bytes:
            protocol.data_received(first_bytes)

    async def start(self, listen: str, ssl_context: ssl.SSLContext | None = None) -> None:
        """Serve on a listening port of the gateway's own as well (over TLS with `ssl_context`)."""
        host, _, port = listen.rpartition(":")
        self._runner = web.ServerRunner(self._server, shutdown_timeout=SHUTDOWN_SECONDS)
        await self._runner.setup()
        await web.TCPSite(self._runner, host.strip("[]"), int(port), ssl_context=ssl_context).start()
        log.info("etcd's HTTP gateway on %s", listen)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        else:
            await self._server.shutdown(SHUTDOWN_SECONDS)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "OPTIONS":  # a CORS preflight
            return web.Response(headers=CORS_HEADERS)
        if request.path == "/version":  # etcd's own HTTP endpoint; gateway clients discover the API by it
            if request.method != "GET":
                return _text(405, "Method Not Allowed", {"Allow": "GET"})
            return web.Response(body=self._version, headers=JSON_HEADERS)
        if request.path in self._get_routes:
            if request.method != "GET":
                return _text(405, "Method Not Allowed", {"Allow": "GET"})
            return await self._get_routes[request.path](request)
        route = self._routes.get(request.path)
        if route is None:
            return _text(404, "Not Found")
        if request.method != "POST":
            return _text(405, "Method Not Allowed")
        try:
            timeout = _grpc_timeout(request.headers.get("Grpc-Timeout", ""))
            if timeout is not None and timeout <= 0:
                raise _deadline_exceeded()
        except errors.EtcdError as error:
            return _error(error.code, error.message)
        call = Call(_metadata(request))
        method = route.method
        if method.kind == BIDI_STREAM:
            return await self._bidi_stream(request, route, call, timeout)
        try:
            data = await _unary_request(request, route.request_type)
        except errors.EtcdError as error:
            return _error(error.code, error.message)
        if method.kind == SERVER_STREAM:
            return await _stream_answers(request, route, method.handler(data, call), timeout)
        try:
            async with _deadline(timeout):
                answer = await method.handler(data, call)
        except errors.EtcdError as error:
            return _error(error.code, error.message)
        except Exception as error:  # a bug: what grpc would answer, and a trace in the log
            log.exception("gateway call %s failed", request.path)
            failure = unexpected(error)
            return _error(failure.code, failure.message)
        return web.Response(body=_json(_to_json(route.answer_type.FromString(answer))),
                            headers=ANSWER_HEADERS)

    async def _bidi_stream(self, request: web.BaseRequest, route: _Route, call: Call,
                           timeout: float | None) -> web.StreamResponse:
        values = _json_values(request.content)
        try:  # grpc-gateway decodes the first request before it opens the stream
            first = await anext(values, NOTHING)
            first_data = None if first is NOTHING else \
                _to_message(first, route.request_type).SerializeToString()
        except _BadBody as error:
            return _error("UNKNOWN", str(error))

        async def requests():
            if first_data is None:
                return
            yield first_data
            try:
                async for value in values:
                    yield _to_message(value, route.request_type).SerializeToString()
            except _BadBody:
                pass  # grpc-gateway stops sending, and the stream goes on

        return await _stream_answers(request, route, route.method.handler(requests(), call), timeout)


def _route(method_path: str, served: dict[str, Method]) -> _Route:
    """The route to a gRPC method ("/etcdserverpb.KV/Range"), with its request and answer types."""
    service, name = method_path.strip("/").split("/")
    descriptor = descriptor_pool.Default().FindMethodByName(f"{service}.{name}")
    return _Route(served.get(method_path) or _unimplemented(service, name),
                  message_factory.GetMessageClass(descriptor.input_type),
                  message_factory.GetMessageClass(descriptor.output_type))


def _unimplemented(service: str, name: str) -> Method:
    """A unary method the router does not serve: the gRPC front end's answer, in grpc-go's words."""
    async def refuse(_data, _call):
        raise errors.Reported("UNIMPLEMENTED", f"unknown method {name} for service {service}")

    return Method(service, name, UNARY, refuse)


async def _unary_request(request: web.BaseRequest, request_type: type[Message]) -> bytes:
    """The request's message, from its whole body; an EtcdError with what etcd's gateway answers if it fails."""
    text = codecs.decode(await request.content.read(), "utf-8", errors="replace")
    try:
        value, _ = _first_value(text, complete=True)
        data = _to_message(None if value is NOTHING else value, request_type).SerializeToString()
    except _BadBody as error:
        raise errors.Reported("INVALID_ARGUMENT", str(error)) from None
    if len(data) > MAX_MESSAGE_BYTES:
        raise errors.Reported("RESOURCE_EXHAUSTED",
                              f"grpc: received message larger than max ({len(data)} vs. {MAX_MESSAGE_BYTES})")
    return data


async def _stream_answers(request: web.BaseRequest, route: _Route, answers,
                          timeout: float | None) -> web.StreamResponse:
    """Each answer as a chunk {"result": ...}; an error (the deadline's too) as a last chunk {"error": ...}."""
    response = web.StreamResponse(headers=ANSWER_HEADERS)
    try:
        async with _deadline(timeout):
            async for data in answers:
                if not response.prepared:
                    await response.prepare(request)
                await response.write(_json({"result": _to_json(route.answer_type.FromString(data))}) + b"\n")
    except errors.EtcdError as error:
        status = _HTTP_STATUS.get(error.code, 500)
        if not response.prepared:
            response.set_status(status)
            await response.prepare(request)
        await response.write(_json({"error": {
            "grpc_code": errors.STATUS_CODES.get(error.code, 2), "http_code": status, "message": error.message,
            "http_status": http.HTTPStatus(status).phrase}}) + b"\n")
    finally:
        await answers.aclose()
    if not response.prepared:
        await response.prepare(request)
    await response.write_eof()
    return response


# grpc-gateway's Grpc-Timeout units, in nanoseconds (Go's time.Duration).
_TIMEOUT_UNIT_NANOSECONDS = {"H": 3600 * 10**9, "M": 60 * 10**9, "S": 10**9, "m": 10**6, "u": 10**3, "n": 1}
_GO_INT = re.compile(r"[+-]?[0-9]+")  # what Go's strconv.ParseInt takes
_INT64_LIMIT = 1 << 63


def _grpc_timeout(value: str) -> float | None:
    """The deadline a Grpc-Timeout header sets, in seconds (<= 0: passed already); None: none.

    As grpc-gateway v1 decodes it: an int64 and a unit letter, multiplied as Go's int64 is
    (a product past its range wraps around), and 0 meaning no deadline."""
    if not value:
        return None
    digits, unit = value[:-1], value[-1]
    if (unit not in _TIMEOUT_UNIT_NANOSECONDS or not _GO_INT.fullmatch(digits)
            or not -_INT64_LIMIT <= int(digits) < _INT64_LIMIT):
        raise errors.Reported("INVALID_ARGUMENT", f"invalid grpc-timeout: {value}")
    nanoseconds = (int(digits) * _TIMEOUT_UNIT_NANOSECONDS[unit] + _INT64_LIMIT) % (2 * _INT64_LIMIT) - _INT64_LIMIT
    return nanoseconds / 1e9 if nanoseconds else None


@contextlib.asynccontextmanager
async def _deadline(timeout: float | None):
    """Run the body until `timeout` seconds pass (None: no limit), then raise DEADLINE_EXCEEDED."""
    try:
        async with asyncio.timeout(timeout):
            yield
    except TimeoutError:
        raise _deadline_exceeded() from None


def _deadline_exceeded() -> errors.EtcdError:
    """A call past its Grpc-Timeout: what etcd's gateway passes on from its gRPC client."""
    return errors.Reported("DEADLINE_EXCEEDED", "context deadline exceeded")


def _metadata(request: web.BaseRequest) -> tuple[tuple[str, str], ...]:
    pairs = []
    for name, value in request.headers.items():
        lowered = name.lower()
        if lowered.startswith("grpc-metadata-"):
            pairs.append((lowered[len("grpc-metadata-"):], value))
        elif lowered == "authorization":
            pairs.append(("authorization", value))
    return tuple(pairs)


# --- JSON in ---------------------------------------------------------------------------------

_JSON_SPACE = " \t\r\n"
_DECODER = json.JSONDecoder()
NOTHING = object()  # no whole JSON value (yet)
# Python's decoder's complaint -> Go's encoding/json words for the same place.
_GO_SYNTAX_ERRORS = {
    "Expecting value": "looking for beginning of value",
    "Expecting property name enclosed in double quotes": "looking for beginning of object key string",
    "Expecting ':' delimiter": "after object key",
    "Invalid control character at": "in string literal",
}


def _first_value(text: str, complete: bool) -> tuple[object, str]:
    """The first JSON value of `text` and what follows it; NOTHING if there is none (yet).

    When `complete` is false more text may follow, so a value cut short is not an error.
    """
    text = text.lstrip(_JSON_SPACE)
    if not text:
        return NOTHING, ""
    try:
        value, end = _DECODER.raw_decode(text)
    except json.JSONDecodeError as error:
        cut_short = error.pos >= len(text) or error.msg.startswith("Unterminated string")
        if cut_short and not complete:
            return NOTHING, text
        raise _BadBody("unexpected EOF" if cut_short else _go_syntax_error(error)) from None
    return value, text[end:]


def _go_syntax_error(error: json.JSONDecodeError) -> str:
    character = error.doc[error.pos]
    quoted = "'\\''" if character == "'" else f"'{character}'"
    if error.msg == "Expecting ',' delimiter":
        after = "after array element" if _innermost_bracket(error.doc[:error.pos]) == "[" \
            else "after object key:value pair"
        return f"invalid character {quoted} {after}"
    if error.msg in _GO_SYNTAX_ERRORS:
        return f"invalid character {quoted} {_GO_SYNTAX_ERRORS[error.msg]}"
    return error.msg


def _innermost_bracket(text: str) -> str:
    """The innermost '{' or '[' still open at the end of `text`."""
    open_brackets, in_string, escaped = [], False, False
    for character in text:
        if escaped:
            escaped = False
        elif in_string:
            escaped = character == "\\"
            in_string = character != '"'
        elif character == '"':
            in_string = True
        elif character in "{[":
            open_brackets.append(character)
        elif character in "}]" and open_brackets:
            open_brackets.pop()
    return open_brackets[-1] if open_brackets else ""


async def _json_values(content):
    """The JSON values of a body as each is whole: a stream's requests may arrive over time."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text, ended = "", False
    while True:
        value, text = _first_value(text, complete=ended)
        if value is not NOTHING:
            yield value
        elif ended:
            return
        else:
            chunk = await content.readany()
            ended = not chunk
            text += decoder.decode(chunk, final=ended)


def _to_message(value: object, message_type: type[Message]) -> Message:
    if value is None:  # JSON null decodes to the empty request in Go
        value = {}
    if not isinstance(value, dict):
        kind = {list: "array", str: "string", bool: "bool"}.get(type(value), "number")
        raise _BadBody(f"json: cannot unmarshal {kind} into Go value of type map[string]json.RawMessage")
    try:
        return json_format.ParseDict(value, message_type(), ignore_unknown_fields=True)
    except json_format.ParseError as error:
        raise _BadBody(str(error)) from None


# --- JSON out --------------------------------------------------------------------------------

def _to_json(message: Message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _json(value: object) -> bytes:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    # Go's encoder escapes these in strings (for HTML and JavaScript); they occur nowhere else.
    for character, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                               ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(character, escaped)
    return text.encode()


def _error(code: str, message: str) -> web.Response:
    """An error answer; `code` names a gRPC status code."""
    return web.Response(status=_HTTP_STATUS.get(code, 500), headers=JSON_HEADERS,
                        body=_json({"error": message, "code": errors.STATUS_CODES.get(code, 2), "message": message}))


def _text(status: int, text: str, headers: dict | None = None) -> web.Response:
    return web.Response(status=status, body=f"{text}\n".encode(), headers={
        **CORS_HEADERS, **(headers or {}), "Content-Type": "text/plain; charset=utf-8",
        "X-Content-Type-Options": "nosniff"})
