"""gRPC ``preannotate.v1.InferenceService``: a thin layer over ``InferenceApp``.

Each method parses the request, checks that the caller may use the namespace
(``preannotate.auth.caller()``; open without a tokens file), calls the core,
and maps the result. AnnotateTask's caller-chosen ``job_id`` is refused when
another namespace's job (or a training job) holds it (``StatusView.claim``),
and the caller's name is recorded as the job's ``requested_by``. GetReview
reads the ranking the task's newest run kept (``reviewstore``), after the same
namespace and CVAT-scope checks as AnnotateTask. Errors are
``preannotate.errors`` exceptions; ``preannotate.grpc_errors.ErrorInterceptor``
(mounted by ``service.build``) turns them into status codes in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from preannotate.auth import caller
from preannotate.cvat.refs import is_file_ref
from preannotate.cvat.scope import check_task
from preannotate.errors import InvalidArgument, PreannotateError
from preannotate.status import claim_job_id
from preannotate.v1 import common_pb2, events_pb2, inference_pb2, inference_pb2_grpc
from services.inference import reviewstore
from services.inference.annotate import Progress
from services.inference.app import AnnotationJob, InferenceApp, check_job_id
from services.inference.limits import RequestLimit
from services.inference.postprocess import Detected
from services.inference.registry import ModelEntry
from services.inference.shapes import to_proto
from services.inference.targets import check_target_ref

_DONE = object()


def predict_response(
    request_id: str, model: ModelEntry, width: int, height: int, found: list[Detected]
) -> inference_pb2.PredictResponse:
    return inference_pb2.PredictResponse(
        id=request_id,
        model=model.ref,
        image_width=width,
        image_height=height,
        detections=[to_proto(d) for d in found],
    )


def review_response(data: dict[str, Any], limit: int = 0) -> inference_pb2.GetReviewResponse:
    """A kept ranking (``reviewstore``) as GetReview's answer: the first ``limit``
    frames (0: all), each with its link into CVAT's web UI."""
    if limit < 0:
        raise InvalidArgument(f"limit must be 0 (all) or more, got {limit}")
    frames = data["frames"]
    task_id = int(data["task_id"])
    answer = inference_pb2.GetReviewResponse(
        cvat=common_pb2.CvatRef(
            url=data["cvat_url"], task_id=task_id, job_id=int(data.get("cvat_job_id", 0))
        ),
        namespace=data["namespace"],
        model=common_pb2.ModelRef(**data["model"]),
        job_id=data["job_id"],
        threshold=data["threshold"],
        label_thresholds=data["label_thresholds"],
        band=data["band"],
        issues_per_job=data["issues_per_job"],
        frames_ranked=data["frames_ranked"],
        frames_doubtful=len(frames),
    )
    answer.created_at.FromDatetime(
        datetime.fromisoformat(data["created_at"].replace("Z", "+00:00"))
    )
    for rank, item in enumerate(frames[: limit or None], start=1):
        out = answer.frames.add(
            rank=rank,
            frame=item["frame"],
            cvat_job_id=item["job"],
            doubt=item["doubt"],
            shapes_written=item["written"],
            issue_opened=item["issue_opened"],
            link=reviewstore.frame_link(data["cvat_url"], task_id, item["job"], item["frame"]),
        )
        worst = item["worst"]
        if worst is not None:
            x1, y1, x2, y2 = worst["box"]
            out.worst.CopyFrom(
                inference_pb2.DoubtfulDetection(
                    label=worst["label"],
                    score=worst["score"],
                    x1=x1,
                    y1=y1,
                    x2=x2,
                    y2=y2,
                    written=worst["written"],
                )
            )
    return answer


