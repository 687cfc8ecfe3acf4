"""The webhook endpoint over HTTP: ``POST /webhooks/cvat`` (aiohttp).

Reads the raw body (up to the configured size), hands it with the signature
header to ``WebhookDesk.handle`` and answers JSON: 200 for pong, accepted,
duplicate and ignored; 401 for a missing or wrong signature; 400 for a body
that is not a delivery; 413 for one too large; 422 when the policy cannot be
followed (e.g. its base model is missing); 503 when the job could not be
queued (CVAT retries on 5xx).
"""

from __future__ import annotations

import structlog
from aiohttp import web

from preannotate.errors import InvalidArgument, PreannotateError, Unauthenticated, Unavailable
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
            return _error(413, f"the body is larger than {max_bytes} bytes")
        chunks, size = [], 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > max_bytes:
                return _error(413, f"the body is larger than {max_bytes} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        try:
            answer = await app.webhooks.handle(body, request.headers.get(SIGNATURE_HEADER))
        except Unauthenticated as exc:
            log.warning("webhook refused", reason=str(exc), peer=request.remote)
            return _error(401, str(exc))
        except InvalidArgument as exc:
            log.warning("malformed webhook delivery", reason=str(exc))
            return _error(400, str(exc))
        except Unavailable as exc:
            return _error(503, str(exc))
        except PreannotateError as exc:  # the policy cannot be followed: no retry helps
            log.error("webhook delivery not acted on", error=str(exc))
            return _error(422, str(exc))
        return web.json_response(answer.body())

    return table


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"status": "error", "error": message}, status=status)
