"""The one place where ``preannotate.errors`` become gRPC status codes.

``ErrorInterceptor`` wraps every method of a grpc.aio server (unary and
streaming, either side): a ``PreannotateError`` ends the call with its code and
message; any other exception is logged with a reference and ends the call as
INTERNAL with only that reference, so no detail of the failure leaks to the
caller. ``abort_with(context, exc)`` does the same from inside a method or
another interceptor.

``STATUS_CODES`` is the product's one table of error classes to codes: the
HTTP endpoints answer with the HTTP status of the same code
(``preannotate.http_errors``).
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import structlog

from preannotate.errors import (
    AlreadyExists,
    Cancelled,
    FailedPrecondition,
    Interrupted,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PreannotateError,
    Unauthenticated,
    Unavailable,
)

#: Most specific first: subclasses (UnsafeName, BadEvent) inherit their base's code.
STATUS_CODES: tuple[tuple[type[PreannotateError], grpc.StatusCode], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (Cancelled, grpc.StatusCode.CANCELLED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    #: The service is stopping mid-call: asking again (another replica, or after the
    #: restart) may succeed, as for Unavailable.
    (Interrupted, grpc.StatusCode.UNAVAILABLE),
)

#: Lazy: resolved at each call, so it follows ``telemetry.logging.configure``.
log = structlog.get_logger(component="grpc")


def code_for(exc: BaseException) -> grpc.StatusCode | None:
    """The status code of ``exc``; None when it is not a mapped ``PreannotateError``."""
    if isinstance(exc, PreannotateError):
        for cls, code in STATUS_CODES:
            if isinstance(exc, cls):
                return code
    return None


def unexpected(exc: BaseException, where: str, logger: Any = None) -> str:
    """Log ``exc`` with a new reference; the caller-safe details, which repeat it."""
    ref = uuid.uuid4().hex[:12]
    (logger or log).error(f"unexpected error in {where}", ref=ref, exc_info=exc)
    return f"internal error (ref {ref}); the server log has the details"


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and the caller-safe details for ``exc``.

    Unknown exceptions (and ``PreannotateError`` subclasses without a mapping)
    are logged here with a reference that the details repeat.
    """
    code = code_for(exc)
    if code is not None:
        return code, str(exc) or type(exc).__name__
    return grpc.StatusCode.INTERNAL, unexpected(exc, "a gRPC method")


async def abort_with(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    """End the call with the status for ``exc``; raises (as ``context.abort`` does)."""
    code, details = status_for(exc)
    await context.abort(code, details)


def _passes(exc: BaseException) -> bool:
    """Exceptions that must travel on untouched: aborts and cancellation."""
    import asyncio

    return isinstance(exc, (grpc.aio.AbortError, asyncio.CancelledError)) or not isinstance(
        exc, Exception
    )


Behaviour = Callable[..., Any]
Wrapper = Callable[[Behaviour, bool], Behaviour]


def wrap_handler(handler: grpc.RpcMethodHandler | None, wrap: Wrapper):
    """A copy of ``handler`` whose behaviour is ``wrap(behaviour, response_streaming)``."""
    if handler is None:
        return None
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            wrap(handler.unary_unary, False),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            wrap(handler.unary_stream, True),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            wrap(handler.stream_unary, False),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return grpc.stream_stream_rpc_method_handler(
        wrap(handler.stream_stream, True),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def guarded(
    behaviour: Behaviour,
    streaming: bool,
    before: Callable[[Any], Any] | None = None,
) -> Behaviour:
    """``behaviour`` with every error mapped; ``before(context)`` (sync or async) runs first.

    Works for methods that return a message, for async-generator methods and
    for streaming methods that write with ``context.write`` and return None.
    """

    async def call_before(context) -> Any:
        if before is None:
            return None
        result = before(context)
        if inspect.isawaitable(result):
            result = await result
        return result

    if not streaming:

        async def unary(request, context):
            try:
                await call_before(context)
                result = behaviour(request, context)
                if inspect.isawaitable(result):
                    result = await result
                return result
            except BaseException as exc:
                if _passes(exc):
                    raise
                await abort_with(context, exc)

        return unary

    async def stream(request, context) -> AsyncIterator[Any]:
        try:
            await call_before(context)
            result = behaviour(request, context)
            if inspect.isasyncgen(result) or hasattr(result, "__aiter__"):
                async for item in result:
                    yield item
            elif inspect.isawaitable(result):
                await result
            elif result is not None:
                for item in result:
                    yield item
        except BaseException as exc:
            if _passes(exc):
                raise
            await abort_with(context, exc)

    return stream


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps exceptions of every method to status codes (see the module doc)."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        return wrap_handler(handler, guarded)
