"""Job ids belong to a namespace: the hijack of issue 11, tried on the real services.

A gateway and an inference service (each a runner with its gRPC server, the
tokens file checked by the interceptor) share one in-process bus and storage, as
the distributed mode shares Kafka and S3. Alice and Dave work in team-a (Carol
is its admin), Bob in team-b. The serving backend is a stand-in answering one
box per image (the real ones need trained fixture models); everything from the
gRPC call to CVAT's stand-in is the services' own code.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from preannotate import events, topics
from preannotate.bus import MemoryBus
from preannotate.runner import Runtime
from preannotate.status import StatusWriter
from preannotate.v1 import (
    common_pb2,
    events_pb2,
    inference_pb2,
    inference_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)
from services.gateway.jobs import request_job_id
from tests.security.standin import GatedBackend, two_services
from tests.standins.cvat import CvatStandIn, make_shapes_dataset, shapes_labels

pytestmark = pytest.mark.timeout(90)

ALICE = "token-of-alice-0123456789"
DAVE = "token-of-dave-01234567890"
CAROL = "token-of-carol-0123456789"
BOB = "token-of-bob-0123456789ab"
TOKENS = {
    "tokens": [
        {"name": "alice", "token": ALICE, "namespaces": ["team-a"]},
        {"name": "dave", "token": DAVE, "namespaces": ["team-a"]},
        {"name": "carol", "token": CAROL, "namespaces": ["team-a"], "admin": ["team-a"]},
        {"name": "bob", "token": BOB, "namespaces": ["team-b"]},
    ]
}
CATS = common_pb2.ModelRef(namespace="team-b", name="cats")


def auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@dataclass
class Platform:
    bus: MemoryBus
    gateway: Runtime
    inference: Runtime
    training: training_pb2_grpc.TrainingServiceStub
    annotating: inference_pb2_grpc.InferenceServiceStub
    backend: GatedBackend
    cvat: CvatStandIn

    def statuses(self, job_id: str) -> list[events_pb2.JobStatus]:
        records = (events.decode(r) for r in self.bus.records(topics.JOB_STATUS))
        return [s for s in records if s.job_id == job_id]

    def published(self, topic: str) -> list:
        return [events.decode(r) for r in self.bus.records(topic)]

    async def seen_by_both(self, job_id: str, state: int | None = None) -> None:
        """Wait until both services' job.status views show the job (in ``state``)."""
        for runtime in (self.gateway, self.inference):
            view = runtime.status_view
            assert view is not None
            for _ in range(200):
                known = view.get(job_id)
                if known is not None and (state is None or known.state == state):
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError(f"{runtime.services[0][0].name} never saw {job_id}")

    async def train(self, token: str, request_id: str = "") -> str:
        reply = await self.training.CreateAnnotationModel(
            training_pb2.CreateAnnotationModelRequest(
                namespace="team-a",
                cvat=common_pb2.CvatRef(task_id=12),
                model_type="ssd-mobilenet-v2-coco",
                request_id=request_id,
            ),
            metadata=auth(token),
        )
        await self.seen_by_both(reply.job_id)
        return reply.job_id

    def add_task(self) -> int:
        images, _ = make_shapes_dataset(3, size=(60, 40), seed=7)
        return self.cvat.add_task("t", labels=shapes_labels(), images=images)

    async def annotate(self, token: str, job_id: str, task_id: int) -> list:
        request = inference_pb2.AnnotateTaskRequest(
            model=CATS, cvat=common_pb2.CvatRef(task_id=task_id), threshold=0.5, job_id=job_id
        )
        return [u async for u in self.annotating.AnnotateTask(request, metadata=auth(token))]


async def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value.code()


@pytest.fixture
async def platform(tmp_path: Path, monkeypatch) -> AsyncIterator[Platform]:
    async with two_services(tmp_path, monkeypatch, TOKENS, model=("team-b", "cats")) as s:
        yield Platform(
            bus=s.gateway_bus,
            gateway=s.gateway,
            inference=s.inference,
            training=s.training,
            annotating=s.annotating,
            backend=s.backend,
            cvat=s.cvat,
        )


async def test_another_namespaces_job_id_in_annotate_task_is_refused(platform):
    job_id = await platform.train(ALICE)
    before = platform.statuses(job_id)
    task_id = platform.add_task()

    code = await code_of(platform.annotate(BOB, job_id, task_id))

    assert code == grpc.StatusCode.ALREADY_EXISTS
    # nothing was run, written or moved
    assert platform.backend.calls == 0 and platform.cvat.annotations(task_id) == []
    assert platform.statuses(job_id) == before
    assert platform.published(topics.TASK_PREANNOTATED) == []
    owner = await platform.training.GetJob(
        training_pb2.GetJobRequest(job_id=job_id), metadata=auth(ALICE)
    )
    assert (owner.namespace, owner.kind) == ("team-a", events_pb2.JOB_KIND_TRAINING)
    assert owner.state == events_pb2.JOB_STATE_QUEUED and owner.details["requested_by"] == "alice"
    intruder = platform.training.GetJob(
        training_pb2.GetJobRequest(job_id=job_id), metadata=auth(BOB)
    )
    assert await code_of(intruder) == grpc.StatusCode.NOT_FOUND
    listed = await platform.training.ListJobs(training_pb2.ListJobsRequest(), metadata=auth(BOB))
    assert list(listed.jobs) == []


