"""The Nuclio dashboard API that CVAT's lambda manager calls, so that every ready
model shows up in CVAT's "Automatic annotation" dialog as a detector.

Point CVAT at it with ``CVAT_SERVERLESS=1``, ``CVAT_NUCLIO_HOST=<this host>``,
``CVAT_NUCLIO_PORT=<nuclio_port>`` and ``CVAT_NUCLIO_INVOKE_METHOD=dashboard``.

    GET  /api/functions              {name: function, ...} (CVAT iterates the values)
    GET  /api/functions/<name>       one function
    POST /api/function_invocations   header x-nuclio-function-name; body
                                     {"image": <base64>, "threshold": <float>}
                                     -> [{"label", "type", "points", "confidence", ...}]

A function is the serving version of one model (its promoted version: see
``registry``; read again on every listing), named
``preannotate.<namespace>.<model>`` (CVAT accepts ``[a-zA-Z0-9_.-]+``). What
CVAT reads of a function (cvat/apps/lambda_manager/views.py): metadata.name,
metadata.annotations.type / name / spec (a JSON *string* of labels) /
version, spec.description, status.state and status.httpPort. Errors answer
with the status of ``preannotate.http_errors`` (404 for an unknown function,
400 for a bad invocation; CVAT hands the status on to its user).

Access (docs/security.md): the port has no authentication of its own (CVAT's
lambda manager sends none), so it serves only the namespaces
``PREANNOTATE_NUCLIO_NAMESPACES`` lists (default: the default namespace); a
model of any other namespace is answered exactly as a missing one (404, same
message). An invocation body larger than ``PREANNOTATE_NUCLIO_MAX_BODY_BYTES``
is refused with 413 before it is read, and more than
``PREANNOTATE_NUCLIO_CONCURRENCY`` invocations at once with 429 and
``Retry-After``. The deployments expose the port only to CVAT (compose: the
internal network; Kubernetes: a NetworkPolicy).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import grpc
from aiohttp import web

from preannotate import keys
from preannotate.errors import InvalidArgument, NotFound, PreannotateError
from preannotate.http_errors import error_response, refusal
from preannotate.modelmetrics import SUGGESTED_THRESHOLD
from preannotate.v1 import common_pb2
from services.inference.app import InferenceApp
from services.inference.registry import ModelEntry
from services.inference.shapes import nuclio_item

PREFIX = "preannotate"
NAME_HEADER = "x-nuclio-function-name"
#: Seconds a caller refused for too many invocations in flight is told to wait.
RETRY_AFTER_SECONDS = 1


def allowed_namespaces(listed: str, default: str) -> frozenset[str]:
    """The namespaces ``PREANNOTATE_NUCLIO_NAMESPACES`` lists (comma-separated); the
    default namespace when it lists none. A bad name is an ``InvalidArgument``."""
    names = [n.strip() for n in listed.split(",") if n.strip()] or [default]
    for name in names:
        try:
            keys.check_name(name, "namespace")
        except InvalidArgument as exc:
            raise InvalidArgument(f"PREANNOTATE_NUCLIO_NAMESPACES: {exc}") from None
    return frozenset(names)


def no_function(name: str) -> NotFound:
    """The one answer for a function that is missing or not served here."""
    return NotFound(
        f"no function {name!r}: GET /api/functions lists those served here "
        f"(named {PREFIX}.<namespace>.<model>)"
    )


def function_name(entry: ModelEntry) -> str:
    return f"{PREFIX}.{entry.namespace}.{entry.name}"


def parse_function_name(name: str) -> tuple[str, str]:
    """(namespace, model name) of a function name; ``NotFound`` when it is not one of ours."""
    parts = name.split(".")
    if len(parts) != 3 or parts[0] != PREFIX or not all(parts[1:]):
        raise no_function(name)
    return parts[1], parts[2]


def label_spec(entry: ModelEntry) -> list[dict[str, Any]]:
    kind = "mask" if entry.has_masks else "rectangle"
    return [
        {"id": i, "name": name, "type": kind, "attributes": []}
        for i, name in enumerate(entry.classes, start=1)
    ]


def function_json(entry: ModelEntry, port: int) -> dict[str, Any]:
    """One function as the Nuclio dashboard describes it (the fields CVAT reads)."""
    name = function_name(entry)
    kind = "Mask R-CNN" if entry.has_masks else "detector"
    suggested = entry.metrics.get(SUGGESTED_THRESHOLD)
    threshold = (
        f"; without a threshold it keeps scores of {suggested:g} or more (the best F1 on its "
        "validation split)"
        if suggested
        else ""
    )
    return {
        "metadata": {
            "name": name,
            "namespace": "nuclio",
            "labels": {"nuclio.io/project-name": "cvat"},
            "annotations": {
                "name": f"{entry.name} v{entry.version}",
                "type": "detector",
                "framework": "tensorflow",
                "spec": json.dumps(label_spec(entry)),
                "version": str(entry.version),
            },
        },
        "spec": {
            "description": (
                f"preannotate model {entry.namespace}/{entry.name} version {entry.version} "
                f"({entry.model_type or kind}); classes: {', '.join(entry.classes)}{threshold}"
            ),
            "runtime": "python:3.11",
            "handler": "preannotate",
        },
        "status": {"state": "ready", "httpPort": port},
    }


class NuclioApi:
    """Handlers of the three routes, over one ``InferenceApp``: only the allowed
    namespaces' models, bodies up to ``max_body_bytes``, ``concurrency`` invocations
    at once (the settings' values unless given)."""

    def __init__(
        self,
        app: InferenceApp,
        *,
        namespaces: frozenset[str] | None = None,
        max_body_bytes: int | None = None,
        concurrency: int | None = None,
    ) -> None:
        s = app.settings
        self.app = app
        self.namespaces = (
            namespaces
            if namespaces is not None
            else allowed_namespaces(s.nuclio_namespaces, s.namespace)
        )
        self.max_body_bytes = max_body_bytes or s.nuclio_max_body_bytes
        self.concurrency = concurrency or s.nuclio_concurrency
        self.in_flight = 0

    def routes(self) -> web.RouteTableDef:
        table = web.RouteTableDef()
        table.get("/api/functions")(self.list_functions)
        table.get("/api/functions/{name}")(self.get_function)
        table.post("/api/function_invocations")(self.invoke)
        return table

    @property
    def port(self) -> int:
        return self.app.settings.nuclio_port

    async def list_functions(self, request: web.Request) -> web.Response:
        try:
            await self.app.refresh_promotions()
            latest = [e for e in self.app.latest() if e.namespace in self.namespaces]
        except PreannotateError as exc:
            return error_response(exc)
        return web.json_response({function_name(e): function_json(e, self.port) for e in latest})

    async def _entry(self, name: str) -> ModelEntry:
        namespace, model = parse_function_name(name)
        if namespace not in self.namespaces:
            raise no_function(name)  # as a missing one: the answer tells nothing more
        try:
            return await self.app.resolve(common_pb2.ModelRef(namespace=namespace, name=model))
        except NotFound:
            raise no_function(name) from None

    async def get_function(self, request: web.Request) -> web.Response:
        try:
            entry = await self._entry(request.match_info["name"])
        except PreannotateError as exc:
            return error_response(exc)
        return web.json_response(function_json(entry, self.port))

    async def invoke(self, request: web.Request) -> web.Response:
        if self.in_flight >= self.concurrency:
            return self._busy()
        self.in_flight += 1
        try:
            return await self._invoke(request)
        finally:
            self.in_flight -= 1

    def _busy(self) -> web.Response:
        answer = refusal(
            429,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{self.concurrency} invocations are running (PREANNOTATE_NUCLIO_CONCURRENCY); "
            f"try again in {RETRY_AFTER_SECONDS} s",
        )
        answer.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return answer

    def _too_large(self) -> web.Response:
        return refusal(
            413,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the body is larger than {self.max_body_bytes} bytes "
            "(PREANNOTATE_NUCLIO_MAX_BODY_BYTES)",
        )

    async def _read_body(self, request: web.Request) -> bytes | None:
        """The body, or None once it exceeds ``max_body_bytes`` (read no further)."""
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            return None
        chunks, size = [], 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def _invoke(self, request: web.Request) -> web.Response:
        try:
            name = request.headers.get(NAME_HEADER, "")
            if not name:
                raise InvalidArgument(f"no function named: send the {NAME_HEADER} header")
            entry = await self._entry(name)
            raw = await self._read_body(request)
            if raw is None:
                return self._too_large()
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise InvalidArgument(f"the body is not JSON: {exc}") from exc
            if not isinstance(body, dict) or not isinstance(body.get("image"), str):
                raise InvalidArgument('the body must be {"image": <base64 of the frame>, ...}')
            try:
                data = base64.b64decode(body["image"], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise InvalidArgument(f'"image" is not base64: {exc}') from exc
            threshold = body.get("threshold")
            try:
                threshold = 0.0 if threshold in (None, "") else float(threshold)
            except (TypeError, ValueError) as exc:
                raise InvalidArgument(f'"threshold" {threshold!r} is not a number') from exc
            _, width, height, found = await self.app.predict(entry.ref, data, threshold, "image")
        except Exception as exc:  # a PreannotateError gets its status, any other a 500
            return error_response(exc)
        return web.json_response([nuclio_item(d, width, height) for d in found])
