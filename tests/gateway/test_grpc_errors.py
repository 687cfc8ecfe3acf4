"""preannotate.grpc_errors: every error of the hierarchy becomes its status code, on unary
and server-streaming grpc.aio methods; unknown errors become INTERNAL without details."""

from __future__ import annotations

import grpc
import pytest
from structlog.testing import capture_logs

from preannotate import errors
from preannotate.grpc_errors import ErrorInterceptor

pytestmark = pytest.mark.timeout(60)

SERVICE = "test.Errors"

RAISES = {
    "invalid": errors.InvalidArgument("epochs='abc' is not a whole number"),
    "unsafe": errors.UnsafeName("namespace '../x' is not allowed"),
    "bad-event": errors.BadEvent("not a TaskAnnotated"),
    "not-found": errors.NotFound("no job 'x'"),
    "exists": errors.AlreadyExists("model exists"),
    "denied": errors.PermissionDenied("not your namespace"),
    "unauthenticated": errors.Unauthenticated("no token"),
    "precondition": errors.FailedPrecondition("job ended"),
    "cancelled": errors.Cancelled("cancelled by alice"),
    "unavailable": errors.Unavailable("CVAT answered 503"),
    "interrupted": errors.Interrupted("the service is shutting down"),
    "crash": ZeroDivisionError("secret path /etc/shadow in the message"),
}
CODES = {
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "unsafe": grpc.StatusCode.INVALID_ARGUMENT,
    "bad-event": grpc.StatusCode.INVALID_ARGUMENT,
    "not-found": grpc.StatusCode.NOT_FOUND,
    "exists": grpc.StatusCode.ALREADY_EXISTS,
    "denied": grpc.StatusCode.PERMISSION_DENIED,
    "unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
    "precondition": grpc.StatusCode.FAILED_PRECONDITION,
    "cancelled": grpc.StatusCode.CANCELLED,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "interrupted": grpc.StatusCode.UNAVAILABLE,
    "crash": grpc.StatusCode.INTERNAL,
}


async def unary(request: bytes, context) -> bytes:
    key = request.decode()
    if key == "ok":
        return b"fine"
    raise RAISES[key]


async def stream_gen(request: bytes, context):
    yield b"first"
    key = request.decode()
    if key != "ok":
        raise RAISES[key]
    yield b"second"


async def stream_write(request: bytes, context) -> None:
    await context.write(b"first")
    key = request.decode()
    if key != "ok":
        raise RAISES[key]
    await context.write(b"second")


@pytest.fixture
async def channel():
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "StreamGen": grpc.unary_stream_rpc_method_handler(stream_gen),
            "StreamWrite": grpc.unary_stream_rpc_method_handler(stream_write),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    await server.stop(0)


@pytest.mark.parametrize("key", sorted(RAISES))
async def test_unary_errors_map_to_their_codes(channel, key):
    call = channel.unary_unary(f"/{SERVICE}/Unary")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(key.encode(), timeout=10)
    assert info.value.code() == CODES[key]
    if key == "crash":
        assert "shadow" not in info.value.details() and "ZeroDivision" not in info.value.details()
        assert "internal error (ref " in info.value.details()
    else:
        assert info.value.details() == str(RAISES[key])


@pytest.mark.parametrize("method", ["StreamGen", "StreamWrite"])
@pytest.mark.parametrize("key", ["invalid", "not-found", "cancelled", "crash"])
async def test_streaming_errors_map_after_the_messages_sent(channel, method, key):
    call = channel.unary_stream(f"/{SERVICE}/{method}")
    got = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for item in call(key.encode(), timeout=10):
            got.append(item)
    assert got == [b"first"]
    assert info.value.code() == CODES[key]


@pytest.mark.parametrize("method", ["StreamGen", "StreamWrite"])
async def test_streams_that_succeed_are_untouched(channel, method):
    call = channel.unary_stream(f"/{SERVICE}/{method}")
    assert [item async for item in call(b"ok", timeout=10)] == [b"first", b"second"]
    assert await channel.unary_unary(f"/{SERVICE}/Unary")(b"ok", timeout=10) == b"fine"


async def test_unknown_errors_are_logged_with_the_reference(channel):
    with capture_logs() as captured, pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.unary_unary(f"/{SERVICE}/Unary")(b"crash", timeout=10)
    ref = info.value.details().split("ref ")[1].split(")")[0]
    [entry] = [e for e in captured if e.get("ref") == ref]
    assert isinstance(entry["exc_info"], ZeroDivisionError)
