"""The Kafka handlers, called as the runner calls them, and the whole service
through the runner: on the in-process bus and on a real Kafka broker."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import pytest

from preannotate import events, topics
from preannotate.bus import MemoryBus, make_bus
from preannotate.errors import Cancelled, InvalidArgument
from preannotate.handler import Outcome
from preannotate.runner import serve
from preannotate.storage import LocalStorage
from preannotate.telemetry.logging import get_logger
from preannotate.v1 import common_pb2, events_pb2
from services.inference.handlers import InferenceHandlers
from services.inference.service import build
from tests.inference.helpers import make_settings, publish_model, start_app
from tests.standins.cvat import make_shapes_dataset, shapes_labels

pytestmark = pytest.mark.tf


@dataclass
class FakeContext:
    """A ``preannotate.handler.Context`` that records what the handler reports."""

    storage: Any
    bus: Any = None
    service: str = "inference"
    record: Any = None
    log: Any = field(default_factory=get_logger)
    reports: list[dict[str, Any]] = field(default_factory=list)
    cancel_after_reports: int | None = None

    async def report(self, **kw: Any) -> None:
        self.reports.append(kw)

    def cancel_requested(self) -> bool:
        return (
            self.cancel_after_reports is not None and len(self.reports) > self.cancel_after_reports
        )

    def stop_requested(self) -> bool:
        return False

    async def publish(self, topic, message) -> str:
        raise AssertionError("the inference handlers publish through their Outcome")


def _request(task_id, job_id="ann-1", mode=events_pb2.ANNOTATE_MODE_APPEND):
    return events_pb2.AnnotationRequested(
        job_id=job_id,
        namespace="default",
        cvat=common_pb2.CvatRef(task_id=task_id),
        model=common_pb2.ModelRef(namespace="default", name="shapes"),
        threshold=0.5,
        mode=mode,
    )


async def test_model_converted_registers_and_prepares(tmp_path, retinanet_dir, tfserving):
    storage = LocalStorage(tmp_path / "storage")
    settings = make_settings(tmp_path, backend="tfserving", tfserving_address=tfserving.address)
    app, _ = await start_app(settings, storage)
    handlers = InferenceHandlers(app)
    try:
        assert app.models() == []
        event = publish_model(storage, retinanet_dir, name="shapes", version=3)
        ctx = FakeContext(storage)
        outcome = await handlers.handle_model_converted(event, ctx)
        assert outcome == Outcome.nothing()
        assert [m.label for m in app.models()] == ["default/shapes/3"]
        assert tfserving.models["default.shapes"].versions[3].state == 30  # AVAILABLE
        # Redelivered (or replayed after a restart): harmless.
        assert await handlers.handle_model_converted(event, ctx) == Outcome.nothing()
        with pytest.raises(InvalidArgument, match="lists no classes"):
            await handlers.handle_model_converted(
                events_pb2.ModelConverted(job_id="x", model=event.model), ctx
            )
    finally:
        await app.stop()


async def test_annotation_requested_reports_and_emits(tmp_path, retinanet_dir, cvat):
    storage = LocalStorage(tmp_path / "storage")
    publish_model(storage, retinanet_dir, name="shapes")
    app, _ = await start_app(make_settings(tmp_path, cvat_url=cvat.url), storage)
    handlers = InferenceHandlers(app)
    try:
        images, _ = make_shapes_dataset(8, size=(160, 120), seed=97)
        task_id = cvat.add_task("t", labels=shapes_labels(), images=images, segment_size=4)
        ctx = FakeContext(storage)
        outcome = await handlers.handle_annotation_requested(_request(task_id), ctx)
        [emit] = outcome.emits
        assert emit.topic == topics.TASK_PREANNOTATED
        assert emit.message.job_id == "ann-1" and emit.message.frames_done == 8
        assert emit.message.shapes_written == len(cvat.annotations(task_id)) > 0
        assert outcome.final_message.startswith(f"wrote {emit.message.shapes_written} shapes")
        assert ctx.reports[0]["stage"] == events_pb2.JOB_STAGE_ANNOTATE
        assert any(r.get("progress") is not None for r in ctx.reports)

        cancelled, _ = make_shapes_dataset(24, size=(160, 120), seed=98)
        long_task = cvat.add_task("long", labels=shapes_labels(), images=cancelled)
        ctx = FakeContext(storage, cancel_after_reports=1)
        with pytest.raises(Cancelled):
            await handlers.handle_annotation_requested(_request(long_task, "ann-2"), ctx)
        assert 0 < len(cvat.annotations(long_task)) < emit.message.shapes_written * 3
    finally:
        await app.stop()


async def _next(consumer, timeout: float):
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        records = await consumer.poll(0.5)
        if records:
            return records[0]
    raise TimeoutError("no record came")


@pytest.mark.parametrize("bus_kind", ["memory", "kafka"])
async def test_the_service_through_the_runner(
    bus_kind, tmp_path, retinanet_dir, cvat, request, unique_name
):
    storage = LocalStorage(tmp_path / "storage")
    overrides: dict[str, Any] = {"cvat_url": cvat.url, "metrics_port": 0}
    if bus_kind == "kafka":
        overrides.update(bus="kafka", auth="none", kafka_bootstrap=request.getfixturevalue("kafka_bootstrap"),
                         kafka_partitions=1, kafka_client_id=unique_name("inf"))  # fmt: skip
    settings = make_settings(tmp_path, **overrides)
    bus = MemoryBus() if bus_kind == "memory" else make_bus(settings)
    if bus_kind == "kafka":
        await bus.start()
    stop = asyncio.Event()
    started: asyncio.Future = asyncio.get_running_loop().create_future()
    runner = asyncio.create_task(
        serve([(build(settings), settings)], bus=bus, storage=storage, stop=stop, started=started)
    )
    try:
        runtime = await asyncio.wait_for(started, 120)
        watcher = bus.consumer([topics.TASK_PREANNOTATED], unique_name("watch"))
        await watcher.start()
        # A model is converted after the service started: the event registers it.
        event = publish_model(storage, retinanet_dir, name="shapes", version=5, job_id="train-9")
        await events.publish(bus, topics.MODEL_CONVERTED, event, source="converter")
        for _ in range(200):
            if runtime.services[0][0].grpc[0].servicer.app.models():
                break
            await asyncio.sleep(0.1)
        app = runtime.services[0][0].grpc[0].servicer.app
        assert [m.label for m in app.models()] == ["default/shapes/5"]

        images, _ = make_shapes_dataset(6, size=(160, 120), seed=99)
        task_id = cvat.add_task("e2e", labels=shapes_labels(), images=images, segment_size=3)
        cvat.break_frame(task_id, 4)
        await events.publish(bus, topics.ANNOTATION_REQUESTED, _request(task_id, "ann-e2e"),
                             source="gateway")  # fmt: skip
        record = await _next(watcher, 180)
        done = events_pb2.TaskPreannotated.FromString(record.value)
        assert (done.job_id, done.frames_total, done.frames_done) == ("ann-e2e", 6, 5)
        assert [s.frame for s in done.skipped] == [4]
        assert done.model.version == 5
        assert done.shapes_written == len(cvat.annotations(task_id)) > 0
        assert {s["frame"] for s in cvat.annotations(task_id)} <= {0, 1, 2, 3, 5}
        await watcher.stop()
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(runner, 60)
        if bus_kind == "kafka":
            await bus.stop()
