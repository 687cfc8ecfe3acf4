"""The Nuclio dashboard API that CVAT's lambda manager calls, so that every ready
model shows up in CVAT's "Automatic annotation" dialog as a detector.

Point CVAT at it with ``CVAT_SERVERLESS=1``, ``CVAT_NUCLIO_HOST=<this host>``,
``CVAT_NUCLIO_PORT=<nuclio_port>`` and ``CVAT_NUCLIO_INVOKE_METHOD=dashboard``.

    GET  /api/functions              {name: function, ...} (CVAT iterates the values)
    GET  /api/functions/<name>       one function
    POST /api/function_invocations   header x-nuclio-function-name; body
                                     {"image": <base64>, "threshold": <float>}
                                     -> [{"label", "type", "points", "confidence", ...}]

A function is the newest version of one model, named
``preannotate.<namespace>.<model>`` (CVAT accepts ``[a-zA-Z0-9_.-]+``). What
CVAT reads of a function (cvat/apps/lambda_manager/views.py): metadata.name,
metadata.annotations.type / name / spec (a JSON *string* of labels) /
version, spec.description, status.state and status.httpPort. Errors answer
with the status of ``preannotate.http_errors`` (404 for an unknown function,
400 for a bad invocation; CVAT hands the status on to its user).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from aiohttp import web

from preannotate.errors import InvalidArgument, NotFound, PreannotateError
from preannotate.http_errors import error_response
from preannotate.v1 import common_pb2
from services.inference.app import InferenceApp
from services.inference.registry import ModelEntry
from services.inference.shapes import nuclio_item

PREFIX = "preannotate"
NAME_HEADER = "x-nuclio-function-name"


def function_name(entry: ModelEntry) -> str:
    return f"{PREFIX}.{entry.namespace}.{entry.name}"


def parse_function_name(name: str) -> tuple[str, str]:
    """(namespace, model name) of a function name; ``NotFound`` when it is not one of ours."""
    parts = name.split(".")
    if len(parts) != 3 or parts[0] != PREFIX or not all(parts[1:]):
        raise NotFound(
            f"no function {name!r}: functions here are named {PREFIX}.<namespace>.<model>"
        )
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
                f"({entry.model_type or kind}); classes: {', '.join(entry.classes)}"
            ),
            "runtime": "python:3.11",
            "handler": "preannotate",
        },
        "status": {"state": "ready", "httpPort": port},
    }


class NuclioApi:
    """Handlers of the three routes, over one ``InferenceApp``."""

    def __init__(self, app: InferenceApp) -> None:
        self.app = app

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
            latest = self.app.latest()
        except PreannotateError as exc:
            return error_response(exc)
        return web.json_response({function_name(e): function_json(e, self.port) for e in latest})

    async def _entry(self, name: str) -> ModelEntry:
        namespace, model = parse_function_name(name)
        return await self.app.resolve(common_pb2.ModelRef(namespace=namespace, name=model))

    async def get_function(self, request: web.Request) -> web.Response:
        try:
            entry = await self._entry(request.match_info["name"])
        except PreannotateError as exc:
            return error_response(exc)
        return web.json_response(function_json(entry, self.port))

    async def invoke(self, request: web.Request) -> web.Response:
        try:
            name = request.headers.get(NAME_HEADER, "")
            if not name:
                raise InvalidArgument(f"no function named: send the {NAME_HEADER} header")
            entry = await self._entry(name)
            try:
                body = await request.json()
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