async def test_a_legitimate_annotate_task_works_and_records_its_requester(platform):
    task_id = platform.add_task()
    updates = await platform.annotate(BOB, "bobs-run-1", task_id)
    assert updates[-1].done and updates[-1].shapes_written == 3
    assert len(platform.cvat.annotations(task_id)) == 3
    await platform.seen_by_both("bobs-run-1", events_pb2.JOB_STATE_SUCCEEDED)
    job = await platform.training.GetJob(
        training_pb2.GetJobRequest(job_id="bobs-run-1"), metadata=auth(BOB)
    )
    assert job.namespace == "team-b" and job.details["requested_by"] == "bob"
    # the same caller may name its own job id again (a retry of the same run)
    again = await platform.annotate(BOB, "bobs-run-1", task_id)
    assert again[-1].done


async def test_the_gateway_refuses_a_job_id_another_namespace_holds(platform):
    # gateway job ids are derived from (namespace, request_id): Bob can compute
    # team-a's next one and take it first through AnnotateTask
    taken = request_job_id("team-a", "nightly")
    task_id = platform.add_task()
    await platform.annotate(BOB, taken, task_id)
    await platform.seen_by_both(taken, events_pb2.JOB_STATE_SUCCEEDED)

    call = platform.training.CreateAnnotationModel(
        training_pb2.CreateAnnotationModelRequest(
            namespace="team-a",
            cvat=common_pb2.CvatRef(task_id=12),
            model_type="ssd-mobilenet-v2-coco",
            request_id="nightly",
        ),
        metadata=auth(ALICE),
    )
    assert await code_of(call) == grpc.StatusCode.ALREADY_EXISTS
    assert platform.published(topics.TASK_ANNOTATED) == []
    # Alice is not shown Bob's job as hers, and it stays Bob's
    hidden = platform.training.GetJob(
        training_pb2.GetJobRequest(job_id=taken), metadata=auth(ALICE)
    )
    assert await code_of(hidden) == grpc.StatusCode.NOT_FOUND
    assert {s.namespace for s in platform.statuses(taken)} == {"team-b"}


async def test_a_status_update_never_moves_a_job_to_another_namespace(platform):
    job_id = await platform.train(ALICE)
    rogue = events_pb2.JobStatus(
        job_id=job_id,
        namespace="team-b",
        kind=events_pb2.JOB_KIND_ANNOTATION,
        stage=events_pb2.JOB_STAGE_ANNOTATE,
        state=events_pb2.JOB_STATE_CANCELLED,
        message="taken over",
    )
    await StatusWriter(platform.bus, "intruder").write(rogue)
    marker = await platform.train(ALICE, request_id="after-the-rogue-record")
    assert marker != job_id  # both views have read past the rogue record now

    for runtime in (platform.gateway, platform.inference):
        seen = runtime.status_view.get(job_id)
        assert (seen.namespace, seen.state) == ("team-a", events_pb2.JOB_STATE_QUEUED)
    owner = await platform.training.GetJob(
        training_pb2.GetJobRequest(job_id=job_id), metadata=auth(ALICE)
    )
    assert owner.namespace == "team-a" and owner.state == events_pb2.JOB_STATE_QUEUED
    intruder = platform.training.GetJob(
        training_pb2.GetJobRequest(job_id=job_id), metadata=auth(BOB)
    )
    assert await code_of(intruder) == grpc.StatusCode.NOT_FOUND


async def test_cancel_by_someone_else_needs_the_namespaces_admin_role(platform):
    job_id = await platform.train(ALICE)
    before = platform.statuses(job_id)

    refused = platform.training.CancelJob(
        training_pb2.GetJobRequest(job_id=job_id), metadata=auth(DAVE)
    )
    assert await code_of(refused) == grpc.StatusCode.PERMISSION_DENIED
    assert platform.statuses(job_id) == before  # nothing written
    still = await platform.training.GetJob(
        training_pb2.GetJobRequest(job_id=job_id), metadata=auth(DAVE)
    )
    assert still.state == events_pb2.JOB_STATE_QUEUED and "cancelled_by" not in still.details

    cancelled = await platform.training.CancelJob(
        training_pb2.GetJobRequest(job_id=job_id), metadata=auth(CAROL)
    )
    assert cancelled.state == events_pb2.JOB_STATE_CANCELLING
    assert cancelled.details["requested_by"] == "alice"
    assert cancelled.details["cancelled_by"] == "carol"
    assert platform.statuses(job_id)[-1].details["cancelled_by"] == "carol"


async def test_the_requester_may_cancel_its_own_job(platform):
    job_id = await platform.train(DAVE)
    cancelled = await platform.training.CancelJob(
        training_pb2.GetJobRequest(job_id=job_id), metadata=auth(DAVE)
    )
    assert cancelled.state == events_pb2.JOB_STATE_CANCELLING
    assert cancelled.details["cancelled_by"] == "dave"
