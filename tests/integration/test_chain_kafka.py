"""The whole chain in distributed mode: five service processes, the real broker, S3, CVAT.

``python -m preannotate run <service>`` for the gateway, exporter, trainer,
converter and inference service (in-process TensorFlow), with their real
handlers, over the Kafka broker and moto's S3 server of the test session, and
the CVAT stand-in in the test process as their CVAT. The product's own path:

1. a training task in a watched project; its jobs turn completed, and the
   stand-in delivers the signed ``update:task`` webhook to the gateway;
2. gateway -> task.annotated -> exporter (COCO export from CVAT, TFRecords in
   S3) -> train.jobs.cpu -> trainer (a tiny SSD from a random start) ->
   model.trained -> converter (SavedModel, parity check) -> model.converted;
3. a held-out task created in the project: the signed ``create:task`` webhook
   makes the gateway request its pre-annotation with the newest ready model
   (annotation.requested) -> inference writes shapes into the task.

The tiny model is weak: the test asserts the write path (shapes with the
training task's label names, written by the model) rather than their quality.
A model of a few steps from a random start scores every box below Model
Garden's pre-NMS score threshold (0.05), which the export keeps, so no
request threshold could get a shape out of it. As tests/converter/trained.py
does, the test opens that threshold in the version's experiment.yaml
(post-processing only; the weights are the trainer's) between the trainer and
the converter: the converter process starts once model.trained is out.
"""

from __future__ import annotations

import json
import uuid

import pytest
import yaml

from preannotate import layout
from preannotate.v1 import events_pb2
from tests.integration.chain import SERVICES, Chain, wait_for
from tests.standins.cvat import CvatStandIn, make_shapes_dataset, shapes_labels

pytestmark = [pytest.mark.timeout(1500), pytest.mark.tf, pytest.mark.kafka]

SECRET = "chain-webhook-secret"
TOKEN = "chain-cvat-token"
NAMESPACE = "team-a"
CLASSES = ("circle", "square")
SIZE = (96, 96)
#: A tiny SSD from a random start (no published weights offline).
ARGUMENTS = (
    "epochs=8;batch_size=2;input_size=128;checkpoint_every=4;warmup_steps=2;"
    "eval=false;pretrained=false"
)
#: Detections the opened model keeps per image.
MAX_DETECTIONS = 5
PROJECTS = {"plain": (7, "shapes"), "killed": (8, "shapes-k")}


def policy() -> dict:
    return {
        "global_secret": True,  # one webhook secret; tasks confirmed with the stand-in
        "projects": [
            {
                "project_id": project_id,
                "namespace": NAMESPACE,
                "trigger": "task",
                "model_type": "ssd-mobilenet-v2-coco",
                "arguments": ARGUMENTS,
                "model_name": name,
                "annotate_new_tasks": True,
                "threshold": 0.001,
            }
            for project_id, name in PROJECTS.values()
        ],
    }


@pytest.fixture(scope="module")
async def cvat():
    server = CvatStandIn(tokens={TOKEN})
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("chain")


@pytest.fixture(scope="module")
def bucket(s3_endpoint):
    from preannotate.storage import S3Storage
    from tests.conftest import S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY

    return S3Storage(
        bucket=f"chain-{uuid.uuid4().hex[:8]}",
        endpoint_url=s3_endpoint,
        region=S3_REGION,
        access_key=S3_ACCESS_KEY,
        secret_key=S3_SECRET_KEY,
        create_bucket=True,
    )


@pytest.fixture(scope="module")
async def chain(kafka_bootstrap, s3_endpoint, bucket, cvat, module_tmp):
    """The five services started, and the stand-in's webhook pointed at the gateway."""
    chain = Chain(
        bootstrap=kafka_bootstrap,
        endpoint=s3_endpoint,
        bucket=bucket.bucket,
        cvat_url=cvat.url,
        cvat_token=TOKEN,
        webhook_secret=SECRET,
        policy=policy(),
        namespace=NAMESPACE,
        tmp=module_tmp,
    )
    try:
        await chain.open()
        early = [s for s in SERVICES if s != "converter"]
        for service in early:
            chain.start(service)
        started = {s: await chain.wait_started(s) for s in early}
        port = started["gateway"]["http"]["gateway"]
        for project_id, _name in PROJECTS.values():
            cvat.add_webhook(
                f"http://127.0.0.1:{port}/webhooks/cvat",
                SECRET,
                events=("update:task", "create:task"),
                project_id=project_id,
            )
        yield chain
    finally:
        await chain.close()


def accepted_job(cvat: CvatStandIn, event: str, resource_id: int) -> str | None:
    """The job id the gateway answered for the task's delivery of ``event``, once accepted."""
    for d in cvat.webhook_deliveries:
        task = d.payload.get("task", {})
        if d.event == event and task.get("id") == resource_id and d.status == 200:
            body = json.loads(d.response)
            if body.get("status") == "accepted":
                return body["job_id"]
    return None


