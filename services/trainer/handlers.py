"""The trainer's bus handler: ``train.jobs.<machine>`` (DatasetExported) -> ``model.trained``.

1. Validate before any work: the model type (catalog), the arguments (the same
   parser as the gateway, against this pool's GPUs), the base model's
   namespace, the classes, masks for Mask R-CNN. A refusal is
   ``InvalidArgument``: the runner sends the record to the DLQ and marks the
   job failed with the message.
2. Take the job's lease (``preannotate.lease``): one worker holds a job at a
   time. A lease another worker holds is waited for (``trainer_lease_wait_seconds``)
   and then refused with ``Unavailable``. A ``LeaseKeeper`` renews it while the
   job runs; it is released at the end. A worker whose lease another took
   stops at its next step and writes nothing more (``LeaseLost``, an
   ``Interrupted``: the record stays uncommitted), and publishes nothing.
3. Claim the model version (``job.claim``): the ``TrainingRun`` that every
   step of the job takes. A version of this job that is finished already (its
   manifest exists): emit the same ``ModelTrained`` again, do nothing else.
4. Count how long the job waited in its pool's queue (since its record's
   ``ce_time``: ``preannotate_trainer_queue_wait_seconds``), then run the job
   (``services.trainer.job``) in a thread; its progress reaches
   ``job.status`` through ``preannotate.progress.ThreadReports`` (a report
   that cannot be written is logged and counted, and training goes on), and
   the Prometheus gauges (``metrics``). ``ctx.cancel_requested`` stops it at
   the next step (``Cancelled``); ``ctx.stop_requested`` (shutdown)
   checkpoints and leaves the record for redelivery (``Interrupted``).
5. The promotion gate (``preannotate.promotion``), still holding the lease:
   the new version is promoted when its mAP@0.5 on the model's evaluation set
   is not below the promoted one's minus ``promotion_tolerance``, else it stays
   a candidate; the decision is logged once per version and counted
   (``preannotate_trainer_promotion_decisions_total``; the model's figures
   after it in ``preannotate_trainer_gate_*``), and the job's final message
   says it.

An event that names no namespace is the service's (``settings.namespace``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from preannotate import arguments, layout, modelmetrics, promotion, topics
from preannotate.catalog import Catalog, default_catalog
from preannotate.errors import InvalidArgument, NotFound
from preannotate.handler import Context, Outcome
from preannotate.keys import check_name, dataset_prefix, default_model_name
from preannotate.lease import Lease, LeaseKeeper, holder_id
from preannotate.progress import ThreadReports
from preannotate.storage.base import check_prefix
from preannotate.telemetry.promotion import figures
from preannotate.v1 import common_pb2, events_pb2
from services.trainer import job as job_lib
from services.trainer import metrics
from services.trainer.progress import TrainProgress
from services.trainer.run import TrainingRequest, TrainingRun
from services.trainer.settings import TrainerSettings

STAGE = events_pb2.JOB_STAGE_TRAIN


def validate(
    msg: events_pb2.DatasetExported, settings: TrainerSettings, catalog: Catalog
) -> TrainingRequest:
    """What the event asks for, or ``InvalidArgument`` saying what to change."""
    namespace = check_name(msg.namespace or settings.namespace, "namespace")
    job_id = check_name(msg.job_id, "job id")
    training = msg.training
    if not training.model_type:
        raise InvalidArgument(
            f"the job names no model type; choose one of: {', '.join(catalog.names())}"
        )
    entry = catalog.get(training.model_type)
    parsed = arguments.parse(
        training.arguments,
        entry,
        machine_gpus=settings.machine_gpus,
        requested_gpus=training.gpus,
    )
    base = (
        arguments.base_model_from_proto(training.base_model, namespace)
        if training.HasField("base_model")
        else None
    )
    classes = tuple(msg.classes)
    if not classes:
        raise InvalidArgument("the dataset has no classes: label some shapes in the CVAT task")
    if any(not name for name in classes):
        raise InvalidArgument("the dataset has a class with an empty name")
    if entry.has_masks and not msg.has_masks:
        raise InvalidArgument(
            f"{entry.name} learns instance masks, and this dataset has none: draw polygons or "
            "masks in CVAT, or pick a box model such as frcnn-res50-coco"
        )
    if msg.train.images < 1:
        raise InvalidArgument("the dataset's training split has no images")
    prefix = msg.dataset_prefix or dataset_prefix(namespace, job_id)
    check_prefix(prefix)
    if not prefix.startswith(f"{namespace}/datasets/"):
        raise InvalidArgument(
            f"dataset prefix {prefix!r} is not under {namespace}/datasets/: refusing to read it"
        )
    name = check_name(
        training.model_name or default_model_name(entry.name, msg.cvat.task_id), "model name"
    )
    origin: dict[str, Any] = {}
    if msg.cvat.task_id:
        origin["cvat_task_id"] = msg.cvat.task_id
    return TrainingRequest(
        job_id=job_id,
        namespace=namespace,
        entry=entry,
        arguments=parsed,
        base=base,
        model_name=name,
        dataset_prefix=prefix,
        classes=classes,
        train_images=int(msg.train.images),
        val_images=int(msg.val.images),
        has_masks=bool(msg.has_masks),
        origin=origin,
    )


def model_trained(
    msg: events_pb2.DatasetExported, trained: job_lib.TrainedModel
) -> events_pb2.ModelTrained:
    return events_pb2.ModelTrained(
        job_id=msg.job_id,
        namespace=trained.namespace,
        model=common_pb2.ModelRef(
            namespace=trained.namespace, name=trained.name, version=trained.version
        ),
        model_type=trained.model_type,
        model_prefix=trained.prefix,
        checkpoint=trained.checkpoint,
        classes=list(trained.classes),
        metrics=trained.metrics,
        steps=trained.steps,
        input_size=trained.input_size,
        dataset_prefix=msg.dataset_prefix,
        cvat=msg.cvat,
    )


class _JobReporter:
    """The job's ``Reporter``: its lines go to job.status, its progress to the gauges too."""

    def __init__(self, reports: ThreadReports, run: TrainingRun) -> None:
        self.reports, self.run = reports, run

    def status(self, message: str, details: dict[str, str]) -> None:
        self.reports.send(message=message, details=details)

    def progress(self, progress: TrainProgress, details: dict[str, str]) -> None:
        request = self.run.request
        metrics.observe(request.job_id, request.entry.name, progress)
        stage = f" (stage {progress.stage})" if progress.stage else ""
        self.reports.send(
            message=f"training: step {progress.step} of {progress.total}{stage}, "
            f"loss {progress.loss:.4f}",
            progress=progress.to_proto(),
            details=details,
        )


