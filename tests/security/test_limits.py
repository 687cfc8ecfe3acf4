"""Limits where input comes in, attacked through the real services.

Inference (gRPC on the real runner: servicer, interceptors, registry, predictor,
postprocessing): a PNG whose header declares 50000 x 50000 pixels is refused
from its header with INVALID_ARGUMENT naming PREANNOTATE_INFERENCE_MAX_IMAGE_PIXELS;
calls over PREANNOTATE_INFERENCE_MAX_CONCURRENT_REQUESTS are answered
RESOURCE_EXHAUSTED with a retry hint; a StreamPredict client that stops reading
stops the reading of its requests (answers waiting to be sent are bounded by
PREANNOTATE_INFERENCE_STREAM_WINDOW); a small image is still predicted. The
backend is a stand-in answering one box (the real ones need trained fixture
models); everything between the request and the backend is the service's own.

Exporter (the real runner over the memory bus, Kafka's semantics): a COCO export
declaring a 200000 x 200000 image is refused before anything is allocated at that
size and the record goes to the DLQ; NaN in a bbox is refused with the field named.
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from pathlib import Path
from typing import Any

import grpc
import pytest

from preannotate import events, topics
from preannotate.bus import MemoryBus
from preannotate.errors import InvalidArgument
from preannotate.runner import Runtime
from preannotate.storage import LocalStorage
from preannotate.v1 import common_pb2, events_pb2, inference_pb2
from services.inference import app as inference_app
from tests.exporter.cocozip import image_bytes, write_export
from tests.inference.helpers import make_settings, publish_model
from tests.platform.buses import drain
from tests.security.standin import SHAPES, GatedBackend, small_png, start_inference

pytestmark = pytest.mark.timeout(60)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width`` x ``height`` and whose data is one tiny
    deflate stream: a few hundred bytes that would decode to width x height x 3."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 4096)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture
async def served(tmp_path, monkeypatch):
    runtime, channel, stub, backend = await start_inference(
        tmp_path,
        monkeypatch,
        inference_max_concurrent_requests=1,
        inference_stream_window=2,
        inference_batch_wait_ms=0,
    )
    try:
        yield stub, backend
    finally:
        await channel.close()
        await runtime.stop()


async def test_the_pixel_bomb_is_refused_from_its_header(served):
    stub, backend = served
    bomb = png_header_only(50_000, 50_000)
    assert len(bomb) < 1000
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Predict(inference_pb2.PredictRequest(model=SHAPES, image=bomb))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "PREANNOTATE_INFERENCE_MAX_IMAGE_PIXELS" in err.value.details()
    assert "over the limit of 40000000" in err.value.details()
    assert backend.images == 0


async def test_an_image_over_the_setting_is_refused_before_decoding(tmp_path, monkeypatch):
    """Below Pillow's own limit: the setting decides (a header of 4000 x 3000 pixels)."""
    runtime, channel, stub, backend = await start_inference(
        tmp_path, monkeypatch, inference_max_image_pixels=10_000_000
    )
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            image = png_header_only(4000, 3000)
            await stub.Predict(inference_pb2.PredictRequest(model=SHAPES, image=image))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "over the limit of 10000000" in err.value.details()
        assert backend.images == 0
    finally:
        await channel.close()
        await runtime.stop()


async def test_a_small_image_is_still_predicted(served):
    stub, backend = served
    answer = await stub.Predict(
        inference_pb2.PredictRequest(model=SHAPES, image=small_png(), threshold=0.5, id="a")
    )
    assert (answer.image_width, answer.image_height) == (60, 40)
    [found] = answer.detections
    assert found.label == "circle" and backend.images == 1


async def test_requests_over_the_limit_are_resource_exhausted_with_a_retry_hint(served):
    stub, backend = served
    backend.gate.clear()
    first = asyncio.ensure_future(
        stub.Predict(inference_pb2.PredictRequest(model=SHAPES, image=small_png(), id="1"))
    )
    await asyncio.wait_for(backend.waiting.wait(), 10)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Predict(inference_pb2.PredictRequest(model=SHAPES, image=small_png(), id="2"))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "PREANNOTATE_INFERENCE_MAX_CONCURRENT_REQUESTS" in err.value.details()
    assert dict(err.value.trailing_metadata())["grpc-retry-pushback-ms"] == "1000"
    backend.gate.set()
    assert (await first).id == "1"
    # the slot is free again
    again = await stub.Predict(inference_pb2.PredictRequest(model=SHAPES, image=small_png()))
    assert again.detections


async def test_an_unread_stream_stops_reading_requests(tmp_path, monkeypatch):
    """The client sends 40 images and reads one answer: the servicer takes at most the
    window (2) and the answer read, not all 40. (Over gRPC the transport's own flow
    control bounds what waits in it; this is the servicer's queue in front of it.)"""
    from services.inference.servicer import InferenceServicer
    from tests.inference.helpers import start_app

    source = tmp_path / "savedmodel"
    source.mkdir()
    (source / "saved_model.pb").write_bytes(b"stand-in")
    storage = LocalStorage(tmp_path / "storage")
    publish_model(storage, source, namespace="default", name="shapes")
    backend = GatedBackend()
    monkeypatch.setattr(inference_app, "make_backend", lambda *a, **k: backend)
    settings = make_settings(tmp_path, inference_stream_window=2, inference_batch_wait_ms=0)
    app, _ = await start_app(settings, storage)
    taken = 0

    async def requests():
        nonlocal taken
        for i in range(40):
            taken += 1
            yield inference_pb2.PredictRequest(model=SHAPES, image=small_png(), id=str(i))

    stream = InferenceServicer(app).StreamPredict(requests(), None)
    try:
        first = await stream.__anext__()
        assert first.detections
        for _ in range(50):  # let a servicer that does not wait take them all
            await asyncio.sleep(0.02)
        assert taken <= 2 + 2 and backend.images <= 2 + 1, (taken, backend.images)
        rest = [answer async for answer in stream]  # reading again: the rest comes
        assert len(rest) == 39 and backend.images == 40
    finally:
        await stream.aclose()
        await app.stop()


