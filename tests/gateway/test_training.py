"""TrainingService over a real grpc.aio channel, on a gateway over the in-process bus."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from preannotate import topics
from preannotate.status import snapshot
from preannotate.v1 import common_pb2, events_pb2, training_pb2
from tests.gateway.conftest import statuses, write_model

pytestmark = pytest.mark.timeout(60)


def create(task: int = 12, model: str = "ssd-mobilenet-v2-coco", args: str = "", **kw):
    return training_pb2.CreateAnnotationModelRequest(
        cvat=common_pb2.CvatRef(task_id=task), model_type=model, arguments=args, **kw
    )


async def refused(stub, request, code=grpc.StatusCode.INVALID_ARGUMENT) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CreateAnnotationModel(request)
    assert info.value.code() == code, info.value.details()
    return info.value.details()


async def test_create_queues_the_job_and_publishes_task_annotated(gateway, stub):
    reply = await stub.CreateAnnotationModel(
        create(12, args="epochs=4000;batch_size=24", model_name="birds")
    )
    assert reply.job_id.startswith("job-")
    assert reply.status.state == events_pb2.JOB_STATE_QUEUED
    assert reply.status.stage == events_pb2.JOB_STAGE_EXPORT
    assert reply.status.namespace == "team-a"  # the gateway's default namespace
    [event] = await gateway.published(topics.TASK_ANNOTATED)
    assert event.job_id == reply.job_id and event.trigger == "grpc"
    assert event.cvat.task_id == 12
    assert event.training.model_type == "ssd-mobilenet-v2-coco"
    assert event.training.arguments == "epochs=4000;batch_size=24"
    assert event.training.machine_type == "cpu"
    assert event.training.model_name == "birds"
    assert event.requested_by == "anonymous"
    got = await stub.GetJob(training_pb2.GetJobRequest(job_id=reply.job_id))
    assert got.job_id == reply.job_id and got.training.model_name == "birds"
    assert got.details["num_clones"] == "1"
    assert got.details["arguments"] == "batch_size=24;epochs=4000"


async def test_the_model_name_defaults_from_type_and_task(gateway, stub):
    await stub.CreateAnnotationModel(create(7))
    [event] = await gateway.published(topics.TASK_ANNOTATED)
    assert event.training.model_name == "ssd-mobilenet-v2-coco-task7"


async def test_gpus_pick_a_machine_type_that_has_them(gateway, stub):
    await stub.CreateAnnotationModel(create(12, model="frcnn-res50-coco", gpus=2))
    [event] = await gateway.published(topics.TASK_ANNOTATED)
    assert event.training.machine_type == "gpu-2"
    assert event.training.gpus == 2


async def test_the_same_request_id_gives_the_same_job(gateway, stub):
    first = await stub.CreateAnnotationModel(create(12, request_id="abc-1"))
    again = await stub.CreateAnnotationModel(create(12, request_id="abc-1"))
    other = await stub.CreateAnnotationModel(create(12, request_id="abc-2"))
    assert first.job_id == again.job_id != other.job_id
    await asyncio.sleep(0.1)
    assert len(await gateway.published(topics.TASK_ANNOTATED, expect=3, timeout=0.3)) == 2


@pytest.mark.parametrize(
    ("request_", "says"),
    [
        (create(model="yolo-v9"), ["unknown model type 'yolo-v9'", "ssd-mobilenet-v2-coco"]),
        (create(model=""), ["model type is required", "frcnn-res50-coco"]),
        (create(args="epochs=abc"), ["epochs='abc'", "whole number"]),
        (create(args="epochs=100;learning_speed=3"), ["learning_speed", "allowed:", "batch_size"]),
        (create(args="epochs"), ["has no value"]),
        (create(args="num_clones=4"), ["num_clones=4", "more than this machine has"]),
        (
            create(model="frcnn-res50-coco", args="num_clones=3", machine_type="gpu-2"),
            ["num_clones=3", "2 GPUs"],
        ),
        (create(gpus=8), ["no machine type has 8 GPUs"]),
        (create(machine_type="tpu-9"), ["unknown machine type 'tpu-9'", "gpu-2"]),
        (create(model="frcnn-nas-coco"), ["needs 2 or more GPUs"]),
        (create(base_model="team-b/birds/3"), ["namespace 'team-b'", "same namespace"]),
        (create(base_model="team-b/birds"), ["namespace 'team-b'"]),
        (create(model_name="Birds!"), ["model name", "lower-case"]),
        (create(task=0), ["cvat.task_id is required"]),
        (create(namespace="../etc"), ["namespace", "not allowed"]),
    ],
)
async def test_bad_requests_are_refused_before_anything_is_published(gateway, stub, request_, says):
    details = await refused(stub, request_)
    for fragment in says:
        assert fragment in details, details
    await asyncio.sleep(0.05)
    assert await gateway.published(topics.TASK_ANNOTATED, expect=0, timeout=0) == []
    assert statuses(gateway) == []


async def test_a_base_model_must_exist_in_the_namespace(gateway, stub):
    details = await refused(stub, create(base_model="birds"), grpc.StatusCode.NOT_FOUND)
    assert "base model team-a/birds does not exist" in details
    write_model(gateway.storage, "team-a", "birds", 2, area="models")
    details = await refused(stub, create(base_model="birds/5"), grpc.StatusCode.NOT_FOUND)
    assert "trained versions are 2" in details
    assert await gateway.published(topics.TASK_ANNOTATED, expect=0, timeout=0) == []
    reply = await stub.CreateAnnotationModel(create(base_model="birds"))
    [event] = await gateway.published(topics.TASK_ANNOTATED)
    assert event.job_id == reply.job_id
    base = event.training.base_model
    assert (base.namespace, base.name, base.version) == ("team-a", "birds", 0)


async def progress(gw, job_id: str, *, stage, state, step=0, total=0, text="") -> None:
    """Write a later status of the job, as the exporter or trainer would."""
    msg = events_pb2.TaskAnnotated(job_id=job_id, namespace="team-a")
    status = snapshot(
        msg,
        stage=stage,
        state=state,
        text=text,
        progress=events_pb2.Progress(step=step, total=total),
    )
    await gw.runtime.status_writer.write(status)


async def test_watch_streams_status_changes_until_the_job_ends(gateway, stub):
    reply = await stub.CreateAnnotationModel(create(12))
    job_id = reply.job_id
    seen: list[events_pb2.JobStatus] = []

    async def watch():
        async for status in stub.WatchJob(training_pb2.GetJobRequest(job_id=job_id)):
            seen.append(status)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.2)
    await progress(
        gateway,
        job_id,
        stage=events_pb2.JOB_STAGE_EXPORT,
        state=events_pb2.JOB_STATE_RUNNING,
        text="exporting",
    )
    await asyncio.sleep(0.1)
    for step in (10, 20):
        await progress(
            gateway,
            job_id,
            stage=events_pb2.JOB_STAGE_TRAIN,
            state=events_pb2.JOB_STATE_RUNNING,
            step=step,
            total=20,
        )
        await asyncio.sleep(0.1)
    await progress(
        gateway,
        job_id,
        stage=events_pb2.JOB_STAGE_CONVERT,
        state=events_pb2.JOB_STATE_SUCCEEDED,
        text="model ready",
    )
    await asyncio.wait_for(watcher, 10)
    assert seen[0].state == events_pb2.JOB_STATE_QUEUED
    assert [s.progress.step for s in seen if s.stage == events_pb2.JOB_STAGE_TRAIN] == [10, 20]
    assert seen[-1].state == events_pb2.JOB_STATE_SUCCEEDED
    assert seen[-1].training.model_type == "ssd-mobilenet-v2-coco"  # carried over by the view
    # watching an ended job answers its last status and ends
    again = [s async for s in stub.WatchJob(training_pb2.GetJobRequest(job_id=job_id))]
    assert [s.state for s in again] == [events_pb2.JOB_STATE_SUCCEEDED]


async def test_unknown_jobs_are_not_found(stub):
    for call in (stub.GetJob, stub.CancelJob):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(training_pb2.GetJobRequest(job_id="job-nope"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in stub.WatchJob(training_pb2.GetJobRequest(job_id="job-nope")):
            pass
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_cancel_asks_the_job_to_stop_and_refuses_ended_jobs(gateway, stub):
    reply = await stub.CreateAnnotationModel(create(12))
    cancelled = await stub.CancelJob(training_pb2.GetJobRequest(job_id=reply.job_id))
    assert cancelled.state == events_pb2.JOB_STATE_CANCELLING
    assert "cancel requested by anonymous" in cancelled.message
    last = statuses(gateway, reply.job_id)[-1]
    assert last.state == events_pb2.JOB_STATE_CANCELLING
    assert gateway.runtime.status_view.cancel_requested(reply.job_id)
    # asking twice is fine
    again = await stub.CancelJob(training_pb2.GetJobRequest(job_id=reply.job_id))
    assert again.state == events_pb2.JOB_STATE_CANCELLING
    # the trainer stops it
    await progress(
        gateway,
        reply.job_id,
        stage=events_pb2.JOB_STAGE_TRAIN,
        state=events_pb2.JOB_STATE_CANCELLED,
        text="cancelled at step 40",
    )
    await asyncio.sleep(0.1)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CancelJob(training_pb2.GetJobRequest(job_id=reply.job_id))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "has ended (cancelled)" in info.value.details()


async def test_list_jobs_filters_by_namespace_and_state(gateway, stub):
    a = await stub.CreateAnnotationModel(create(1))
    b = await stub.CreateAnnotationModel(create(2, namespace="team-b"))
    await progress(
        gateway, a.job_id, stage=events_pb2.JOB_STAGE_EXPORT, state=events_pb2.JOB_STATE_RUNNING
    )
    await asyncio.sleep(0.1)
    every = await stub.ListJobs(training_pb2.ListJobsRequest())
    assert {j.job_id for j in every.jobs} == {a.job_id, b.job_id}
    only_b = await stub.ListJobs(training_pb2.ListJobsRequest(namespace="team-b"))
    assert [j.job_id for j in only_b.jobs] == [b.job_id]
    running = await stub.ListJobs(
        training_pb2.ListJobsRequest(states=[events_pb2.JOB_STATE_RUNNING])
    )
    assert [j.job_id for j in running.jobs] == [a.job_id]


async def test_list_models_reads_the_manifests(gateway, stub):
    write_model(
        gateway.storage,
        "team-a",
        "birds",
        1,
        area="models",
        model_type="ssd-mobilenet-v2-coco",
        classes=["duck", "goose"],
        metrics={"AP": 0.41},
        job_id="job-1",
        input_size=256,
        created_at="2024-05-01T10:00:00+00:00",
        init={"init": "base team-a/birds-old/4", "init_note": "heads start fresh"},
    )
    write_model(gateway.storage, "team-a", "birds", 1, model_type="ssd-mobilenet-v2-coco")
    write_model(
        gateway.storage,
        "team-a",
        "birds",
        2,
        area="models",
        model_type="ssd-mobilenet-v2-coco",
        classes=["duck"],
    )
    write_model(gateway.storage, "team-b", "cats", 1)
    gateway.storage.put("team-a/models/owls/1/classes.csv", b"owl")  # unfinished: no manifest
    reply = await stub.ListModels(common_pb2.ListModelsRequest(namespace="team-a"))
    got = [(m.ref.name, m.ref.version) for m in reply.models]
    assert got == [("birds", 1), ("birds", 2)]
    v1, v2 = reply.models
    assert v1.serving_path == "team-a/serving/birds/1/"
    assert list(v1.classes) == ["duck", "goose"]  # from the model's manifest
    assert v1.metrics["AP"] == pytest.approx(0.41)
    assert (v1.job_id, v1.input_size, v1.model_type) == ("job-1", 256, "ssd-mobilenet-v2-coco")
    assert v1.created_at.seconds > 0
    assert v1.start == "base team-a/birds-old/4"  # the start its training used
    assert v2.serving_path == "" and v2.start == ""  # trained, not exported; start not recorded
    default = await stub.ListModels(common_pb2.ListModelsRequest())
    assert [m.ref.name for m in default.models] == ["birds", "birds"]


async def test_list_model_types_shows_the_catalog(stub):
    reply = await stub.ListModelTypes(training_pb2.ListModelTypesRequest())
    by_name = {t.name: t for t in reply.model_types}
    assert "ssd-mobilenet-v2-coco" in by_name and "maskrcnn" in by_name
    ssd = by_name["ssd-mobilenet-v2-coco"]
    assert (ssd.batch_size, ssd.steps) == (24, 15000)
    assert ssd.learning_rate == pytest.approx(0.004)
    assert ssd.when_to_pick
    assert "epochs" in {a.key for a in ssd.arguments}
    assert by_name["frcnn-nas-coco"].min_gpus == 2
    assert by_name["maskrcnn"].has_masks


async def test_health_and_reflection_are_served(gateway):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with gateway.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(
            health_pb2.HealthCheckRequest(service="preannotate.v1.TrainingService")
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_failed_publish_is_unavailable_and_a_retry_queues_the_job(gateway, stub):
    real_send = gateway.bus.send
    failures = {"left": 1}

    async def flaky_send(topic, value, **kw):
        if topic == topics.TASK_ANNOTATED and failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("broker went away")
        return await real_send(topic, value, **kw)

    gateway.bus.send = flaky_send
    details = await refused(stub, create(12, request_id="r-1"), grpc.StatusCode.UNAVAILABLE)
    assert "send the same request again" in details
    assert statuses(gateway) == [] and gateway.runtime.status_view.list() == []
    reply = await stub.CreateAnnotationModel(create(12, request_id="r-1"))
    [event] = await gateway.published(topics.TASK_ANNOTATED)
    assert event.job_id == reply.job_id
