"""The inference service's core: what the Kafka handlers, the gRPC servicer and the
Nuclio routes all call. It imports neither grpc nor aiohttp's server side.

``InferenceApp`` is built from the settings before anything runs and started
by the runner's ``startup`` hook (which brings the storage and the bus): it
fills the model registry from the serving manifests in storage, starts the
backend and, for TF Serving, sends it the whole known model list once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from preannotate import events, keys, topics
from preannotate.cvat.refs import check_same_server, is_file_ref
from preannotate.errors import (
    Cancelled,
    Interrupted,
    InvalidArgument,
    PreannotateError,
    Unavailable,
)
from preannotate.modelmetrics import SUGGESTED_THRESHOLD
from preannotate.service import Resources
from preannotate.status import snapshot
from preannotate.telemetry.logging import get_logger
from preannotate.v1 import common_pb2, events_pb2
from services.inference import images, metrics, reviewstore, thresholds
from services.inference.annotate import Annotator, Progress
from services.inference.backends import Backend, make_backend
from services.inference.postprocess import Detected
from services.inference.predictor import Predictor
from services.inference.registry import ModelEntry, ModelRegistry, entry_from_event
from services.inference.runledger import RunLedger, run_key
from services.inference.settings import InferenceSettings
from services.inference.targets import open_target
from services.inference.targets.reviewed import OnRanked, RankedFrame, ReviewedTarget, reviewed
from services.inference.targets.tracked import tracked

SERVICE = "inference"
#: Least seconds between two progress reports of one run (job status, events).
REPORT_EVERY_SECONDS = 1.0
ProgressCallback = Callable[[Progress], Awaitable[None]]


@dataclass(frozen=True)
class AnnotationJob:
    """One pre-annotation run, as either transport asks for it."""

    job_id: str
    namespace: str
    cvat: common_pb2.CvatRef
    model: common_pb2.ModelRef
    threshold: float = 0.0
    mode: int = events_pb2.ANNOTATE_MODE_APPEND
    #: Who asked (the token's name over gRPC): recorded in the job's status details.
    requested_by: str = ""
    #: Write CVAT tracks (``targets.tracked``); a video task gets them anyway.
    tracks: bool = False
    #: Most review issues opened per CVAT job (``targets.reviewed``); 0: none.
    review_issues: int = 0
    #: Labels' own thresholds (``thresholds``); the others use ``threshold``.
    label_thresholds: Mapping[str, float] = field(default_factory=dict)


class InferenceApp:
    """Registry, backend, predictor and annotator of one inference process."""

    def __init__(self, settings: InferenceSettings) -> None:
        self.settings = settings
        self.log = get_logger(service=SERVICE)
        self.resources: Resources | None = None
        self.registry: ModelRegistry | None = None
        self.backend: Backend | None = None
        self.predictor: Predictor | None = None
        self.annotator: Annotator | None = None

    # -- lifecycle -----------------------------------------------------------------

    async def start(self, resources: Resources) -> None:
        self.resources = resources
        registry = ModelRegistry(resources.storage, log=self.log)
        found = await registry.refresh()
        await registry.refresh_promotions(force=True)  # TF Serving keeps the promoted loaded
        backend = make_backend(
            self.settings,
            resources.storage,
            registry.entries,
            registry.quarantine,
            pinned=registry.pinned,
        )
        await backend.start()
        s = self.settings
        self.predictor = Predictor(
            registry,
            backend,
            batch_size=s.inference_batch_size,
            batch_wait=s.inference_batch_wait_ms / 1000.0,
            concurrency=s.inference_concurrency,
            default_namespace=s.namespace,
        )
        self.annotator = Annotator(
            self.predictor,
            batch_size=s.inference_batch_size,
            fetch_concurrency=s.inference_fetch_concurrency,
            max_pixels=s.inference_max_image_pixels,
            data_wait_seconds=s.cvat_data_wait_seconds,
        )
        self.registry, self.backend = registry, backend
        metrics.MODELS_KNOWN.set(len(registry.entries()))
        self.log.info("models found in storage", count=found, backend=backend.name)
        try:
            await backend.sync()
        except PreannotateError as exc:  # not fatal: each model is made servable on use
            self.log.warning("backend not in sync at start", backend=backend.name, error=str(exc))

    async def stop(self) -> None:
        if self.predictor is not None:
            await self.predictor.close()
        if self.backend is not None:
            await self.backend.close()

    def _ready(self) -> tuple[ModelRegistry, Backend, Predictor, Annotator]:
        if self.registry is None or self.backend is None or self.predictor is None:
            raise Unavailable("the inference service is starting; try again in a moment")
        assert self.annotator is not None
        return self.registry, self.backend, self.predictor, self.annotator

    # -- models --------------------------------------------------------------------

    async def register(self, message: events_pb2.ModelConverted) -> tuple[ModelEntry, bool]:
        """Register a converted model and make it servable; (entry, whether new)."""
        registry, backend, _, _ = self._ready()
        entry = entry_from_event(message, default_namespace=self.settings.namespace)
        known = registry.get(*entry.key) is not None
        # Models other replicas registered are in storage: TF Serving's config
        # (replaced whole on reload) must keep them too.
        await registry.refresh()
        if not registry.add(entry):
            entry = registry.get(*entry.key) or entry
        await registry.refresh_promotions(entry.namespace, entry.name, force=True)
        metrics.MODELS_KNOWN.set(len(registry.entries()))
        await backend.prepare(entry)
        return entry, not known

    def models(self, namespace: str = "") -> list[ModelEntry]:
        registry, _, _, _ = self._ready()
        if namespace:
            keys.check_name(namespace, "namespace")
        return registry.entries(namespace or None)

    def latest(self) -> list[ModelEntry]:
        """The serving (promoted) version of every model."""
        registry, _, _, _ = self._ready()
        return registry.latest()

    async def refresh_promotions(self) -> None:
        """Read every model's promotion state from storage now."""
        registry, _, _, _ = self._ready()
        await registry.refresh_promotions(force=True)

    async def resolve(self, ref: common_pb2.ModelRef) -> ModelEntry:
        _, _, predictor, _ = self._ready()
        return await predictor.resolve(ref.namespace, ref.name, int(ref.version))

    def threshold(self, value: float, model: ModelEntry) -> float:
        """A request's threshold. 0 (unset): the model's suggested threshold (the best
        F1 on its validation split, ``services.trainer.evaluation``), else the
        configured default (a model trained without evaluation has none)."""
        if not 0 <= value <= 1:
            raise InvalidArgument(f"threshold {value} is not in 0..1")
        suggested = model.metrics.get(SUGGESTED_THRESHOLD, 0.0)
        return (
            value
            or (suggested if 0 < suggested <= 1 else 0)
            or self.settings.inference_default_threshold
        )

    # -- single images -------------------------------------------------------------

    async def predict(
        self, ref: common_pb2.ModelRef, data: bytes, threshold: float, what: str = "image"
    ) -> tuple[ModelEntry, int, int, list[Detected]]:
        """(model, width, height, detections) for one encoded image."""
        _, _, predictor, _ = self._ready()
        model = await self.resolve(ref)
        threshold = self.threshold(threshold, model)
        limit = self.settings.inference_max_image_pixels
        image = await asyncio.to_thread(images.decode, data, what, limit)  # off the event loop
        found = await predictor.detect_one(model, image, threshold)
        return model, image.width, image.height, found

    # -- annotation runs -----------------------------------------------------------

    async def annotate(
        self,
        job: AnnotationJob,
        on_progress: ProgressCallback | None = None,
        checkpoint: Callable[[], None] | None = None,
    ) -> events_pb2.TaskPreannotated:
        """Pre-annotate the target ``job.cvat`` names (a CVAT task or job, or a local
        folder with ``file://``); the counts as a ``TaskPreannotated``."""
        _, _, _, annotator = self._ready()
        ref = common_pb2.ModelRef()
        ref.CopyFrom(job.model)
        ref.namespace = ref.namespace or job.namespace
        model = await self.resolve(ref)
        threshold = self.threshold(job.threshold, model)
        cuts = thresholds.check(threshold, job.label_thresholds, model.classes)
        replace = job.mode == events_pb2.ANNOTATE_MODE_REPLACE
        target = open_target(self.settings, job.cvat, model, replace=replace)
        target = tracked(
            target,
            requested=job.tracks,
            threshold=threshold,
            label_thresholds=bool(cuts.labels),
        )
        target = reviewed(
            target,
            issues_per_job=job.review_issues,
            threshold=cuts.of,
            on_ranked=self._keep_ranking(job, model, cuts),
        )
        ledger = self._ledger(job, target.describe, model, cuts.key())
        outcome = "failed"
        try:
            result = await annotator.run(
                target,
                model,
                threshold,
                on_progress,
                checkpoint,
                ledger=ledger,
                label_thresholds=cuts.labels,
            )
            outcome = "succeeded"
        except (Cancelled, asyncio.CancelledError):
            outcome = "cancelled"
            raise
        except Interrupted:
            outcome = "interrupted"
            raise
        finally:
            metrics.RUNS.labels(target.kind, outcome).inc()
            await target.close()
        self.log.info(
            "pre-annotated",
            job_id=job.job_id,
            target=target.describe,
            model=model.label,
            threshold=threshold,
            frames=result.frames_done,
            shapes=result.shapes_written,
            skipped=len(result.skipped),
            seconds=round(result.seconds, 2),
            review_issues=len(target.opened) if isinstance(target, ReviewedTarget) else 0,
        )
        return events_pb2.TaskPreannotated(
            job_id=job.job_id,
            namespace=job.namespace,
            cvat=job.cvat,
            model=model.ref,
            frames_total=result.frames_total,
            frames_done=result.frames_done,
            shapes_written=result.shapes_written,
            skipped=[events_pb2.SkippedFrame(frame=f, reason=r) for f, r in result.skipped],
            unmatched_classes=list(result.unmatched_classes),
            threshold=threshold,
        )

    def _ledger(
        self, job: AnnotationJob, target: str, model: ModelEntry, threshold: str
    ) -> RunLedger | None:
        """The run's write ledger (``runledger``): one per job id and what it asks."""
        if self.resources is None or not job.job_id:
            return None
        key = run_key(target, job.cvat.url, job.cvat.organization, model.label, job.mode, threshold)
        return RunLedger(self.resources.storage, job.namespace, job.job_id, key)

    def _keep_ranking(
        self, job: AnnotationJob, model: ModelEntry, cuts: thresholds.Thresholds
    ) -> OnRanked | None:
        """What keeps a CVAT run's ranking of frames in storage (``reviewstore``), for
        ``review`` to read back; None without storage (embedded tests) or for a folder."""
        resources = self.resources
        if resources is None or is_file_ref(job.cvat.url):
            return None

        async def keep(ranked: list[RankedFrame], frames_ranked: int) -> None:
            ref = model.ref
            data = reviewstore.record(
                task_id=int(job.cvat.task_id),
                cvat_url=self.settings.cvat_url,
                cvat_job_id=int(job.cvat.job_id),
                namespace=job.namespace,
                model={"namespace": ref.namespace, "name": ref.name, "version": ref.version},
                job_id=job.job_id,
                threshold=cuts.default,
                label_thresholds=cuts.labels,
                cut=cuts.of,
                issues_per_job=job.review_issues,
                frames_ranked=frames_ranked,
                ranked=ranked,
            )
            try:
                await asyncio.to_thread(reviewstore.save, resources.storage, data)
            except PreannotateError as exc:  # the shapes are in CVAT: the run stands
                self.log.warning(
                    "the run's ranking of frames was not kept",
                    job_id=job.job_id,
                    task_id=job.cvat.task_id,
                    error=str(exc),
                )

        return keep

    async def review(self, namespace: str, ref: common_pb2.CvatRef) -> dict[str, Any]:
        """The ranking the newest run of the CVAT task ``ref`` kept (``reviewstore``);
        ``NotFound`` before any run."""
        if self.resources is None:
            raise Unavailable("the inference service is starting; try again in a moment")
        namespace = keys.check_name(namespace or self.settings.namespace, "namespace")
        if is_file_ref(ref.url):
            raise InvalidArgument(
                f"{ref.url!r}: rankings are kept for CVAT tasks only; name a CVAT task "
                "(cvat.task_id)"
            )
        if ref.task_id <= 0:
            raise InvalidArgument("no CVAT task named: set cvat.task_id")
        check_same_server(ref.url, self.settings.cvat_url)
        return await asyncio.to_thread(
            reviewstore.load,
            self.resources.storage,
            namespace,
            self.settings.cvat_url,
            int(ref.task_id),
        )

    async def annotate_now(
        self, job: AnnotationJob, on_progress: ProgressCallback | None = None
    ) -> events_pb2.TaskPreannotated:
        """A run asked for directly (gRPC): job status written as it goes, and
        ``task.preannotated`` published at the end, as the event path does."""
        writer = self.resources.status_writer if self.resources is not None else None
        request = events_pb2.AnnotationRequested(
            job_id=job.job_id, namespace=job.namespace, cvat=job.cvat, model=job.model
        )
        last = 0.0

        async def status(state: int, text: str, progress: Progress | None = None) -> None:
            if writer is None:
                return
            counts = None
            if progress is not None:
                counts = events_pb2.Progress(step=progress.frames_done, total=progress.frames_total)
            await writer.write(
                snapshot(
                    request,
                    stage=events_pb2.JOB_STAGE_ANNOTATE,
                    state=state,
                    text=text,
                    progress=counts,
                    details={"requested_by": job.requested_by} if job.requested_by else None,
                )
            )

        async def relay(progress: Progress) -> None:
            nonlocal last
            if on_progress is not None:
                await on_progress(progress)
            now = time.monotonic()
            if now - last >= REPORT_EVERY_SECONDS and not progress.done:
                last = now
                await status(events_pb2.JOB_STATE_RUNNING, describe(progress), progress)

        await status(events_pb2.JOB_STATE_RUNNING, "pre-annotating")
        try:
            done = await self.annotate(job, relay)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await status(events_pb2.JOB_STATE_CANCELLED, "the client went away; run stopped")
            raise
        except PreannotateError as exc:
            await status(events_pb2.JOB_STATE_FAILED, str(exc))
            raise
        except Exception:
            await status(events_pb2.JOB_STATE_FAILED, "internal error in inference; see its logs")
            raise
        await status(events_pb2.JOB_STATE_SUCCEEDED, describe_done(done))
        if self.resources is not None:
            await events.publish(self.resources.bus, topics.TASK_PREANNOTATED, done, source=SERVICE)
        return done


def new_job_id() -> str:
    return f"annotate-{uuid.uuid4().hex[:16]}"


def check_job_id(job_id: str) -> str:
    return keys.check_name(job_id, "job id") if job_id else new_job_id()


def describe(progress: Progress) -> str:
    if progress.waiting:
        return progress.waiting
    return (
        f"{progress.frames_done} of {progress.frames_total} frames, "
        f"{progress.shapes_written} shapes, {progress.frames_skipped} skipped"
    )


def describe_done(done: events_pb2.TaskPreannotated) -> str:
    text = f"wrote {done.shapes_written} shapes on {done.frames_done} of {done.frames_total} frames"
    if done.skipped:
        text += f"; {len(done.skipped)} frames skipped"
    if done.unmatched_classes:
        text += f"; classes without a task label: {', '.join(done.unmatched_classes)}"
    return text
