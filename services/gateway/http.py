"""The webhook endpoint over HTTP: ``POST /webhooks/cvat`` (aiohttp).

Reads the raw body (up to the configured size), hands it with the signature
header to ``WebhookDesk.handle`` and answers JSON: 200 for pong, accepted, queued, counted,
duplicate and ignored; 413 for a body too large; any error with the status of
``preannotate.http_errors`` (which says why these suit CVAT): 401 for a missing
or wrong signature, 400 for a body that is not a delivery, 404 when the policy
names a base model that does not exist, 503 when the job could not be queued
(CVAT retries on 5xx).
"""

from __future__ import annotations

import grpc
import structlog
from aiohttp import web

from preannotate.errors import InvalidArgument, PreannotateError, Unauthenticated, Unavailable
from preannotate.http_errors import error_response, refusal
from services.gateway.webhooks import SIGNATURE_HEADER

PATH = "/webhooks/cvat"

#: Lazy: resolved at each call, so it follows ``telemetry.logging.configure``.
log = structlog.get_logger(component="webhook-http")


def routes(app, max_bytes: int) -> web.RouteTableDef:
    """The route table; ``app.webhooks`` is the ``WebhookDesk`` (ready once the runner started)."""
    table = web.RouteTableDef()

    @table.post(PATH)
    async def cvat_webhook(request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > max_bytes:
            return _too_large(max_bytes)
        chunks, size = [], 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > max_bytes:
                return _too_large(max_bytes)
            chunks.append(chunk)
        body = b"".join(chunks)
        try:
            answer = await app.webhooks.handle(body, request.headers.get(SIGNATURE_HEADER))
        except Exception as exc:  # unknown errors are logged by error_response
            _log_refusal(exc, request)
            return error_response(exc)
        return web.json_response(answer.body())

    return table


def _too_large(max_bytes: int) -> web.Response:
    return refusal(
        413, grpc.StatusCode.RESOURCE_EXHAUSTED, f"the body is larger than {max_bytes} bytes"
    )


def _log_refusal(exc: Exception, request: web.Request) -> None:
    if isinstance(exc, Unauthenticated):
        log.warning("webhook refused", reason=str(exc), peer=request.remote)
    elif isinstance(exc, InvalidArgument):
        log.warning("malformed webhook delivery", reason=str(exc))
    elif isinstance(exc, PreannotateError) and not isinstance(exc, Unavailable):
        log.error("webhook delivery not acted on", error=str(exc))  # no retry helps