def add_training_task(cvat: CvatStandIn, project_id: int, seed: int) -> int:
    images, shapes = make_shapes_dataset(
        12, size=SIZE, classes=CLASSES, seed=seed, kind="rectangle"
    )
    return cvat.add_task(
        "train",
        labels=shapes_labels(CLASSES),
        images=images,
        shapes=shapes,
        project_id=project_id,
        segment_size=6,
    )


def complete(cvat: CvatStandIn, task_id: int) -> None:
    """Every job of the task turns completed (the task then turns completed: update:task)."""
    for job in cvat.jobs(task_id):
        cvat.set_job_state(job["id"], state="completed")


async def train(chain: Chain, cvat: CvatStandIn, project_id: int, seed: int) -> tuple[int, str]:
    """A training task completed in ``project_id``: (task id, the gateway's job id)."""
    task_id = add_training_task(cvat, project_id, seed)
    complete(cvat, task_id)
    job_id = await wait_for(
        lambda: accepted_job(cvat, "update:task", task_id),
        30,
        f"the gateway to accept update:task of task {task_id}",
        chain,
    )
    return task_id, job_id


async def preannotate_heldout(
    chain: Chain, cvat: CvatStandIn, project_id: int, seed: int
) -> tuple[int, events_pb2.JobStatus]:
    """A held-out task created in ``project_id``: (task id, its annotation job's end status)."""
    images, _ = make_shapes_dataset(4, size=SIZE, classes=CLASSES, seed=seed, kind="rectangle")
    task_id = cvat.add_task(
        "heldout", labels=shapes_labels(CLASSES), images=images, project_id=project_id
    )
    job_id = await wait_for(
        lambda: accepted_job(cvat, "create:task", task_id),
        30,
        f"the gateway to accept create:task of task {task_id}",
        chain,
    )
    return task_id, await chain.finished(job_id, 300)


def assert_model_shapes(cvat: CvatStandIn, task_id: int) -> list[dict]:
    shapes = cvat.annotations(task_id)
    assert shapes, "the model wrote no shape into the held-out task"
    labels = {lb["id"]: lb["name"] for lb in cvat.labels(task_id)}
    assert {labels[s["label_id"]] for s in shapes} <= set(CLASSES)
    assert all(s["source"] == "auto" for s in shapes), {s["source"] for s in shapes}
    return shapes


async def assert_clean_end(chain: Chain, bucket, model_name: str) -> None:
    assert layout.finished_versions(bucket, NAMESPACE, model_name) == [1], "one model version"
    assert layout.finished_versions(bucket, NAMESPACE, model_name, area=layout.SERVING) == [1]
    assert await chain.dead_letters() == [], "nothing in any DLQ"


def open_threshold(bucket, model_name: str) -> None:
    """Keep the best boxes whatever their score (see the module's docstring)."""
    key = f"{NAMESPACE}/models/{model_name}/1/experiment.yaml"
    document = yaml.safe_load(bucket.get(key))
    generator = document["task"]["model"]["detection_generator"]
    generator["pre_nms_score_threshold"] = 0.0
    generator["max_num_detections"] = MAX_DETECTIONS
    bucket.put(key, yaml.safe_dump(document, sort_keys=True).encode())


async def convert(chain: Chain, bucket, job_id: str, model_name: str) -> None:
    """Once the job waits for the converter: open the threshold, start the converter."""

    def trained():
        status = chain.view.get(job_id)
        if status is not None and status.state == events_pb2.JOB_STATE_FAILED:
            raise AssertionError(f"{status}\n{chain.logs()}")
        return status is not None and status.stage == events_pb2.JOB_STAGE_CONVERT

    await wait_for(trained, 600, f"job {job_id} to reach the converter", chain)
    open_threshold(bucket, model_name)
    if not chain.procs["converter"]:
        chain.start("converter")
        await chain.wait_started("converter")


async def test_a_signed_webhook_ends_in_model_shapes_in_a_heldout_task(chain, cvat, bucket):
    project_id, model_name = PROJECTS["plain"]
    task_id, job_id = await train(chain, cvat, project_id, seed=21)
    await convert(chain, bucket, job_id, model_name)

    status = await chain.finished(job_id, 600)
    assert status.state == events_pb2.JOB_STATE_SUCCEEDED, f"{status}\n{chain.logs()}"
    assert status.stage == events_pb2.JOB_STAGE_CONVERT
    assert status.kind == events_pb2.JOB_KIND_TRAINING
    assert status.cvat.task_id == task_id
    assert (status.model.name, status.model.version) == (model_name, 1)

    heldout, annotated = await preannotate_heldout(chain, cvat, project_id, seed=99)
    assert annotated.state == events_pb2.JOB_STATE_SUCCEEDED, f"{annotated}\n{chain.logs()}"
    assert (annotated.model.name, annotated.model.version) == (model_name, 1)
    assert_model_shapes(cvat, heldout)
    await assert_clean_end(chain, bucket, model_name)
