"""The inference service's Kafka handlers (see ``preannotate.handler``).

- ``model.converted``: register the model and make it servable (TF Serving:
  added to the config, waited for until AVAILABLE). Routed to every replica
  (``broadcast``), with ``once=False`` and ``status=False``: each replica must
  register the model, registering twice is harmless, and the job's status is
  the converter's.
- ``annotation.requested``: pre-annotate the CVAT task or local folder
  (``InferenceApp.annotate``, the same work as gRPC AnnotateTask), report
  progress on job.status (while a new task's data is still being processed
  by CVAT: "waiting for CVAT to finish the task's data: ..."), and emit
  ``task.preannotated`` with the counts. A
  redelivered record resumes its run from the write ledger
  (``services.inference.runledger``): shapes are written once per frame.
"""

from __future__ import annotations

import time

from preannotate import topics
from preannotate.cvat import is_file_ref
from preannotate.errors import Cancelled, Interrupted
from preannotate.handler import Context, Outcome
from preannotate.v1 import events_pb2
from services.inference.annotate import Progress
from services.inference.app import (
    REPORT_EVERY_SECONDS,
    AnnotationJob,
    InferenceApp,
    describe,
    describe_done,
)


def checkpoint(msg: events_pb2.AnnotationRequested, ctx: Context) -> None:
    """Stop a run between batches: a user's cancel, or the service shutting down
    (the record is then left for redelivery; the run's write ledger makes the
    rerun resume after the frames already written, see ``runledger``)."""
    if ctx.cancel_requested():
        what = msg.cvat.url if is_file_ref(msg.cvat.url) else f"CVAT task {msg.cvat.task_id}"
        raise Cancelled(f"pre-annotation of {what} cancelled")
    if ctx.stop_requested():
        raise Interrupted("the inference service is shutting down")


class InferenceHandlers:
    """Bound handlers over one ``InferenceApp``."""

    def __init__(self, app: InferenceApp) -> None:
        self.app = app

    async def handle_model_converted(self, msg: events_pb2.ModelConverted, ctx: Context) -> Outcome:
        entry, added = await self.app.register(msg)
        ctx.log.info(
            "model registered" if added else "model known already; made servable again",
            model=entry.label,
            classes=len(entry.classes),
        )
        return Outcome.nothing()

    async def handle_annotation_requested(
        self, msg: events_pb2.AnnotationRequested, ctx: Context
    ) -> Outcome:
        last = 0.0
        said = ""
        started = time.monotonic()

        async def report(progress: Progress) -> None:
            nonlocal last, said, started
            now = time.monotonic()
            if progress.waiting:
                if progress.waiting != said or now - last >= REPORT_EVERY_SECONDS:
                    last, said = now, progress.waiting
                    await ctx.report(stage=events_pb2.JOB_STAGE_ANNOTATE, message=said)
                started = now  # the rate counts from when frames can be read
                return
            if progress.done or now - last < REPORT_EVERY_SECONDS:
                return
            last = now
            rate = progress.frames_done / max(now - started, 1e-6)
            await ctx.report(
                stage=events_pb2.JOB_STAGE_ANNOTATE,
                message=describe(progress),
                progress=events_pb2.Progress(
                    step=progress.frames_done,
                    total=progress.frames_total,
                    images_per_second=rate,
                ),
                details={
                    "shapes_written": str(progress.shapes_written),
                    "frames_skipped": str(progress.frames_skipped),
                },
            )

        await ctx.report(stage=events_pb2.JOB_STAGE_ANNOTATE, message="pre-annotating")
        done = await self.app.annotate(
            AnnotationJob(
                job_id=msg.job_id,
                namespace=msg.namespace or self.app.settings.namespace,
                cvat=msg.cvat,
                model=msg.model,
                threshold=msg.threshold,
                mode=msg.mode,
                tracks=msg.tracks,
                review_issues=msg.review_issues,
                label_thresholds=dict(msg.label_thresholds),
            ),
            on_progress=report,
            checkpoint=lambda: checkpoint(msg, ctx),
        )
        return Outcome.emit(topics.TASK_PREANNOTATED, done, final_message=describe_done(done))