async def handle_dataset_exported(
    msg: events_pb2.DatasetExported,
    ctx: Context,
    *,
    settings: TrainerSettings,
    catalog: Catalog | None = None,
) -> Outcome:
    """Train the model a DatasetExported asks for; emit ``model.trained``."""
    catalog = catalog or default_catalog()
    request = validate(msg, settings, catalog)
    lease = Lease(
        ctx.storage,
        request.namespace,
        request.job_id,
        holder=holder_id("trainer"),
        ttl=settings.trainer_lease_seconds,
    )
    await asyncio.to_thread(
        lease.acquire, wait=settings.trainer_lease_wait_seconds, should_stop=ctx.stop_requested
    )
    try:
        with LeaseKeeper(lease) as keeper:
            trained = await _train(msg, ctx, request, settings, catalog, lease, keeper)
            await asyncio.to_thread(lease.check)
            decision = await _gate(ctx, trained, settings)
        await asyncio.to_thread(lease.check)  # publish only while this worker holds the job
    finally:
        await asyncio.to_thread(lease.release)
    return _outcome(msg, trained, decision)


def _measured(storage, namespace: str, name: str, version: int) -> promotion.Measured | None:
    """A finished version's metrics and evaluation set, from its manifest."""
    try:
        _, manifest = layout.resolve(storage, namespace, name, version)
    except NotFound:
        return None
    evaluation = manifest.get("evaluation") or {}
    return promotion.Measured(
        version,
        {k: float(v) for k, v in (manifest.get("metrics") or {}).items()},
        str(evaluation.get("set", "")) if isinstance(evaluation, dict) else "",
    )


