"""Pre-annotating a CVAT task (or one job of it): the one domain function behind
gRPC AnnotateTask and the ``annotation.requested`` event.

1. Read the task's data meta, labels and jobs. Model classes map to task
   labels by name; classes without a label are reported and their detections
   dropped (no class matching at all is an error: nothing could be written).
2. Replace mode: delete the shapes with ``source: "auto"`` from each job first.
3. A pipeline of three stages that overlap: frames are downloaded and decoded
   concurrently (at most ``fetch_concurrency`` at once, a bounded window ahead
   of the model); the model runs on batches of ``batch_size``; each batch's
   shapes are PATCHed to the jobs that hold their frames while the next batch
   runs. A frame that fails to download or decode is skipped with the reason;
   it does not fail the run.
4. Before each batch ``checkpoint()`` may stop the run (cancel, shutdown).
5. Progress goes to a callback after every written batch (``skipped`` holds
   the frames skipped since the previous call), and once more with ``done``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from preannotate.errors import InvalidArgument, NotFound
from services.inference import images
from services.inference.backends.base import ImageInput
from services.inference.cvat import CvatClient, is_frame_problem
from services.inference.postprocess import detections
from services.inference.predictor import Predictor
from services.inference.registry import ModelEntry
from services.inference.shapes import cvat_shape


@dataclass(frozen=True)
class AnnotateOptions:
    task_id: int
    #: One job of the task; 0: every job.
    job_id: int = 0
    threshold: float = 0.5
    #: Remove earlier automatic shapes first.
    replace: bool = False
    #: Mask R-CNN shapes: "mask" or "polygon".
    mask_shape: str = "mask"


@dataclass
class Progress:
    frames_total: int
    frames_done: int = 0
    shapes_written: int = 0
    frames_skipped: int = 0
    #: Frames skipped since the previous report: (frame, reason).
    skipped: list[tuple[int, str]] = field(default_factory=list)
    unmatched_classes: tuple[str, ...] = ()
    done: bool = False


@dataclass
class AnnotateResult:
    frames_total: int
    frames_done: int
    shapes_written: int
    skipped: list[tuple[int, str]]
    unmatched_classes: tuple[str, ...]
    shapes_deleted: int = 0
    #: Shapes written per CVAT job id.
    per_job: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0


ProgressCallback = Callable[[Progress], Awaitable[None]]


@dataclass
class _Batch:
    frames: list[int]
    shapes: dict[int, list[dict[str, Any]]]  # job id -> shapes
    skipped: list[tuple[int, str]]


def frame_jobs(jobs: Sequence[dict[str, Any]], only_job: int = 0) -> dict[int, int]:
    """Frame -> the annotation job that holds it (the first, where segments overlap)."""
    owners: dict[int, int] = {}
    picked = [j for j in jobs if j.get("type", "annotation") == "annotation"]
    if only_job:
        picked = [j for j in picked if j["id"] == only_job]
        if not picked:
            known = sorted(j["id"] for j in jobs)
            raise NotFound(f"job {only_job} is not an annotation job of this task; jobs: {known}")
    for job in sorted(picked, key=lambda j: (j["start_frame"], j["id"])):
        for frame in range(job["start_frame"], job["stop_frame"] + 1):
            owners.setdefault(frame, job["id"])
    return owners


def label_ids(
    model: ModelEntry, labels: Sequence[dict[str, Any]]
) -> tuple[dict[str, int], tuple[str, ...]]:
    """(model class -> task label id, model classes with no task label of that name)."""
    by_name = {lb["name"]: lb["id"] for lb in labels if not lb.get("parent_id")}
    mapping = {c: by_name[c] for c in model.classes if c in by_name}
    unmatched = tuple(c for c in model.classes if c not in by_name)
    if not mapping:
        raise InvalidArgument(
            f"none of model {model.label}'s classes ({', '.join(model.classes)}) is a label of "
            f"the task (labels: {', '.join(sorted(by_name)) or 'none'}); add labels with those "
            "names to the task, or use another model"
        )
    return mapping, unmatched


class Annotator:
    """Runs pre-annotation runs; holds no per-run state."""

    def __init__(
        self,
        predictor: Predictor,
        *,
        batch_size: int = 8,
        fetch_concurrency: int = 8,
        frame_quality: str = "original",
    ) -> None:
        self.predictor = predictor
        self.batch_size = batch_size
        self.fetch_concurrency = fetch_concurrency
        self.frame_quality = frame_quality

    async def run(
        self,
        cvat: CvatClient,
        model: ModelEntry,
        options: AnnotateOptions,
        on_progress: ProgressCallback | None = None,
        checkpoint: Callable[[], None] | None = None,
    ) -> AnnotateResult:
        """Run one pre-annotation; ``checkpoint()`` is called before each batch and
        may raise (``Cancelled``, ``Interrupted``) to stop the run there."""
        started = time.perf_counter()
        if not 0 <= options.threshold <= 1:
            raise InvalidArgument(f"threshold {options.threshold} is not in 0..1")
        meta, labels, jobs = await asyncio.gather(
            cvat.data_meta(options.task_id),
            cvat.labels(options.task_id),
            cvat.jobs(options.task_id),
        )
        mapping, unmatched = label_ids(model, labels)
        owners = frame_jobs(jobs, options.job_id)
        deleted = set(meta.get("deleted_frames") or ())
        frames = [f for f in range(int(meta["size"])) if f not in deleted and f in owners]

        result = AnnotateResult(len(frames), 0, 0, [], unmatched)
        if options.replace:
            for job_id in sorted(set(owners[f] for f in frames)):
                result.shapes_deleted += await self._delete_auto(cvat, job_id)

        progress = Progress(frames_total=len(frames), unmatched_classes=unmatched)
        writes: asyncio.Queue[_Batch | None] = asyncio.Queue(maxsize=2)

        async def report() -> None:
            if on_progress is not None:
                await on_progress(progress)
            progress.skipped = []

        async def writer() -> None:
            while (batch := await writes.get()) is not None:
                for job_id in sorted(batch.shapes):
                    written = await cvat.patch_shapes(job_id, "create", batch.shapes[job_id])
                    result.per_job[job_id] = result.per_job.get(job_id, 0) + written
                    result.shapes_written += written
                result.frames_done += len(batch.frames)
                result.skipped += batch.skipped
                progress.frames_done = result.frames_done
                progress.shapes_written = result.shapes_written
                progress.frames_skipped = len(result.skipped)
                progress.skipped += batch.skipped
                await report()

        write_task = asyncio.create_task(writer())
        frames_iter = self._fetched(cvat, options.task_id, frames)
        try:
            async for batch_frames, batch_images, skipped in self._batches(frames_iter):
                if checkpoint is not None:
                    checkpoint()
                shapes: dict[int, list[dict[str, Any]]] = {}
                if batch_images:
                    raws = await self.predictor.raw(model, batch_images)
                    for frame, image, raw in zip(batch_frames, batch_images, raws, strict=True):
                        found = detections(raw, model, image.width, image.height, options.threshold)
                        job_id = owners[frame]
                        for det in found:
                            if det.label not in mapping:
                                continue
                            kind = options.mask_shape if model.has_masks else "rectangle"
                            shape = cvat_shape(
                                det, frame, image.width, image.height, mapping[det.label], kind
                            )
                            if shape is not None:
                                shapes.setdefault(job_id, []).append(shape)
                await self._put(writes, write_task, _Batch(batch_frames, shapes, skipped))
            await self._put(writes, write_task, None)
            await write_task
        finally:
            await frames_iter.aclose()
            if not write_task.done():
                write_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await write_task

        progress.done = True
        await report()
        result.seconds = time.perf_counter() - started
        return result

    @staticmethod
    async def _put(queue: asyncio.Queue, writer: asyncio.Task, item: Any) -> None:
        """Queue ``item`` for the writer, failing at once if the writer failed."""
        put = asyncio.ensure_future(queue.put(item))
        await asyncio.wait({put, writer}, return_when=asyncio.FIRST_COMPLETED)
        if writer.done() and not put.done():
            put.cancel()
        if writer.done() and writer.exception() is not None:
            raise writer.exception()  # type: ignore[misc]

    async def _delete_auto(self, cvat: CvatClient, job_id: int) -> int:
        data = await cvat.job_annotations(job_id)
        auto = [s for s in data.get("shapes", []) if s.get("source") == "auto"]
        if not auto:
            return 0
        return await cvat.patch_shapes(job_id, "delete", auto)

    async def _fetch(
        self, cvat: CvatClient, task_id: int, frame: int, slots: asyncio.Semaphore
    ) -> tuple[int, ImageInput | None, str]:
        async with slots:
            try:
                data = await cvat.frame(task_id, frame, self.frame_quality)
                image = await asyncio.to_thread(images.decode, data, f"frame {frame}")
            except Exception as exc:
                if not is_frame_problem(exc):
                    raise
                return frame, None, str(exc)
        return frame, image, ""

    async def _fetched(
        self, cvat: CvatClient, task_id: int, frames: Sequence[int]
    ) -> AsyncIterator[tuple[int, ImageInput | None, str]]:
        """(frame, image or None, why not) in frame order, fetched ahead in a bounded window."""
        slots = asyncio.Semaphore(self.fetch_concurrency)
        window = self.fetch_concurrency + 2 * self.batch_size
        todo = iter(frames)
        pending: deque[asyncio.Task] = deque()
        try:
            for frame in todo:
                pending.append(asyncio.create_task(self._fetch(cvat, task_id, frame, slots)))
                if len(pending) >= window:
                    break
            while pending:
                item = await pending.popleft()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(asyncio.create_task(self._fetch(cvat, task_id, nxt, slots)))
                yield item
        finally:
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _batches(
        self, fetched: AsyncIterator[tuple[int, ImageInput | None, str]]
    ) -> AsyncIterator[tuple[list[int], list[ImageInput], list[tuple[int, str]]]]:
        """Batches of up to ``batch_size`` decoded frames, with the frames skipped on the way."""
        frames: list[int] = []
        batch: list[ImageInput] = []
        skipped: list[tuple[int, str]] = []
        async for frame, image, reason in fetched:
            if image is None:
                skipped.append((frame, reason))
            else:
                frames.append(frame)
                batch.append(image)
            if len(batch) >= self.batch_size:
                yield frames, batch, skipped
                frames, batch, skipped = [], [], []
        if batch or skipped:
            yield frames, batch, skipped
