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

Two faults ride on the same run (the cheapest of bench/chaos.py's, no chain
start-up of their own): a poison record on task.annotated before the training
task (the exporter sends exactly it to task.annotated.dlq and goes on), and a
SIGKILL of the exporter while CVAT prepares the export, a new exporter started
(the record was not committed: it exports again, and the job goes on once).
"""

from __future__ import annotations

import uuid

import pytest

from preannotate import topics
from preannotate.bus import dlq_topic
from preannotate.v1 import events_pb2
from tests.integration.chain import Chain
from tests.integration.flow import (
    NAMESPACE,
    SECRET,
    TOKEN,
    assert_model_shapes,
    convert,
    duplicate_shapes,
    export_requests,
    model_versions,
    policy,
    preannotate_heldout,
    publish_poison,
    start_chain,
    train_killing_the_exporter,
)
from tests.standins.cvat import CvatStandIn

pytestmark = [pytest.mark.timeout(1500), pytest.mark.tf, pytest.mark.kafka]

PROJECTS = {"plain": (7, "shapes"), "killed": (8, "shapes-k")}


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
        policy=policy(PROJECTS),
        namespace=NAMESPACE,
        tmp=module_tmp,
    )
    try:
        await start_chain(chain, cvat, [project_id for project_id, _ in PROJECTS.values()])
        yield chain
    finally:
        await chain.close()


async def test_a_signed_webhook_ends_in_model_shapes_in_a_heldout_task(chain, cvat, bucket):
    project_id, model_name = PROJECTS["plain"]
    poison = await publish_poison(chain)
    task_id, job_id = await train_killing_the_exporter(chain, cvat, project_id, seed=21)
    await convert(chain, bucket, job_id, model_name)

    status = await chain.finished(job_id, 600)
    assert status.state == events_pb2.JOB_STATE_SUCCEEDED, f"{status}\n{chain.logs()}"
    assert status.stage == events_pb2.JOB_STAGE_CONVERT
    assert status.kind == events_pb2.JOB_KIND_TRAINING
    assert status.cvat.task_id == task_id
    assert (status.model.name, status.model.version) == (model_name, 1)
    # The killed exporter's export was asked for again, and its job went on once.
    assert export_requests(cvat, task_id) >= 2
    exported = await chain.records([topics.train_jobs("cpu")])
    assert [r.key for r in exported] == [job_id], "one DatasetExported for the job"

    heldout, annotated = await preannotate_heldout(chain, cvat, project_id, seed=99)
    assert annotated.state == events_pb2.JOB_STATE_SUCCEEDED, f"{annotated}\n{chain.logs()}"
    assert (annotated.model.name, annotated.model.version) == (model_name, 1)
    assert duplicate_shapes(assert_model_shapes(cvat, heldout)) == {}

    assert model_versions(bucket, model_name) == ([1], [1]), "one model version"
    dead = await chain.dead_letters()
    assert [(r.topic, r.key) for r in dead] == [(dlq_topic(topics.TASK_ANNOTATED), poison)], (
        "the DLQ holds the poison record alone"
    )
