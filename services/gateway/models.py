"""Ready models of a namespace, read from their manifests in storage.

A version is listed when ``<ns>/serving/<name>/<version>/manifest.json``
exists (exported for serving) or, failing that,
``<ns>/models/<name>/<version>/manifest.json`` (trained, not yet exported:
listed with an empty ``serving_path``). Facts missing from the serving
manifest are taken from the model's manifest. Keys read from a manifest:
``model_type``, ``classes``, ``metrics``, ``job_id``, ``created_at`` (ISO 8601),
``input_size``, ``init.init`` (the start: coco, imagenet-backbone, base
<ns>/<name>/<version>, random). Which versions are finished is read with
``preannotate.layout``. Blocking: call from a thread.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

import structlog

from preannotate import layout
from preannotate.errors import BadEvent
from preannotate.storage import Storage, read_manifest
from preannotate.v1 import common_pb2

#: Lazy: resolved at each call, so it follows ``telemetry.logging.configure``.
log = structlog.get_logger(component="models")


def _manifest(storage: Storage, prefix: str) -> dict[str, Any]:
    try:
        return read_manifest(storage, prefix) or {}
    except BadEvent as exc:
        log.warning("unreadable manifest skipped", prefix=prefix, error=str(exc))
        return {}


def _fill(model: common_pb2.Model, manifest: dict[str, Any]) -> None:
    if not model.model_type and isinstance(manifest.get("model_type"), str):
        model.model_type = manifest["model_type"]
    if not model.classes and isinstance(manifest.get("classes"), list):
        model.classes.extend(str(c) for c in manifest["classes"])
    metrics = manifest.get("metrics")
    if isinstance(metrics, dict):
        for k, v in metrics.items():
            if k not in model.metrics and isinstance(v, (int, float)) and not isinstance(v, bool):
                model.metrics[str(k)] = float(v)
    if not model.job_id and isinstance(manifest.get("job_id"), str):
        model.job_id = manifest["job_id"]
    size = manifest.get("input_size")
    if not model.input_size and isinstance(size, int) and not isinstance(size, bool):
        model.input_size = size
    init = manifest.get("init")
    if not model.start and isinstance(init, dict) and isinstance(init.get("init"), str):
        model.start = init["init"]
    created = manifest.get("created_at")
    if not model.HasField("created_at") and isinstance(created, str):
        with contextlib.suppress(ValueError):
            model.created_at.FromDatetime(datetime.fromisoformat(created))


def list_models(storage: Storage, namespace: str) -> list[common_pb2.Model]:
    """Every ready version of every model of ``namespace``, by name then version."""
    serving = {
        (v.name, v.version): v.prefix
        for v in layout.finished(storage, namespace, area=layout.SERVING)
    }
    trained = {(v.name, v.version): v.prefix for v in layout.finished(storage, namespace)}
    out = []
    for name, version in sorted(set(serving) | set(trained)):
        model = common_pb2.Model(
            ref=common_pb2.ModelRef(namespace=namespace, name=name, version=version)
        )
        if (name, version) in serving:
            model.serving_path = serving[(name, version)]
            _fill(model, _manifest(storage, serving[(name, version)]))
        if (name, version) in trained:
            _fill(model, _manifest(storage, trained[(name, version)]))
        out.append(model)
    return out


def newest_serving(storage: Storage, namespace: str, name: str) -> common_pb2.ModelRef | None:
    """The newest version of ``name`` exported for serving, or None."""
    versions = layout.finished_versions(storage, namespace, name, area=layout.SERVING)
    if not versions:
        return None
    return common_pb2.ModelRef(namespace=namespace, name=name, version=versions[-1])
