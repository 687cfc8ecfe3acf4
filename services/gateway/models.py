"""Ready models of a namespace, read from their manifests in storage.

A version is listed when ``<ns>/serving/<name>/<version>/manifest.json``
exists (exported for serving) or, failing that,
``<ns>/models/<name>/<version>/manifest.json`` (trained, not yet exported:
listed with an empty ``serving_path``). Facts missing from the serving
manifest are taken from the model's manifest. Keys read from a manifest:
``model_type``, ``classes``, ``metrics``, ``job_id``, ``created_at`` (ISO 8601),
``input_size``, ``init.init`` (the start: coco, imagenet-backbone, base
<ns>/<name>/<version>, random), ``evaluation.set``. Which versions are
finished is read with ``preannotate.layout``; each version's status
(promoted, candidate with the reason, previous) from the model's promotion
log (``preannotate.promotion``), which ``promote`` and ``rollback`` change.
Each read of a model's log sets its promoted-version gauges
(``services.gateway.metrics.observe_promotion``). Blocking: call from a thread.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

import structlog

from preannotate import layout, promotion
from preannotate.corrections import Corrections
from preannotate.errors import BadEvent, FailedPrecondition
from preannotate.storage import Storage, read_manifest
from preannotate.telemetry.promotion import figures
from preannotate.v1 import common_pb2
from services.gateway import metrics

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
    evaluation = manifest.get("evaluation")
    if not model.evaluation_set and isinstance(evaluation, dict):
        model.evaluation_set = str(evaluation.get("set") or "")
    init = manifest.get("init")
    if not model.start and isinstance(init, dict) and isinstance(init.get("init"), str):
        model.start = init["init"]
    created = manifest.get("created_at")
    if not model.HasField("created_at") and isinstance(created, str):
        with contextlib.suppress(ValueError):
            model.created_at.FromDatetime(datetime.fromisoformat(created))


def _promotion_state(storage: Storage, namespace: str, name: str) -> promotion.PromotionState:
    """The model's promotion state; an unreadable log is logged and shows no status."""
    try:
        state = promotion.read(storage, namespace, name)
    except FailedPrecondition as exc:
        log.warning("unreadable promotion log skipped", model=f"{namespace}/{name}", error=str(exc))
        return promotion.PromotionState(namespace, name)
    metrics.observe_promotion(namespace, name, figures(state))
    return state


def list_models(storage: Storage, namespace: str) -> list[common_pb2.Model]:
    """Every ready version of every model of ``namespace``, by name then version."""
    serving = {
        (v.name, v.version): v.prefix
        for v in layout.finished(storage, namespace, area=layout.SERVING)
    }
    trained = {(v.name, v.version): v.prefix for v in layout.finished(storage, namespace)}
    out = []
    states: dict[str, promotion.PromotionState] = {}
    corrected: dict[str, dict[int, list[dict]]] = {}
    for name, version in sorted(set(serving) | set(trained)):
        model = common_pb2.Model(
            ref=common_pb2.ModelRef(namespace=namespace, name=name, version=version)
        )
        if name not in states:
            states[name] = _promotion_state(storage, namespace, name)
        model.status, model.status_reason = states[name].status(version)
        if (name, version) in serving:
            model.serving_path = serving[(name, version)]
            _fill(model, _manifest(storage, serving[(name, version)]))
        if (name, version) in trained:
            _fill(model, _manifest(storage, trained[(name, version)]))
        if name not in corrected:
            corrected[name] = layout.read_corrections(storage, namespace, name)
        model.metrics.update(correction_metrics(corrected[name].get(version, [])))
        out.append(model)
    return out


def correction_metrics(records: list[dict]) -> dict[str, float]:
    """What people corrected in ``records`` (one per completed CVAT job the version
    pre-annotated), as ``corrections/*`` metrics; none without records."""
    if not records:
        return {}
    total = Corrections.summed(records)
    return {
        "corrections/jobs": float(len(records)),
        "corrections/frames": float(total.frames),
        "corrections/objects": float(total.final),
        "corrections/per_frame": round(total.per_frame, 4),
        "corrections/per_100_objects": round(total.per_100_objects, 4),
        "corrections/deleted": float(total.deleted),
        "corrections/drawn": float(total.drawn),
        "corrections/moved": float(total.moved),
        "corrections/relabelled": float(total.relabelled),
    }


def serving_model(storage: Storage, namespace: str, name: str) -> common_pb2.ModelRef | None:
    """The version of ``name`` that serves (new-task pre-annotation uses it): the
    promoted one exported for serving (``preannotate.promotion``), or None."""
    versions = layout.finished_versions(storage, namespace, name, area=layout.SERVING)
    state = promotion.read(storage, namespace, name)
    metrics.observe_promotion(namespace, name, figures(state))
    version = state.serving_version(versions)
    if version is None:
        return None
    return common_pb2.ModelRef(namespace=namespace, name=name, version=version)


def _response(state: promotion.PromotionState, by: str, message: str):
    from preannotate.v1 import training_pb2

    return training_pb2.PromotionResponse(
        promoted=common_pb2.ModelRef(
            namespace=state.namespace, name=state.name, version=state.promoted
        ),
        previous=list(state.previous),
        by=by,
        message=message,
    )


def promote(storage: Storage, namespace: str, name: str, version: int, *, by: str, reason: str):
    """TrainingService.PromoteModel's core: the ``PromotionResponse``."""
    before = promotion.read(storage, namespace, name).promoted
    state = promotion.promote(storage, namespace, name, version, by=by, reason=reason)
    metrics.observe_promotion(namespace, name, figures(state))
    if before == version:
        return _response(state, "", f"{namespace}/{name}/{version} is already promoted")
    metrics.PROMOTIONS.labels("promote").inc()
    return _response(state, by, f"{namespace}/{name}/{version} promoted by {by}")


def rollback(storage: Storage, namespace: str, name: str, *, by: str, reason: str):
    """TrainingService.RollbackModel's core: the ``PromotionResponse``."""
    before = promotion.read(storage, namespace, name).promoted
    state = promotion.rollback(storage, namespace, name, by=by, reason=reason)
    metrics.PROMOTIONS.labels("rollback").inc()
    metrics.observe_promotion(namespace, name, figures(state))
    return _response(
        state,
        by,
        f"{namespace}/{name}: version {before} rolled back by {by}; "
        f"version {state.promoted} serves",
    )
