"""Pre-annotating a target (a CVAT task or job, or a local folder; see
``services.inference.targets``): the one domain function behind gRPC
AnnotateTask and the ``annotation.requested`` event.

0. Wait for the target's frames (``target.pending``): a CVAT task announced by
   ``create:task`` has no data yet, and its frames and jobs appear only once
   CVAT has processed the upload. Polled with a backoff (``WAIT_FIRST_SECONDS``
   doubling up to ``WAIT_MAX_SECONDS``) for at most ``data_wait_seconds``,
   reporting why on the progress callback (``Progress.waiting``) and calling
   ``checkpoint()`` between polls; past the limit the run fails
   (``FailedPrecondition``) with what CVAT was at.
1. Read the target's labels and frames. Model classes map to labels by name;
   classes without a label are reported and their detections dropped (no
   class matching at all is an error: nothing could be written).
2. ``target.prepare``: replace mode removes the earlier automatic shapes.
3. A pipeline of three stages that overlap: frames are fetched and decoded
   concurrently (at most ``fetch_concurrency`` at once, a bounded window ahead
   of the model); the model runs on batches of ``batch_size``; each batch's
   results are written to the target while the next batch runs. A frame that
   cannot be fetched or decoded is skipped with the reason; it does not fail
   the run. ``target.finish`` follows the last write.
4. Before each batch ``checkpoint()`` may stop the run (cancel, shutdown).
5. Progress goes to a callback after every written batch (``skipped`` holds
   the frames skipped since the previous call), and once more with ``done``.
6. With a ``RunLedger`` (``services.inference.runledger``) the run is
   idempotent: every durable write is recorded after it succeeds, and a rerun
   of the same run (a redelivered ``annotation.requested``) reads the records
   first: a finished run answers its recorded result and writes nothing; on a
   resumable target (CVAT) an unfinished one skips replace mode's removal if
   it was done and the frames already written, so each frame gets its shapes
   once. A folder target is written whole at the end, so its rerun starts
   over and only the finished record counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from preannotate.errors import FailedPrecondition, InvalidArgument
from services.inference import images, metrics, thresholds
from services.inference.backends.base import ImageInput
from services.inference.predictor import Predictor
from services.inference.registry import ModelEntry
from services.inference.runledger import RunLedger, RunState
from services.inference.targets import FrameResult, Target, is_frame_problem
from services.inference.targets.tracked import detection_floor

#: First wait between two checks of a target's data, doubled after each check.
WAIT_FIRST_SECONDS = 0.5
#: Longest wait between two checks.
WAIT_MAX_SECONDS = 15.0
#: What names the wait limit in messages.
DATA_WAIT_SETTING = "PREANNOTATE_CVAT_DATA_WAIT_SECONDS"


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
    #: While the run waits for the target's data: why (for the job status).
    waiting: str = ""


@dataclass
class AnnotateResult:
    frames_total: int
    frames_done: int
    shapes_written: int
    skipped: list[tuple[int, str]]
    unmatched_classes: tuple[str, ...]
    shapes_deleted: int = 0
    seconds: float = 0.0


ProgressCallback = Callable[[Progress], Awaitable[None]]


@dataclass
class _Batch:
    frames: list[int]
    results: list[FrameResult]
    skipped: list[tuple[int, str]]


def label_ids(
    model: ModelEntry, labels: Sequence[dict[str, Any]]
) -> tuple[dict[str, int], tuple[str, ...]]:
    """(model class -> label id, model classes with no label of that name)."""
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
        max_pixels: int = images.DEFAULT_MAX_PIXELS,
        data_wait_seconds: float = 1800.0,
    ) -> None:
        self.predictor = predictor
        self.batch_size = batch_size
        self.fetch_concurrency = fetch_concurrency
        self.max_pixels = max_pixels
        self.data_wait_seconds = data_wait_seconds

    async def run(
        self,
        target: Target,
        model: ModelEntry,
        threshold: float,
        on_progress: ProgressCallback | None = None,
        checkpoint: Callable[[], None] | None = None,
        ledger: RunLedger | None = None,
        label_thresholds: Mapping[str, float] | None = None,
    ) -> AnnotateResult:
        """Run one pre-annotation; ``checkpoint()`` is called before each batch and
        may raise (``Cancelled``, ``Interrupted``) to stop the run there. With
        ``ledger``, an earlier attempt of the same run is resumed (module doc).
        ``label_thresholds``: labels' own thresholds (``thresholds``)."""
        started = time.perf_counter()
        cuts = thresholds.check(threshold, label_thresholds or {}, model.classes)
        state = await asyncio.to_thread(ledger.load) if ledger is not None else RunState()
        if state.finished is not None:
            done = _from_record(state.finished)
            if on_progress is not None:
                await on_progress(_final_progress(done))
            return done
        resume = ledger is not None and target.resumable
        await self.wait_for_data(target, on_progress, checkpoint)
        labels, frames = await asyncio.gather(target.labels(), target.frames())
        mapping, unmatched = label_ids(model, labels)

        result = AnnotateResult(len(frames), 0, 0, [], unmatched)
        if resume and state.deleted is not None:
            result.shapes_deleted = state.deleted
        else:
            result.shapes_deleted = await target.prepare(frames)
            if resume:
                assert ledger is not None
                await asyncio.to_thread(ledger.prepared, result.shapes_deleted)
        if resume and state.written:
            before = [f for f in frames if f in state.written]
            result.frames_done = len(before)
            result.shapes_written = sum(state.written[f] for f in before)
            frames = [f for f in frames if f not in state.written]

        progress = Progress(
            frames_total=result.frames_total,
            frames_done=result.frames_done,
            shapes_written=result.shapes_written,
            unmatched_classes=unmatched,
        )
        writes: asyncio.Queue[_Batch | None] = asyncio.Queue(maxsize=2)
        shapes_counter = metrics.SHAPES_WRITTEN.labels(
            metrics.model_label(model.namespace, model.name), target.kind
        )

        async def report() -> None:
            if on_progress is not None:
                await on_progress(progress)
            progress.skipped = []

        async def record(frames: Sequence[int], shapes: dict[int, int]) -> None:
            assert ledger is not None
            await asyncio.to_thread(ledger.written, frames, shapes)

        async def writer() -> None:
            while (batch := await writes.get()) is not None:
                written = await target.write(batch.results, record if resume else None)
                shapes_counter.inc(written)
                result.shapes_written += written
                result.frames_done += len(batch.frames)
                result.skipped += batch.skipped
                progress.frames_done = result.frames_done
                progress.shapes_written = result.shapes_written
                progress.frames_skipped = len(result.skipped)
                progress.skipped += batch.skipped
                await report()

        write_task = asyncio.create_task(writer())
        frames_iter = self._fetched(target, frames)
        try:
            async for batch_frames, batch_images, skipped in self._batches(frames_iter):
                if checkpoint is not None:
                    checkpoint()
                results: list[FrameResult] = []
                if batch_images:
                    # lower while linking tracks or ranking doubt; then each label's own
                    floor = detection_floor(target, cuts.lowest())
                    founds = await self.predictor.detect(model, batch_images, floor)
                    for frame, image, found in zip(batch_frames, batch_images, founds, strict=True):
                        kept = [
                            (mapping[d.label], d)
                            for d in found
                            if d.label in mapping
                            and d.score >= detection_floor(target, cuts.of(d.label))
                        ]
                        results.append(FrameResult(frame, image.width, image.height, kept))
                await self._put(writes, write_task, _Batch(batch_frames, results, skipped))
            await self._put(writes, write_task, None)
            await write_task
        finally:
            await frames_iter.aclose()
            if not write_task.done():
                write_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await write_task
        finished = await target.finish() or 0  # tracks (targets.tracked): written at the end
        shapes_counter.inc(finished)
        result.shapes_written += finished
        progress.shapes_written = result.shapes_written
        result.seconds = time.perf_counter() - started
        if ledger is not None:
            await asyncio.to_thread(ledger.finished, _to_record(result))

        progress.done = True
        await report()
        return result

    async def wait_for_data(
        self,
        target: Target,
        on_progress: ProgressCallback | None = None,
        checkpoint: Callable[[], None] | None = None,
    ) -> None:
        """Return once ``target``'s frames can be read (module doc, step 0)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.data_wait_seconds
        pause = WAIT_FIRST_SECONDS
        while (why := await target.pending()) is not None:
            left = deadline - loop.time()
            if left <= 0:
                raise FailedPrecondition(
                    f"{target.describe}: CVAT has not finished the task's data after "
                    f"{self.data_wait_seconds:g} s ({why}); upload the task's data, or allow "
                    f"longer with {DATA_WAIT_SETTING}"
                )
            if on_progress is not None:
                await on_progress(Progress(frames_total=0, waiting=why))
            if checkpoint is not None:
                checkpoint()
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, WAIT_MAX_SECONDS)

    @staticmethod
    async def _put(queue: asyncio.Queue, writer: asyncio.Task, item: Any) -> None:
        """Queue ``item`` for the writer, failing at once if the writer failed."""
        put = asyncio.ensure_future(queue.put(item))
        await asyncio.wait({put, writer}, return_when=asyncio.FIRST_COMPLETED)
        if writer.done() and not put.done():
            put.cancel()
        if writer.done() and writer.exception() is not None:
            raise writer.exception()  # type: ignore[misc]

    async def _fetch(
        self, target: Target, frame: int, slots: asyncio.Semaphore
    ) -> tuple[int, ImageInput | None, str]:
        async with slots:
            reason = metrics.SKIP_FETCH
            try:
                data = await target.fetch(frame)
                reason = metrics.SKIP_DECODE
                what = target.frame_name(frame)
                image = await asyncio.to_thread(images.decode, data, what, self.max_pixels)
            except Exception as exc:
                if not is_frame_problem(exc):
                    raise
                metrics.FRAMES_SKIPPED.labels(reason).inc()
                return frame, None, str(exc)
        return frame, image, ""

    async def _fetched(
        self, target: Target, frames: Sequence[int]
    ) -> AsyncIterator[tuple[int, ImageInput | None, str]]:
        """(frame, image or None, why not) in frame order, fetched ahead in a bounded window."""
        slots = asyncio.Semaphore(self.fetch_concurrency)
        window = self.fetch_concurrency + 2 * self.batch_size
        todo = iter(frames)
        pending: deque[asyncio.Task] = deque()
        try:
            for frame in todo:
                pending.append(asyncio.create_task(self._fetch(target, frame, slots)))
                if len(pending) >= window:
                    break
            while pending:
                item = await pending.popleft()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(asyncio.create_task(self._fetch(target, nxt, slots)))
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


def _to_record(result: AnnotateResult) -> dict[str, Any]:
    return {
        "frames_total": result.frames_total,
        "frames_done": result.frames_done,
        "shapes_written": result.shapes_written,
        "shapes_deleted": result.shapes_deleted,
        "skipped": [[f, r] for f, r in result.skipped],
        "unmatched_classes": list(result.unmatched_classes),
        "seconds": result.seconds,
    }


def _from_record(record: dict[str, Any]) -> AnnotateResult:
    return AnnotateResult(
        frames_total=int(record["frames_total"]),
        frames_done=int(record["frames_done"]),
        shapes_written=int(record["shapes_written"]),
        skipped=[(int(f), str(r)) for f, r in record["skipped"]],
        unmatched_classes=tuple(record["unmatched_classes"]),
        shapes_deleted=int(record["shapes_deleted"]),
        seconds=float(record["seconds"]),
    )


def _final_progress(result: AnnotateResult) -> Progress:
    return Progress(
        frames_total=result.frames_total,
        frames_done=result.frames_done,
        shapes_written=result.shapes_written,
        frames_skipped=len(result.skipped),
        unmatched_classes=result.unmatched_classes,
        done=True,
    )
