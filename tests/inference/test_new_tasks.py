"""New CVAT tasks pre-annotate themselves, in CVAT's real order.

CVAT fires ``create:task`` when the task row is made, before any data; the data
is uploaded later and processed in the background, and only then do frames and
jobs exist. The gateway and the inference service run in one process on the
in-process bus (as ``preannotate up`` runs them), against the CVAT stand-in.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml

from preannotate import events, topics
from preannotate.bus import MemoryBus
from preannotate.cvat import WAITING
from preannotate.runner import Runtime
from preannotate.storage import LocalStorage
from preannotate.v1 import common_pb2, events_pb2
from services.gateway.service import build as build_gateway
from services.gateway.settings import GatewaySettings
from services.inference.app import AnnotationJob
from services.inference.service import build as build_inference
from tests.inference.helpers import make_settings, publish_model
from tests.standins.cvat import CvatStandIn, make_shapes_dataset, shapes_labels

pytestmark = [pytest.mark.tf, pytest.mark.timeout(300)]

SECRET = "webhook-secret-for-new-tasks"
PROJECT = 7
#: How long a run waits for a task's data here (the setting is 30 minutes by default).
DATA_WAIT_SECONDS = 6.0


@pytest.fixture(scope="module")
async def chain(tmp_path_factory, retinanet_dir) -> AsyncIterator[tuple[Runtime, CvatStandIn]]:
    """The gateway and the inference service in one runtime, a model ready in
    ``default/shapes``, and the stand-in's webhook on the gateway."""
    tmp = tmp_path_factory.mktemp("new-tasks")
    storage = LocalStorage(tmp / "storage")
    publish_model(storage, retinanet_dir, name="shapes")
    policy = {
        "global_secret": True,
        "confirm_tasks": False,
        "projects": [
            {
                "project_id": PROJECT,
                "namespace": "default",
                "model_type": "ssd-mobilenet-v2-coco",
                "model_name": "shapes",
                "annotate_new_tasks": True,
                "threshold": 0.1,
            }
        ],
    }
    policy_file = tmp / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy))
    async with CvatStandIn(tokens={"cvat-token-for-tests"}) as cvat:
        gateway = GatewaySettings(
            bus="memory",
            namespace="default",
            webhook_secret=SECRET,
            webhook_policy_file=policy_file,
            gateway_grpc_port=0,
            gateway_http_port=0,
            metrics_port=0,
        )
        inference = make_settings(
            tmp,
            cvat_url=cvat.url,
            cvat_token="cvat-token-for-tests",
            cvat_data_wait_seconds=DATA_WAIT_SECONDS,
            metrics_port=0,
        )
        runtime = Runtime(
            [(build_gateway(gateway), gateway), (build_inference(inference), inference)],
            bus=MemoryBus(default_partitions=1),
            storage=storage,
        )
        await runtime.start()
        try:
            port = runtime.http_ports["gateway"]
            cvat.add_webhook(f"http://127.0.0.1:{port}/webhooks/cvat", SECRET,
                             events=("create:task",), project_id=PROJECT)  # fmt: skip
            yield runtime, cvat
        finally:
            await runtime.stop()


def _statuses(runtime: Runtime, job_id: str) -> list[events_pb2.JobStatus]:
    records = [events.decode(r) for r in runtime.bus.records(topics.JOB_STATUS)]
    return [s for s in records if s.job_id == job_id]


async def _accepted_job(cvat: CvatStandIn, task_id: int) -> str:
    """The job id the gateway answered the task's create:task with."""
    for delivery in await cvat.wait_for_webhooks():
        task = delivery.payload.get("task", {})
        if delivery.event == "create:task" and task.get("id") == task_id:
            assert delivery.status == 200, delivery.response
            body = yaml.safe_load(delivery.response)
            assert body["status"] == "accepted", body
            return body["job_id"]
    raise AssertionError(f"no create:task delivery for task {task_id}")


