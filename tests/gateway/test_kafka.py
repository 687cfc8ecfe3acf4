"""The gateway over the real Kafka broker: webhooks and TrainingService publish once, and a
restarted gateway still knows every job from the compacted job.status topic."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from preannotate import topics
from preannotate.v1 import common_pb2, events_pb2, training_pb2, training_pb2_grpc
from tests.gateway import payloads

pytestmark = pytest.mark.timeout(180)


async def test_a_signed_job_completion_makes_exactly_one_task_annotated(
    gateway_cleanup, kafka_bootstrap
):
    gw = await gateway_cleanup(kafka_bootstrap=kafka_bootstrap)
    delivery = payloads.job_completed(job_id=19, task_id=15, project_id=4)
    status, answer = await gw.post(delivery)
    assert (status, answer["status"]) == (200, "accepted")
    again = await gw.post(delivery)  # CVAT's retry of the same delivery
    assert again == (200, {"status": "duplicate", "job_id": answer["job_id"]})
    refused = await gw.post(delivery, signature="sha256=" + "1" * 64)
    assert refused[0] == 401
    got = await gw.published(topics.TASK_ANNOTATED, expect=1, timeout=20)
    assert [(e.job_id, e.cvat.task_id, e.cvat.job_id) for e in got] == [(answer["job_id"], 15, 19)]
    # nothing more arrives
    assert len(await gw.published(topics.TASK_ANNOTATED, expect=2, timeout=3)) == 1


async def test_create_annotation_model_publishes_and_the_job_is_visible(
    gateway_cleanup, kafka_bootstrap
):
    gw = await gateway_cleanup(kafka_bootstrap=kafka_bootstrap)
    async with gw.channel() as channel:
        stub = training_pb2_grpc.TrainingServiceStub(channel)
        reply = await stub.CreateAnnotationModel(
            training_pb2.CreateAnnotationModelRequest(
                cvat=common_pb2.CvatRef(task_id=12),
                model_type="ssd-mobilenet-v2-coco",
                arguments="epochs=4000;batch_size=24",
            )
        )
        got = await stub.GetJob(training_pb2.GetJobRequest(job_id=reply.job_id))
        assert got.state == events_pb2.JOB_STATE_QUEUED and got.cvat.task_id == 12
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.CreateAnnotationModel(
                training_pb2.CreateAnnotationModelRequest(
                    cvat=common_pb2.CvatRef(task_id=12),
                    model_type="ssd-mobilenet-v2-coco",
                    arguments="epochs=abc",
                )
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [event] = await gw.published(topics.TASK_ANNOTATED, expect=1, timeout=20)
    assert event.job_id == reply.job_id
    assert event.training.arguments == "epochs=4000;batch_size=24"
    assert len(await gw.published(topics.TASK_ANNOTATED, expect=2, timeout=3)) == 1
    # the status came back through job.status too, not only from the local write
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    view = gw.runtime.status_view
    while view.get(reply.job_id).source != "gateway" and loop.time() < deadline:
        await asyncio.sleep(0.1)
    assert view.get(reply.job_id).source == "gateway"


async def test_a_restarted_gateway_knows_the_jobs(gateway_cleanup, kafka_bootstrap, tmp_path):
    prefix = f"t{uuid.uuid4().hex[:8]}."
    first = await gateway_cleanup(kafka_bootstrap=kafka_bootstrap, topic_prefix=prefix)
    delivery = payloads.job_completed(job_id=31, task_id=30, project_id=4)
    _, hooked = await first.post(delivery)
    async with first.channel() as channel:
        stub = training_pb2_grpc.TrainingServiceStub(channel)
        reply = await stub.CreateAnnotationModel(
            training_pb2.CreateAnnotationModelRequest(
                cvat=common_pb2.CvatRef(task_id=12), model_type="ssd-mobilenet-v2-coco"
            )
        )
        await stub.CancelJob(training_pb2.GetJobRequest(job_id=reply.job_id))
    assert len(await first.published(topics.TASK_ANNOTATED, expect=2, timeout=20)) == 2
    await first.close_readers()
    await first.runtime.stop()
    gateway_cleanup.started.remove(first)

    second = await gateway_cleanup(
        kafka_bootstrap=kafka_bootstrap, topic_prefix=prefix, storage=first.storage
    )
    async with second.channel() as channel:
        stub = training_pb2_grpc.TrainingServiceStub(channel)
        got = await stub.GetJob(training_pb2.GetJobRequest(job_id=reply.job_id))
        assert got.state == events_pb2.JOB_STATE_CANCELLING
        assert got.training.model_type == "ssd-mobilenet-v2-coco"
        listed = await stub.ListJobs(training_pb2.ListJobsRequest())
        assert {j.job_id for j in listed.jobs} == {reply.job_id, hooked["job_id"]}
    # CVAT retrying the old delivery after the restart still makes no second job
    again = await second.post(delivery)
    assert again == (200, {"status": "duplicate", "job_id": hooked["job_id"]})
    assert len(await second.published(topics.TASK_ANNOTATED, expect=3, timeout=3)) == 2
