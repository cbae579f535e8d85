"""The router's RPC methods as one table, free of any gRPC library: request bytes in, answer bytes out.

Every front end serves this one table: the native edge (router/front_end.py)
and the JSON gateway (router/gateway.py). A method is one of three kinds:

    UNARY          handler(data, call) -> awaitable answer bytes
    SERVER_STREAM  handler(data, call) -> async iterator of answer bytes
    BIDI_STREAM    handler(requests, call) -> async iterator of answer bytes,
                   `requests` an async iterator of request bytes

A handler fails by raising an errors.EtcdError; the front end turns its code
and message into the client's status. Nothing here knows about HTTP/2.

A unary method may also have a `fast` handler, fast(data, responder), which
answers without a coroutine (router/core.py's fast path) or hands the call to
the general handler (`responder.fallback()`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from native.edge import BIDI_STREAM, SERVER_STREAM, UNARY
from tessera.api import errors

log = logging.getLogger("tessera.router")

__all__ = ["BIDI_STREAM", "SERVER_STREAM", "UNARY", "Call", "Method", "counted", "unexpected"]

# go-grpc-prometheus's grpc_type label, by kind.
KIND_LABELS = {UNARY: "unary", SERVER_STREAM: "server_stream", BIDI_STREAM: "bidi_stream"}
# The grpc_code label: Go's names of the codes.
GO_CODE_NAMES = {name: "".join(part.title() for part in name.split("_")) for name in errors.STATUS_CODES}
GO_CODE_NAMES.update({"OK": "OK", "CANCELLED": "Canceled"})


@dataclass(frozen=True, slots=True)
class Method:
    service: str  # "etcdserverpb.KV"
    name: str     # "Put"
    kind: int
    handler: Callable
    fast: Callable | None = None   # fast(data, responder), for the common case of a unary call
    count: Callable[[str], None] | None = None  # count(code): a call answered by the fast path

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"


class Call:
    """What a handler may know of its call: the request metadata the front end passes on, and
    `client_common_name`, the Common Name of the client certificate its connection's TLS
    handshake verified (None without one). With auth enabled and no token, etcd takes that
    name as the user."""

    __slots__ = ("metadata", "client_common_name")

    def __init__(self, metadata: tuple[tuple[str, str], ...] = (), client_common_name: str | None = None):
        self.metadata = metadata
        self.client_common_name = client_common_name

    def header(self, name: str) -> str | None:
        for key, value in self.metadata:
            if key == name:
                return value
        return None


def unexpected(error: Exception) -> errors.Reported:
    """A bug in a handler, as grpc-go would report a panic-free failure: UNKNOWN."""
    return errors.Reported("UNKNOWN", f"Unexpected {type(error)}: {error}")


def _code_of(error: BaseException) -> str:
    """The code a call that ended with this (not an EtcdError) is counted under."""
    return "CANCELLED" if isinstance(error, (asyncio.CancelledError, GeneratorExit)) else "UNKNOWN"


def counted(metrics, method: Method) -> Method:
    """The method, its calls counted as go-grpc-prometheus counts them (started; handled, by code)."""
    kind = KIND_LABELS[method.kind]
    labels = (kind, method.service, method.name)
    inner = method.handler

    def handled(code: str) -> None:
        metrics.call_handled(*labels, GO_CODE_NAMES.get(code, "Unknown"))

    @contextlib.contextmanager
    def counting():
        metrics.call_started(*labels)
        try:
            yield
        except errors.EtcdError as error:
            handled(error.code)
            raise
        except BaseException as error:
            handled(_code_of(error))
            raise
        handled("OK")

    if method.kind == UNARY:
        async def unary(data, call):
            with counting():
                return await inner(data, call)

        def answered_fast(code: str) -> None:
            metrics.call_started(*labels)
            handled(code)

        return Method(method.service, method.name, method.kind, unary, method.fast, answered_fast)

    async def stream(request, call):
        with counting():
            async for answer in inner(request, call):
                yield answer

    return Method(method.service, method.name, method.kind, stream)
