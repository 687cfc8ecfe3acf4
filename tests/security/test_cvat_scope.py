"""Tokens limited to CVAT projects and organisations: the cross-project and
cross-organisation tasks of issue 11, tried on the real gateway and inference
services.

Both services run on the real runner with their gRPC servers and the tokens
file; CVAT is the stand-in, which says where each task lies. Ana's token may
name tasks of CVAT project 3 only, Olga's tasks of organisation ``lab-a`` only,
Fred's any task. A refused request is PERMISSION_DENIED before anything is
published, exported or written; the same caller's request for an allowed task
goes through.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from preannotate import events, topics
from preannotate.auth import TokenTable
from preannotate.errors import InvalidArgument
from preannotate.v1 import (
    common_pb2,
    inference_pb2,
    training_pb2,
)
from tests.security.standin import Services, bearer, two_services
from tests.standins.cvat import make_shapes_dataset, shapes_labels

pytestmark = pytest.mark.timeout(90)

ANA = "token-of-ana-0123456789ab"
OLGA = "token-of-olga-0123456789a"
FRED = "token-of-fred-0123456789a"
TOKENS = {
    "tokens": [
        {"name": "ana", "token": ANA, "namespaces": ["team-a"], "cvat_projects": [3]},
        {"name": "olga", "token": OLGA, "namespaces": ["team-a"], "cvat_organizations": ["lab-a"]},
        {"name": "fred", "token": FRED, "namespaces": ["team-a"]},
    ]
}
CATS = common_pb2.ModelRef(namespace="team-a", name="cats")


class Platform:
    """The two services and the CVAT tasks of the tests."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.bus = services.gateway_bus
        self.training = services.training
        self.annotating = services.annotating
        self.backend = services.backend
        self.cvat = services.cvat

    def task(self, project_id: int | None = None, organization: str | None = None) -> int:
        images, _ = make_shapes_dataset(2, size=(60, 40), seed=7)
        return self.cvat.add_task(
            "t", shapes_labels(), images, project_id=project_id, organization=organization
        )

    def published(self, topic: str) -> list:
        return [events.decode(r) for r in self.bus.records(topic)]

    async def train(self, token: str, task_id: int, organization: str = ""):
        return await self.training.CreateAnnotationModel(
            training_pb2.CreateAnnotationModelRequest(
                namespace="team-a",
                cvat=common_pb2.CvatRef(task_id=task_id, organization=organization),
                model_type="ssd-mobilenet-v2-coco",
            ),
            metadata=bearer(token),
        )

    async def annotate(self, token: str, task_id: int, organization: str = "") -> list:
        request = inference_pb2.AnnotateTaskRequest(
            model=CATS,
            cvat=common_pb2.CvatRef(task_id=task_id, organization=organization),
            threshold=0.5,
        )
        return [u async for u in self.annotating.AnnotateTask(request, metadata=bearer(token))]


async def refused(call) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, err.value.details()
    return err.value.details()


@pytest.fixture
async def platform(tmp_path: Path, monkeypatch) -> AsyncIterator[Platform]:
    async with two_services(
        tmp_path, monkeypatch, TOKENS, model=("team-a", "cats"), gateway_cvat=True
    ) as services:
        yield Platform(services)


async def test_a_task_of_another_project_is_refused_before_anything_is_queued(platform):
    other = platform.task(project_id=4)
    message = await refused(platform.train(ANA, other))
    assert f"CVAT task {other} is in project 4" in message and "[3]" in message
    assert platform.published(topics.TASK_ANNOTATED) == []
    assert platform.published(topics.JOB_STATUS) == []

    mine = platform.task(project_id=3)
    reply = await platform.train(ANA, mine)
    [queued] = platform.published(topics.TASK_ANNOTATED)
    assert queued.job_id == reply.job_id and queued.cvat.task_id == mine


async def test_annotating_a_task_of_another_project_writes_nothing(platform):
    other = platform.task(project_id=4)
    assert "is in project 4" in await refused(platform.annotate(ANA, other))
    assert platform.backend.calls == 0 and platform.cvat.annotations(other) == []
    assert platform.published(topics.JOB_STATUS) == []

    mine = platform.task(project_id=3)
    updates = await platform.annotate(ANA, mine)
    assert updates[-1].done and len(platform.cvat.annotations(mine)) == 2


async def test_the_organisation_is_the_tasks_own_not_the_one_the_request_names(platform):
    ours = platform.task(organization="lab-a")
    theirs = platform.task(organization="lab-b")
    message = await refused(platform.annotate(OLGA, theirs))
    assert f"CVAT task {theirs} is in organisation 'lab-b'" in message and "lab-a" in message
    # naming the allowed organisation in the request does not move the task there
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await platform.annotate(OLGA, theirs, organization="lab-a")
    assert err.value.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND)
    personal = platform.task(organization=None)
    assert "a personal workspace" in await refused(platform.train(OLGA, personal))
    assert platform.cvat.annotations(theirs) == [] and platform.backend.calls == 0
    assert platform.published(topics.TASK_ANNOTATED) == []

    updates = await platform.annotate(OLGA, ours, organization="lab-a")
    assert updates[-1].done and len(platform.cvat.annotations(ours)) == 2


async def test_a_limited_token_may_not_name_a_file_url(platform):
    call = platform.training.CreateAnnotationModel(
        training_pb2.CreateAnnotationModelRequest(
            namespace="team-a",
            cvat=common_pb2.CvatRef(url="file:///tmp/dataset.zip", task_id=1),
            model_type="ssd-mobilenet-v2-coco",
        ),
        metadata=bearer(ANA),
    )
    assert "file:// URL is not a CVAT task" in await refused(call)


async def test_a_token_without_cvat_limits_names_any_task(platform):
    task = platform.task(project_id=4, organization="lab-b")
    await platform.train(FRED, task)
    assert [e.cvat.task_id for e in platform.published(topics.TASK_ANNOTATED)] == [task]
    # no limits: the gateway did not even ask CVAT where the task lies
    assert not [r for r in platform.cvat.request_log if r.path == f"/api/tasks/{task}"]


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ({"cvat_projects": []}, "'cvat_projects' must list CVAT project ids"),
        ({"cvat_projects": [0]}, "'cvat_projects' must list CVAT project ids"),
        ({"cvat_organizations": ["no spaces"]}, "'cvat_organizations' must list"),
        ({"cvat_organizations": ["a" * 17]}, "'cvat_organizations' must list"),
    ],
)
def test_bad_cvat_limits_in_the_tokens_file_are_named(entry, says):
    data = {"tokens": [{"name": "x", "token": "t" * 20, "namespaces": ["a"], **entry}]}
    with pytest.raises(InvalidArgument) as err:
        TokenTable.parse(data)
    assert "tokens[0] (x)" in str(err.value) and says in str(err.value)
