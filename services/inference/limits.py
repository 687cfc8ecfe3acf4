"""A process-wide cap on requests in progress, answered RESOURCE_EXHAUSTED when full.

``RequestLimit.slot`` is taken without waiting: a request over
``PREANNOTATE_INFERENCE_MAX_CONCURRENT_REQUESTS`` ends at once with
RESOURCE_EXHAUSTED, a message that says when to try again and gRPC's
``grpc-retry-pushback-ms`` trailer (the hint a client retry policy follows).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

SETTING = "PREANNOTATE_INFERENCE_MAX_CONCURRENT_REQUESTS"
#: How long a refused caller is told to wait.
RETRY_AFTER_MS = 1000


class RequestLimit:
    """At most ``limit`` requests hold a slot at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    @contextlib.asynccontextmanager
    async def slot(self, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        if self.in_flight >= self.limit:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.in_flight} requests in progress, the limit ({SETTING}); "
                f"try again in {RETRY_AFTER_MS / 1000:g} s",
                trailing_metadata=(("grpc-retry-pushback-ms", str(RETRY_AFTER_MS)),),
            )
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