# --- exporter ------------------------------------------------------------------------


def _exporter_settings(tmp_path: Path, **overrides: Any):
    from services.exporter.settings import ExporterSettings

    return ExporterSettings(
        bus="memory",
        storage="local",
        storage_root=tmp_path / "storage",
        export_work_dir=tmp_path / "work",
        export_allow_file_import=True,
        export_file_import_root=tmp_path,
        retry_attempts=1,
        **overrides,
    )


async def _export_to_dlq(tmp_path: Path, zip_path: Path) -> Any:
    """Run ``zip_path`` through the exporter on the real runner; the DLQ record."""
    from services.exporter.service import build

    settings = _exporter_settings(tmp_path)
    runtime = Runtime([(build(settings), settings)], bus=MemoryBus())
    await runtime.start()
    try:
        msg = events_pb2.TaskAnnotated(
            job_id="bomb-1",
            namespace="default",
            cvat=common_pb2.CvatRef(url=zip_path.as_uri()),
            training=common_pb2.TrainingSpec(model_type="ssd-mobilenet-v2-coco"),
            trigger="test",
        )
        reader = runtime.bus.consumer([topics.TASK_ANNOTATED + ".dlq"], None)
        await reader.start()
        try:
            await events.publish(runtime.bus, topics.TASK_ANNOTATED, msg, source="test")
            (dead,) = await drain(reader, 1, 30)
        finally:
            await reader.stop()
        assert not list((tmp_path / "storage").rglob("*.tfrecord"))
        return dead
    finally:
        await runtime.stop()


def _one_image_export(path: Path, image: dict[str, Any], bbox: list[Any]) -> Path:
    return write_export(
        path,
        [{"id": 1, "name": "cat"}],
        [{"id": 1, "file_name": "a.jpg", **image}],
        [{"id": 1, "image_id": 1, "category_id": 1, "bbox": bbox, "area": 1, "iscrowd": 0}],
        {"a.jpg": image_bytes(32, 24)},
    )


async def test_a_declared_size_bomb_goes_to_the_dlq_before_any_allocation(tmp_path):
    # a polygon over the whole declared image: drawn, it would take 40 GB
    zip_path = write_export(
        tmp_path / "bomb.zip",
        [{"id": 1, "name": "cat"}],
        [{"id": 1, "file_name": "a.jpg", "width": 200_000, "height": 200_000}],
        [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "segmentation": [[0, 0, 199_999, 0, 199_999, 199_999, 0, 199_999]],
                "area": 1,
                "iscrowd": 0,
            }
        ],
        {"a.jpg": image_bytes(32, 24)},
    )
    dead = await _export_to_dlq(tmp_path, zip_path)
    assert dead.headers["dlq_error_type"] == "InvalidArgument"
    error = dead.headers["dlq_error"]
    assert "images[0].width x" in error and "PREANNOTATE_EXPORT_MAX_IMAGE_PIXELS" in error


def test_a_declared_size_other_than_the_file_draws_no_mask(tmp_path, monkeypatch):
    """Under the cap but not the file's size: the image is skipped from its header,
    before its polygon is drawn at the declared size."""
    from services.exporter import convert
    from services.exporter.coco import read_export
    from services.exporter.unpack import UnpackLimits, safe_unpack

    zip_path = write_export(
        tmp_path / "e.zip",
        [{"id": 1, "name": "cat"}],
        [{"id": 1, "file_name": "a.jpg", "width": 9000, "height": 9000}],
        [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "segmentation": [[0, 0, 8999, 0, 8999, 8999]],
                "area": 1,
                "iscrowd": 0,
            }
        ],
        {"a.jpg": image_bytes(32, 24)},
    )
    safe_unpack(zip_path, tmp_path / "u", UnpackLimits(1 << 30, 100))
    drawn: list[tuple[int, int]] = []
    real = convert.segmentation_to_mask

    def spy(segmentation: Any, height: int, width: int) -> Any:
        drawn.append((height, width))
        return real(segmentation, height, width)

    monkeypatch.setattr(convert, "segmentation_to_mask", spy)
    with pytest.raises(InvalidArgument, match="no labelled shapes"):
        convert.convert_export(
            read_export(tmp_path / "u"), tmp_path / "out", convert.ConvertOptions()
        )
    assert drawn == []


@pytest.mark.parametrize(
    ("image", "bbox", "field"),
    [
        ({"width": 32, "height": 24}, [1.0, float("nan"), 4.0, 4.0], "annotations[0].bbox[1]"),
        ({"width": 32, "height": 24}, [1.0, 2.0, float("inf"), 4.0], "annotations[0].bbox[2]"),
        ({"width": float("nan"), "height": 24}, [1.0, 2.0, 4.0, 4.0], "images[0].width"),
    ],
)
async def test_non_finite_numbers_are_refused_with_the_field_named(tmp_path, image, bbox, field):
    zip_path = _one_image_export(tmp_path / "nan.zip", image, bbox)
    dead = await _export_to_dlq(tmp_path, zip_path)
    assert dead.headers["dlq_error_type"] == "InvalidArgument"
    assert field in dead.headers["dlq_error"]