def progress_message(job_id: str, p: Progress) -> inference_pb2.AnnotateTaskProgress:
    return inference_pb2.AnnotateTaskProgress(
        job_id=job_id,
        frames_total=p.frames_total,
        frames_done=p.frames_done,
        shapes_written=p.shapes_written,
        frames_skipped=p.frames_skipped,
        skipped=[events_pb2.SkippedFrame(frame=f, reason=r) for f, r in p.skipped],
        unmatched_classes=list(p.unmatched_classes),
        done=p.done,
    )


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, app: InferenceApp) -> None:
        self.app = app
        #: Predict calls and open StreamPredict calls, together.
        self.limit = RequestLimit(app.settings.inference_max_concurrent_requests)

    def _allowed(self, ref: common_pb2.ModelRef) -> None:
        caller().check(ref.namespace or self.app.settings.namespace)

    async def _claim(self, job: AnnotationJob) -> None:
        """A job id the caller chose must not be another namespace's (or a training job's):
        not in the status view, and held for this namespace in storage (``claim_job_id``)."""
        resources = self.app.resources
        if resources is None:
            return
        kind = events_pb2.JOB_KIND_ANNOTATION
        if resources.status_view is not None:
            resources.status_view.claim(job.job_id, job.namespace, kind)
        await asyncio.to_thread(claim_job_id, resources.storage, job.job_id, job.namespace, kind)

    async def Predict(self, request, context):
        self._allowed(request.model)
        async with self.limit.slot(context):
            model, width, height, found = await self.app.predict(
                request.model, request.image, request.threshold
            )
        return predict_response(request.id, model, width, height, found)

    async def StreamPredict(self, request_iterator, context) -> AsyncIterator:
        """Answers leave as they finish (not in request order), matched by ``id``;
        at most ``inference_stream_window`` images are in flight or answered and
        not yet sent: a client that does not read stops the reading of requests."""
        async with self.limit.slot(context):
            async for answer in self._stream(request_iterator):
                yield answer

    async def _stream(self, request_iterator) -> AsyncIterator:
        size = self.app.settings.inference_stream_window
        window = asyncio.Semaphore(size)
        # every answer holds a window slot until it is sent: at most ``size``, and _DONE
        answers: asyncio.Queue = asyncio.Queue(maxsize=size + 1)
        running: set[asyncio.Task] = set()

        async def one(request) -> None:
            try:
                self._allowed(request.model)
                model, width, height, found = await self.app.predict(
                    request.model, request.image, request.threshold, f"image {request.id!r}"
                )
                answers.put_nowait(predict_response(request.id, model, width, height, found))
            except PreannotateError as exc:
                answers.put_nowait(type(exc)(f"image {request.id!r}: {exc}"))
            except Exception as exc:  # handed to the interceptor, which logs and hides it
                answers.put_nowait(exc)

        async def read() -> None:
            async for request in request_iterator:
                await window.acquire()
                task = asyncio.create_task(one(request))
                running.add(task)
                task.add_done_callback(running.discard)
            while running:
                await asyncio.gather(*list(running), return_exceptions=True)
            answers.put_nowait(_DONE)

        reader = asyncio.create_task(read())
        try:
            while True:
                get = asyncio.ensure_future(answers.get())
                await asyncio.wait({get, reader}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    if reader.exception() is not None:
                        raise reader.exception()  # type: ignore[misc]
                    continue
                item = get.result()
                if item is _DONE:
                    return
                window.release()  # its answer leaves the queue
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            for task in [reader, *running]:
                task.cancel()
            for task in [reader, *running]:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def AnnotateTask(self, request, context) -> AsyncIterator:
        if request.mode not in events_pb2.AnnotateMode.values():
            raise InvalidArgument(f"mode {request.mode} is not an AnnotateMode")
        self._allowed(request.model)
        check_target_ref(self.app.settings, request.cvat)  # before any status is written
        await check_task(caller(), request.cvat, self.app.settings)
        job = AnnotationJob(
            job_id=check_job_id(request.job_id),
            namespace=request.model.namespace or self.app.settings.namespace,
            cvat=request.cvat,
            model=request.model,
            threshold=request.threshold,
            mode=request.mode or events_pb2.ANNOTATE_MODE_APPEND,
            requested_by=caller().caller,
            tracks=request.tracks,
            review_issues=request.review_issues,
            label_thresholds=dict(request.label_thresholds),
        )
        await self._claim(job)
        updates: asyncio.Queue = asyncio.Queue()

        async def on_progress(p: Progress) -> None:
            updates.put_nowait(progress_message(job.job_id, p))

        run = asyncio.create_task(self.app.annotate_now(job, on_progress))
        try:
            while True:
                get = asyncio.ensure_future(updates.get())
                await asyncio.wait({get, run}, return_when=asyncio.FIRST_COMPLETED)
                if get.done():
                    yield get.result()
                    continue
                get.cancel()
                run.result()  # raises the run's error
                while not updates.empty():
                    yield updates.get_nowait()
                return
        finally:
            if not run.done():
                run.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await run

    async def ListModels(self, request, context):
        visible = caller().visible(request.namespace)
        models = self.app.models(request.namespace)
        if visible is not None:
            models = [m for m in models if m.namespace in visible]
        return common_pb2.ListModelsResponse(models=[m.to_proto() for m in models])

    async def GetReview(self, request, context):
        namespace = request.namespace or self.app.settings.namespace
        caller().check(namespace)
        if request.limit < 0:
            raise InvalidArgument(f"limit must be 0 (all) or more, got {request.limit}")
        if request.cvat.task_id <= 0 and not is_file_ref(request.cvat.url):
            raise InvalidArgument("no CVAT task named: set cvat.task_id")
        check_target_ref(self.app.settings, request.cvat)
        await check_task(caller(), request.cvat, self.app.settings)
        data = await self.app.review(namespace, request.cvat)
        return review_response(data, request.limit)
