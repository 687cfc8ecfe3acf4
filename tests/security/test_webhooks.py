"""CVAT webhooks attacked on a running gateway (HTTP, policy, job desk, in-process bus)
with the CVAT stand-in answering ``GET /api/tasks/{id}``.

Each watched project has its own secret (services/gateway/policy.py), and the
gateway asks CVAT whether a delivery's task is in the project it claims before it
starts anything (services/gateway/webhooks.py).
"""

from __future__ import annotations

import pytest

from preannotate import topics
from services.gateway.policy import parse_policy
from tests.gateway import payloads
from tests.gateway.conftest import gateway_cleanup, gateway_factory  # noqa: F401 (fixtures)
from tests.standins.cvat import CvatStandIn, make_shapes_dataset, shapes_labels

pytestmark = pytest.mark.timeout(90)

CVAT_TOKEN = "cvat-token-of-the-gateway"
SECRET_7 = "secret-of-project-7-webhook"
SECRET_9 = "secret-of-project-9-webhook"
#: PREANNOTATE_WEBHOOK_SECRET: signs only deliveries of unwatched projects here.
GLOBAL = "the-global-webhook-secret"


def project(project_id: int, **extra) -> dict:
    return {
        "project_id": project_id,
        "namespace": "team-a",
        "trigger": "task",
        "model_type": "ssd-mobilenet-v2-coco",
        "arguments": "epochs=200;batch_size=8",
        "model_name": f"model-{project_id}",
        **extra,
    }


@pytest.fixture
async def cvat():
    server = CvatStandIn(tokens={CVAT_TOKEN})
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def gateway(gateway_cleanup, cvat, monkeypatch):  # noqa: F811
    monkeypatch.setenv("TEST_PROJECT_9_SECRET", SECRET_9)
    policy = {
        "projects": [
            project(7, secret=SECRET_7),
            project(9, secret_env="TEST_PROJECT_9_SECRET"),
        ]
    }
    return await gateway_cleanup(
        policy=policy, webhook_secret=GLOBAL, cvat_url=cvat.url, cvat_token=CVAT_TOKEN
    )


def add_task(cvat: CvatStandIn, project_id: int) -> int:
    images, shapes = make_shapes_dataset(2, size=(32, 32))
    return cvat.add_task("t", shapes_labels(), images, shapes, project_id=project_id)


async def test_a_delivery_signed_with_another_projects_secret_is_refused(gateway, cvat):
    task_9 = add_task(cvat, 9)
    delivery = payloads.task_completed(task_9, project_id=9)
    for wrong in (SECRET_7, GLOBAL):
        status, answer = await gateway.post(delivery, secret=wrong)
        assert status == 401 and answer["code"] == "unauthenticated"
    # the global secret still answers a ping, which starts nothing
    status, answer = await gateway.post(payloads.ping(), secret=GLOBAL)
    assert status == 200 and answer["status"] == "pong"
    assert gateway.bus.records(topics.TASK_ANNOTATED) == []


async def test_a_task_of_another_project_is_refused_and_nothing_published(gateway, cvat):
    task_9 = add_task(cvat, 9)
    # signed with project 7's own secret, but CVAT says the task is in project 9
    delivery = payloads.task_completed(task_9, project_id=7)
    status, answer = await gateway.post(delivery, secret=SECRET_7)
    assert status == 403 and answer["code"] == "permission_denied"
    assert f"task {task_9} is not in project 7" in answer["error"]
    assert gateway.bus.records(topics.TASK_ANNOTATED) == []
    assert gateway.bus.records(topics.ANNOTATION_REQUESTED) == []
    asked = [r.path for r in cvat.request_log if r.method == "GET"]
    assert f"/api/tasks/{task_9}" in asked


async def test_the_legitimate_delivery_starts_one_job(gateway, cvat):
    task_7, task_9 = add_task(cvat, 7), add_task(cvat, 9)
    status, answer = await gateway.post(
        payloads.task_completed(task_7, project_id=7), secret=SECRET_7
    )
    assert status == 200 and answer["status"] == "accepted"
    status, answer = await gateway.post(
        payloads.task_completed(task_9, project_id=9), secret=SECRET_9
    )
    assert status == 200 and answer["status"] == "accepted"
    published = await gateway.published(topics.TASK_ANNOTATED, expect=2)
    assert sorted((e.cvat.task_id, e.cvat.project_id) for e in published) == [
        (task_7, 7),
        (task_9, 9),
    ]


async def test_without_a_cvat_token_a_confirming_policy_does_not_start(gateway_cleanup):  # noqa: F811
    with pytest.raises(Exception, match="PREANNOTATE_CVAT_TOKEN"):
        await gateway_cleanup(policy={"projects": [project(7, secret=SECRET_7)]})


@pytest.mark.parametrize(
    ("entry", "policy_keys", "says"),
    [
        ({}, {}, "global_secret: true"),
        ({"secret_env": "TEST_UNSET_VARIABLE_X"}, {}, "TEST_UNSET_VARIABLE_X, which is not set"),
        ({"secret": "a", "secret_env": "HOME"}, {}, "either secret or secret_env"),
    ],
)
def test_a_policy_without_a_secret_per_project_is_refused(entry, policy_keys, says):
    with pytest.raises(Exception, match=says.replace(":", ".")):
        parse_policy({"projects": [project(7, **entry)], **policy_keys})
    assert parse_policy({"global_secret": True, "projects": [project(7)]}).global_secret