async def _ended(runtime: Runtime, job_id: str, timeout: float = 120) -> events_pb2.JobStatus:
    async with asyncio.timeout(timeout):
        while True:
            for status in _statuses(runtime, job_id):
                if status.state in (events_pb2.JOB_STATE_SUCCEEDED, events_pb2.JOB_STATE_FAILED):
                    return status
            await asyncio.sleep(0.05)


async def test_a_new_task_is_preannotated_once_its_data_is_in(chain) -> None:
    runtime, cvat = chain
    task_id = cvat.create_task("new", shapes_labels(), project_id=PROJECT, segment_size=2)
    job_id = await _accepted_job(cvat, task_id)
    assert cvat.jobs(task_id) == [], "CVAT has no jobs before the data is in"
    await asyncio.sleep(2)  # a person picks the files
    images, _ = make_shapes_dataset(6, size=(160, 120), seed=5)
    cvat.upload_data(task_id, images)

    status = await _ended(runtime, job_id)
    assert status.state == events_pb2.JOB_STATE_SUCCEEDED, status.message
    messages = [s.message for s in _statuses(runtime, job_id)]
    assert any(m.startswith(WAITING) for m in messages), messages
    jobs = cvat.jobs(task_id)
    assert len(jobs) == 3
    shapes = cvat.annotations(task_id)
    for job in jobs:
        frames = range(job["start_frame"], job["stop_frame"] + 1)
        assert any(s["frame"] in frames for s in shapes), f"no shapes in job {job['id']}"
    assert {s["source"] for s in shapes} == {"auto"}
    [done] = [events.decode(r) for r in runtime.bus.records(topics.TASK_PREANNOTATED)
              if events.decode(r).job_id == job_id]  # fmt: skip
    assert (done.frames_total, done.frames_done) == (6, 6)


async def test_a_task_whose_data_never_comes_fails_with_the_reason(chain) -> None:
    runtime, cvat = chain
    task_id = cvat.create_task("empty", shapes_labels(), project_id=PROJECT)
    job_id = await _accepted_job(cvat, task_id)
    status = await _ended(runtime, job_id)
    assert status.state == events_pb2.JOB_STATE_FAILED
    assert "CVAT has not finished the task's data after 6 s" in status.message
    assert "no data uploaded" in status.message
    assert "PREANNOTATE_CVAT_DATA_WAIT_SECONDS" in status.message
    assert not [r for r in runtime.bus.records(topics.TASK_PREANNOTATED)
                if events.decode(r).job_id == job_id]  # fmt: skip


async def test_failed_data_processing_fails_the_run_at_once(chain) -> None:
    runtime, cvat = chain
    task_id = cvat.create_task("broken", shapes_labels(), project_id=PROJECT)
    cvat.fail_data(task_id, "Not enough space on the device")
    job_id = await _accepted_job(cvat, task_id)
    images, _ = make_shapes_dataset(2, size=(160, 120))
    cvat.upload_data(task_id, images)
    status = await _ended(runtime, job_id, timeout=DATA_WAIT_SECONDS - 1)
    assert status.state == events_pb2.JOB_STATE_FAILED
    assert "CVAT failed to process the data" in status.message
    assert "Not enough space on the device" in status.message


async def test_deleted_frames_get_no_shapes(app, cvat) -> None:
    images, _ = make_shapes_dataset(6, size=(160, 120), seed=5)
    task_id = cvat.add_task("old", shapes_labels(), images, segment_size=3,
                            deleted_frames=[1, 4])  # fmt: skip
    done = await app.annotate(_job(task_id, threshold=0.1))
    assert (done.frames_total, done.frames_done) == (4, 4)
    frames = {s["frame"] for s in cvat.annotations(task_id)}
    assert frames and not frames & {1, 4}, frames
    fetched = {r.query.get("number") for r in cvat.request_log if r.path.endswith("/data")}
    assert not fetched & {"1", "4"}, "deleted frames are not even fetched"


def _job(task_id: int, **kw: Any) -> AnnotationJob:
    return AnnotationJob(
        job_id=f"ann-{uuid.uuid4().hex[:8]}",
        namespace="default",
        cvat=common_pb2.CvatRef(task_id=task_id),
        model=common_pb2.ModelRef(namespace="default", name="shapes"),
        **kw,
    )
