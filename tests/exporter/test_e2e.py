"""The exporter run by the real runner over the real Kafka broker and moto's S3 server.

task.annotated -> CVAT stand-in export -> TFRecords in S3 -> DatasetExported on
train.jobs.cpu; and CVAT answering 500 three times -> the record in the DLQ with
the CVAT error, the job FAILED, nothing in S3.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from preannotate import events, topics
from preannotate.runner import Runtime
from preannotate.v1 import common_pb2, events_pb2
from services.exporter.service import build
from services.exporter.settings import ExporterSettings
from tests.platform.buses import drain
from tests.standins.cvat import CvatStandIn, make_shapes_dataset, shapes_labels

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
async def cvat():
    server = CvatStandIn(tokens={"secret-token"})
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def exporter(kafka_bootstrap, s3_storage, cvat, tmp_path):
    settings = ExporterSettings(
        bus="kafka",
        kafka_bootstrap=kafka_bootstrap,
        kafka_topic_prefix=f"t{uuid.uuid4().hex[:8]}.",
        kafka_partitions=1,
        session_timeout_ms=6000,
        keepalive_seconds=0.5,
        retry_attempts=1,
        retry_deadline_seconds=0,  # an Unavailable goes to the DLQ at once
        retry_backoff_seconds=0.05,
        storage="s3",
        cvat_url=cvat.url,
        cvat_token="secret-token",
        cvat_poll_interval_seconds=0.05,
        cvat_retry_backoff_seconds=0.01,
        export_work_dir=tmp_path / "work",
    )
    rt = Runtime([(build(settings), settings)], storage=s3_storage)
    await rt.start()
    yield rt
    await rt.stop()


def _msg(job_id: str, task_id: int) -> events_pb2.TaskAnnotated:
    return events_pb2.TaskAnnotated(
        job_id=job_id,
        namespace="team-a",
        cvat=common_pb2.CvatRef(task_id=task_id),
        training=common_pb2.TrainingSpec(model_type="ssd-mobilenet-v2-coco"),
        trigger="test",
    )


async def _read(rt: Runtime, topic: str, n: int, timeout: float = 60.0):
    reader = rt.bus.consumer([topic], None)
    await reader.start()
    try:
        return await drain(reader, n, timeout)
    finally:
        await reader.stop()


@pytest.mark.tf
async def test_task_annotated_to_records_in_s3(exporter, cvat, s3_storage, tmp_path):
    from tests.exporter.tfdecode import decode_records

    images, shapes = make_shapes_dataset(8, size=(64, 64), seed=5, kind="rectangle")
    task_id = cvat.add_task("boxes", labels=shapes_labels(), images=images, shapes=shapes)
    await events.publish(
        exporter.bus, topics.TASK_ANNOTATED, _msg("job-e2e", task_id), source="test"
    )
    (record,) = await _read(exporter, topics.train_jobs("cpu"), 1)
    event = events.decode(record)
    assert isinstance(event, events_pb2.DatasetExported)
    prefix = "team-a/datasets/job-e2e/"
    assert event.dataset_prefix == prefix and list(event.classes) == ["circle", "square"]

    keys = s3_storage.list(prefix)
    assert prefix + "manifest.json" in keys
    local = []
    for key in keys:
        if key.endswith(".tfrecord"):
            path = tmp_path / key.rsplit("/", 1)[1]
            s3_storage.download_file(key, path)
            local.append(path)
    items = {i["filename"]: i for i in decode_records(local)}
    labels = {lb["id"]: lb["name"] for lb in cvat.labels(task_id)}
    for shape in cvat.annotations(task_id):
        item = items[f"frame_{shape['frame']:06d}.jpg"]
        x1, y1, x2, y2 = shape["points"]
        want = [y1 / 64, x1 / 64, y2 / 64, x2 / 64]
        cls = ["circle", "square"].index(labels[shape["label_id"]]) + 1
        assert any(
            c == cls and b == pytest.approx(want, abs=1e-4)
            for c, b in zip(
                item["groundtruth_classes"].tolist(),
                item["groundtruth_boxes"].tolist(),
                strict=True,
            )
        )


async def test_cvat_failing_three_times_ends_in_the_dlq(exporter, cvat, s3_storage):
    images, shapes = make_shapes_dataset(4, size=(64, 64), seed=6, kind="rectangle")
    task_id = cvat.add_task("boxes", labels=shapes_labels(), images=images, shapes=shapes)
    cvat.fail("POST", r"/api/tasks/\d+/dataset/export", status=500, times=3)
    await events.publish(
        exporter.bus, topics.TASK_ANNOTATED, _msg("job-down", task_id), source="test"
    )
    (dead,) = await _read(exporter, topics.TASK_ANNOTATED + ".dlq", 1)
    assert dead.key == "job-down"
    assert dead.headers["dlq_error_type"] == "Unavailable"
    assert "CVAT answered 500 Internal Server Error" in dead.headers["dlq_error"]
    assert s3_storage.list("team-a/datasets/") == []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while loop.time() < deadline:
        status = exporter.status_view.get("job-down")
        if status is not None and status.state == events_pb2.JOB_STATE_FAILED:
            break
        await asyncio.sleep(0.1)
    assert status is not None and status.state == events_pb2.JOB_STATE_FAILED
    assert "CVAT answered 500" in status.message