async def _gate(
    ctx: Context, trained: job_lib.TrainedModel, settings: TrainerSettings
) -> promotion.Decision:
    """The promotion gate on the new version (once per version; a redelivery keeps it)."""
    evaluation = trained.manifest.get("evaluation") or {}
    candidate = promotion.Measured(trained.version, trained.metrics, str(evaluation.get("set", "")))
    decision, logged = await asyncio.to_thread(
        promotion.gate,
        ctx.storage,
        candidate,
        namespace=trained.namespace,
        name=trained.name,
        tolerance=settings.promotion_tolerance,
        measured=lambda v: _measured(ctx.storage, trained.namespace, trained.name, v),
    )
    if logged:
        metrics.PROMOTION_DECISIONS.labels("promoted" if decision.promote else "refused").inc()
    state = await asyncio.to_thread(promotion.read, ctx.storage, trained.namespace, trained.name)
    metrics.observe_gate(trained.namespace, trained.name, figures(state))
    ctx.log.info(
        "promotion gate",
        model=trained.prefix,
        promoted=decision.promote,
        reason=decision.reason,
    )
    return decision


async def _train(
    msg: events_pb2.DatasetExported,
    ctx: Context,
    request: TrainingRequest,
    settings: TrainerSettings,
    catalog: Catalog,
    lease: Lease,
    keeper: LeaseKeeper,
) -> job_lib.TrainedModel:
    """The job's model, with the lease held: found finished, or trained now."""
    run = await asyncio.to_thread(job_lib.claim, storage=ctx.storage, request=request)
    finished = await asyncio.to_thread(job_lib.find_finished, storage=ctx.storage, run=run)
    if finished is not None:
        ctx.log.info("model already trained for this job; re-emitting", model=finished.prefix)
        return finished

    model = common_pb2.ModelRef(
        namespace=request.namespace, name=request.model_name, version=run.version
    )
    metrics.observe_queue_wait(settings.machine_type, ctx.record.headers if ctx.record else None)
    reports = ThreadReports(ctx, asyncio.get_running_loop(), stage=STAGE, model=model)
    metrics.JOBS_RUNNING.inc()
    try:
        return await asyncio.to_thread(
            job_lib.train,
            storage=ctx.storage,
            settings=settings,
            run=run,
            catalog=catalog,
            reporter=_JobReporter(reports, run),
            should_stop=ctx.cancel_requested,
            should_interrupt=lambda: ctx.stop_requested() or keeper.lost,
            fence=lease.check,
        )
    finally:
        metrics.JOBS_RUNNING.dec()
        metrics.forget(request.job_id, request.entry.name)
        await reports.settle()


def _outcome(
    msg: events_pb2.DatasetExported, trained: job_lib.TrainedModel, decision: promotion.Decision
) -> Outcome:
    shown = [f"{k} {v:.3f}" for k, v in trained.metrics.items() if "mAP" in k]
    if modelmetrics.SUGGESTED_THRESHOLD in trained.metrics:
        shown.append(f"suggested threshold {trained.metrics[modelmetrics.SUGGESTED_THRESHOLD]:g}")
    metrics_text = ", ".join(shown)
    verdict = "promoted" if decision.promote else "a candidate, not promoted"
    message = (
        f"trained {trained.namespace}/{trained.name}/{trained.version} in {trained.steps} steps"
        + (f" ({metrics_text})" if metrics_text else "")
        + f"; {verdict}: {decision.reason}"
    )
    return Outcome.emit(topics.MODEL_TRAINED, model_trained(msg, trained), final_message=message)
