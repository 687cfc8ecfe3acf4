"""The prediction core: model lookup, batching, and detections, over any backend.

``Predictor.detect`` runs a list of images in batches of ``batch_size``;
``Predictor.detect_one`` is for requests that bring one image at a time
(gRPC Predict, StreamPredict, CVAT's Nuclio calls): concurrent requests for
the same model are gathered into shared batches by a ``MicroBatcher``, which
waits at most ``batch_wait`` seconds for company before it runs a batch and
keeps at most ``concurrency`` batches in flight.

Every backend call goes through ``Predictor.predict``, which counts the frames
and times the call (``services.inference.metrics``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

from preannotate.errors import InvalidArgument
from services.inference import metrics
from services.inference.backends.base import Backend, ImageInput, RawOutput
from services.inference.postprocess import Detected, detections
from services.inference.registry import ModelEntry, ModelRegistry

RunBatch = Callable[[list[ImageInput]], Awaitable[list[RawOutput]]]


class MicroBatcher:
    """Gathers single images into batches for one model."""

    def __init__(self, run: RunBatch, size: int, wait: float, concurrency: int = 1) -> None:
        self.run = run
        self.size = size
        self.wait = wait
        self._slots = asyncio.Semaphore(concurrency)
        self._queue: list[tuple[ImageInput, asyncio.Future[RawOutput]]] = []
        self._drainer: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        #: Sizes of the latest batches run (for tests and metrics); bounded, the service runs long.
        self.batches: deque[int] = deque(maxlen=1024)

    async def submit(self, image: ImageInput) -> RawOutput:
        future: asyncio.Future[RawOutput] = asyncio.get_running_loop().create_future()
        self._queue.append((image, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._queue:
            if len(self._queue) < self.size and self.wait > 0:
                await asyncio.sleep(self.wait)
            await self._slots.acquire()
            batch, self._queue = self._queue[: self.size], self._queue[self.size :]
            batch = [(img, fut) for img, fut in batch if not fut.done()]  # drop cancelled
            if not batch:
                self._slots.release()
                continue
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[tuple[ImageInput, asyncio.Future[RawOutput]]]) -> None:
        try:
            self.batches.append(len(batch))
            outputs = await self.run([img for img, _ in batch])
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for (_, future), out in zip(batch, outputs, strict=True):
                if not future.done():
                    future.set_result(out)
        finally:
            self._slots.release()

    async def close(self) -> None:
        tasks = [t for t in (self._drainer, *self._running) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for _, future in self._queue:
            future.cancel()
        self._queue.clear()


class Predictor:
    """Finds models and runs them through the backend, in batches."""

    def __init__(
        self,
        registry: ModelRegistry,
        backend: Backend,
        *,
        batch_size: int = 8,
        batch_wait: float = 0.005,
        concurrency: int = 1,
        default_namespace: str = "default",
    ) -> None:
        self.registry = registry
        self.backend = backend
        self.batch_size = batch_size
        self.batch_wait = batch_wait
        self.concurrency = concurrency
        self.default_namespace = default_namespace
        self._batchers: dict[tuple[str, str, int], MicroBatcher] = {}

    async def resolve(self, namespace: str, name: str, version: int = 0) -> ModelEntry:
        if not name:
            raise InvalidArgument("no model named: give the model's name (and namespace)")
        return await self.registry.resolve(namespace or self.default_namespace, name, version)

    async def predict(self, model: ModelEntry, images: Sequence[ImageInput]) -> list[RawOutput]:
        """One backend call for ``images`` (one batch), counted and timed."""
        label = metrics.model_label(model.namespace, model.name)
        started = time.perf_counter()
        try:
            out = await self.backend.predict(model, images)
        except Exception:
            metrics.PREDICT_FAILURES.labels(label).inc()
            raise
        metrics.observe_predict(label, len(images), time.perf_counter() - started)
        return out

    async def raw(self, model: ModelEntry, images: Sequence[ImageInput]) -> list[RawOutput]:
        """Raw outputs for ``images``, run in batches of ``batch_size``."""
        out: list[RawOutput] = []
        for start in range(0, len(images), self.batch_size):
            out += await self.predict(model, images[start : start + self.batch_size])
        return out

    async def detect(
        self, model: ModelEntry, images: Sequence[ImageInput], threshold: float
    ) -> list[list[Detected]]:
        raws = await self.raw(model, images)
        return [
            detections(raw, model, img.width, img.height, threshold)
            for raw, img in zip(raws, images, strict=True)
        ]

    async def detect_one(
        self, model: ModelEntry, image: ImageInput, threshold: float
    ) -> list[Detected]:
        """Detections on one image, batched with other concurrent single-image calls."""
        batcher = self._batchers.get(model.key)
        if batcher is None:
            batcher = MicroBatcher(
                lambda imgs, m=model: self.predict(m, imgs),
                self.batch_size,
                self.batch_wait,
                self.concurrency,
            )
            self._batchers[model.key] = batcher
        raw = await batcher.submit(image)
        return detections(raw, model, image.width, image.height, threshold)

    def batcher(self, model: ModelEntry) -> MicroBatcher | None:
        return self._batchers.get(model.key)

    async def close(self) -> None:
        for batcher in self._batchers.values():
            await batcher.close()
        self._batchers.clear()
