"""The one place where ``preannotate.errors`` become HTTP answers (aiohttp).

Both HTTP endpoints of the product, the gateway's CVAT webhook
(``services/gateway/http.py``) and the inference service's Nuclio API
(``services/inference/nuclio.py``), answer an error with ``error_response``:

- the status: the error's gRPC code (``preannotate.grpc_errors.STATUS_CODES``,
  the product's one table of error classes) turned into HTTP by ``HTTP_STATUS``,
  google.api's mapping (the "HTTP Mapping" of each code in
  googleapis' ``google/rpc/code.proto``): InvalidArgument and
  FailedPrecondition 400, Unauthenticated 401, PermissionDenied 403, NotFound
  404, AlreadyExists 409, Cancelled 499, Unavailable and Interrupted 503; any
  other exception 500, logged with a reference that the answer repeats and
  without its details;
- the body: ``{"status": "error", "code": "<gRPC code, lower case>", "error": "<message>"}``.

Why the google.api mapping suits the two callers that read these answers:

- CVAT's webhook sender records the status and the body of each delivery and
  sends it again only on 5xx, 408 and 429 (``send_webhook`` in
  ``cvat/apps/webhooks/tasks.py``). So Unavailable (503: the bus refused the
  job) and unknown errors (500) are retried, and a delivery that cannot be
  acted on (a policy whose base model is missing: 404; FailedPrecondition:
  400) is not: a retry would fail the same way. The answer stays in CVAT's
  delivery log with the message.
- CVAT's lambda manager raises on any non-2xx answer of the Nuclio API and
  hands its status on to the user who ran the function (``return_response`` in
  ``cvat/apps/lambda_manager/views.py``). 404 for an unknown function is what
  a Nuclio dashboard answers too.

Before this table the two endpoints disagreed: the webhook answered 422 for
NotFound and FailedPrecondition, the Nuclio API 409 for FailedPrecondition.
Neither 409 nor 422 changes what CVAT does (no retry either way), so the
standard mapping was taken.
"""

from __future__ import annotations

from typing import Any

import grpc
import structlog
from aiohttp import web

from preannotate.grpc_errors import code_for, unexpected

#: google.api's HTTP status of each gRPC code (google/rpc/code.proto).
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}

#: Lazy: resolved at each call, so it follows ``telemetry.logging.configure``.
log = structlog.get_logger(component="http")


def error_body(message: str, code: grpc.StatusCode) -> dict[str, Any]:
    """The JSON body of every error answer."""
    return {"status": "error", "code": code.name.lower(), "error": message}


def status_for(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The HTTP status and the JSON body for ``exc`` (unknown errors are logged here)."""
    code = code_for(exc)
    if code is None:
        details = unexpected(exc, "an HTTP handler", log)
        return 500, error_body(details, grpc.StatusCode.INTERNAL)
    return HTTP_STATUS[code], error_body(str(exc) or type(exc).__name__, code)


def error_response(exc: BaseException) -> web.Response:
    """The answer to a request that failed with ``exc``."""
    status, body = status_for(exc)
    return web.json_response(body, status=status)


def refusal(status: int, code: grpc.StatusCode, message: str) -> web.Response:
    """An answer that no exception stands for (413 for a body too large: resource_exhausted)."""
    return web.json_response(error_body(message, code), status=status)
