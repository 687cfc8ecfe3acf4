"""CVAT in, end to end: the gateway and the exporter over the real Kafka broker and S3.

A signed ``update:job`` delivery from the CVAT stand-in (a job turning
completed in a watched project), and a CreateAnnotationModel call, each end in
TFRecords in S3 that official.vision's decoder reads back to the boxes and
classes the stand-in holds, and in a DatasetExported on the pool's topic.
"""

from __future__ import annotations

import uuid

import grpc
import pytest
import yaml

from preannotate import events, topics
from preannotate.runner import Runtime
from preannotate.v1 import common_pb2, events_pb2, training_pb2, training_pb2_grpc
from services.exporter.service import build as build_exporter
from services.exporter.settings import ExporterSettings
from services.gateway.service import build as build_gateway
from services.gateway.settings import GatewaySettings
from tests.platform.buses import drain
from tests.standins.cvat import CvatStandIn, make_shapes_dataset, shapes_labels

pytestmark = [pytest.mark.timeout(300), pytest.mark.tf]

SECRET = "integration-webhook-secret"
TOKEN = "cvat-token"
SIZE = 64


@pytest.fixture
async def cvat():
    server = CvatStandIn(tokens={TOKEN})
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def system(kafka_bootstrap, s3_storage, cvat, tmp_path):
    """Gateway + exporter, one Kafka topic prefix, one S3 bucket."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        yaml.safe_dump(
            {
                "global_secret": True,
                "projects": [
                    {
                        "project_id": 7,
                        "namespace": "team-a",
                        "trigger": "job",
                        "model_type": "ssd-mobilenet-v2-coco",
                        "arguments": "epochs=100;batch_size=8",
                        "model_name": "shapes",
                        "annotate_new_tasks": False,
                    }
                ],
            }
        )
    )
    common = {
        "bus": "kafka",
        "auth": "none",
        "kafka_bootstrap": kafka_bootstrap,
        "kafka_topic_prefix": f"i{uuid.uuid4().hex[:8]}.",
        "kafka_partitions": 2,
        "session_timeout_ms": 6000,
        "keepalive_seconds": 0.5,
        "storage": "s3",
        "namespace": "team-a",
    }
    gateway = GatewaySettings(
        **common,
        webhook_secret=SECRET,
        webhook_policy_file=policy,
        cvat_url=cvat.url,  # the gateway confirms each delivery's task with CVAT
        cvat_token=TOKEN,
        gateway_grpc_port=0,
        gateway_http_port=0,
    )
    exporter = ExporterSettings(
        **common,
        cvat_url=cvat.url,
        cvat_token=TOKEN,
        cvat_poll_interval_seconds=0.05,
        export_work_dir=tmp_path / "exporter",
    )
    runtime = Runtime(
        [(build_gateway(gateway), gateway), (build_exporter(exporter), exporter)],
        storage=s3_storage,
    )
    await runtime.start()
    yield runtime
    await runtime.stop()


async def exported(runtime: Runtime, job_id: str | None = None) -> events_pb2.DatasetExported:
    reader = runtime.bus.consumer([topics.train_jobs("cpu")], None)
    await reader.start()
    try:
        records = await drain(reader, 1, timeout=90)
    finally:
        await reader.stop()
    assert records, "no DatasetExported on train.jobs.cpu"
    event = events.decode(records[0])
    if job_id is not None:
        assert event.job_id == job_id
    return event


def assert_records_match_the_task(storage, event, cvat, task_id, tmp_path) -> None:
    from tests.exporter.tfdecode import decode_records

    keys = storage.list(event.dataset_prefix)
    assert event.dataset_prefix + "manifest.json" in keys
    local = []
    for key in keys:
        if key.endswith(".tfrecord"):
            path = tmp_path / key.rsplit("/", 1)[1]
            storage.download_file(key, path)
            local.append(path)
    items = {i["filename"]: i for i in decode_records(local)}
    labels = {lb["id"]: lb["name"] for lb in cvat.labels(task_id)}
    classes = list(event.classes)
    shapes = cvat.annotations(task_id)
    assert shapes and len(items) == cvat.task(task_id)["size"], "one record per frame"
    for shape in shapes:
        item = items[f"frame_{shape['frame']:06d}.jpg"]
        x1, y1, x2, y2 = shape["points"]
        want = [y1 / SIZE, x1 / SIZE, y2 / SIZE, x2 / SIZE]
        cls = classes.index(labels[shape["label_id"]]) + 1
        pairs = zip(
            item["groundtruth_classes"].tolist(), item["groundtruth_boxes"].tolist(), strict=True
        )
        assert any(c == cls and b == pytest.approx(want, abs=1e-4) for c, b in pairs), shape
    total = sum(len(i["groundtruth_classes"]) for i in items.values())
    assert total == len(shapes), "every shape, and nothing else, became a box"


async def test_a_signed_job_completion_becomes_tfrecords_in_s3(system, cvat, s3_storage, tmp_path):
    images, shapes = make_shapes_dataset(10, size=(SIZE, SIZE), seed=11, kind="rectangle")
    task_id = cvat.add_task(
        "shapes",
        labels=shapes_labels(),
        images=images,
        shapes=shapes,
        project_id=7,
        segment_size=5,
    )
    url = f"http://127.0.0.1:{system.http_ports['gateway']}/webhooks/cvat"
    cvat.add_webhook(url, SECRET, events=("update:job",), project_id=7)
    first_job = cvat.jobs(task_id)[-1]["id"]
    cvat.set_job_state(first_job, state="completed")
    await cvat.wait_for_webhooks(timeout=10)
    assert [d for d in cvat.webhook_deliveries if d.status == 200], "the gateway refused it"

    event = await exported(system)
    assert event.namespace == "team-a" and event.cvat.task_id == task_id
    assert event.training.model_type == "ssd-mobilenet-v2-coco"
    assert_records_match_the_task(s3_storage, event, cvat, task_id, tmp_path)
    status = system.status_view.get(event.job_id)
    assert status.stage == events_pb2.JOB_STAGE_TRAIN
    assert status.state == events_pb2.JOB_STATE_QUEUED


async def test_create_annotation_model_becomes_tfrecords_in_s3(system, cvat, s3_storage, tmp_path):
    images, shapes = make_shapes_dataset(10, size=(SIZE, SIZE), seed=12, kind="rectangle")
    task_id = cvat.add_task("shapes", labels=shapes_labels(), images=images, shapes=shapes)
    address = f"127.0.0.1:{system.grpc_ports['gateway']}"
    async with grpc.aio.insecure_channel(address) as channel:
        stub = training_pb2_grpc.TrainingServiceStub(channel)
        reply = await stub.CreateAnnotationModel(
            training_pb2.CreateAnnotationModelRequest(
                namespace="team-a",
                cvat=common_pb2.CvatRef(task_id=task_id),
                model_type="ssd-mobilenet-v2-coco",
                arguments="epochs=200;batch_size=8",
                model_name="shapes",
            )
        )
        event = await exported(system, reply.job_id)
        assert event.training.arguments == "epochs=200;batch_size=8"
        assert_records_match_the_task(s3_storage, event, cvat, task_id, tmp_path)
        job = await stub.GetJob(training_pb2.GetJobRequest(job_id=reply.job_id))
        assert job.stage == events_pb2.JOB_STAGE_TRAIN and job.cvat.task_id == task_id
