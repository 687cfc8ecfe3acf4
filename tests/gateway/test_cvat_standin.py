"""The CVAT stand-in delivers signed webhooks (with its retries) to a running gateway."""

from __future__ import annotations

import json

import pytest

from preannotate import topics
from tests.gateway.conftest import SECRET, write_model
from tests.standins.cvat import CvatStandIn, make_shapes_dataset, shapes_labels

pytestmark = pytest.mark.timeout(90)

EVENTS = ("create:task", "update:job", "update:task")


async def standin(**kwargs) -> CvatStandIn:
    server = CvatStandIn(tokens={"secret-token"}, **kwargs)
    await server.start()
    return server


@pytest.fixture
async def cvat():
    server = await standin()
    yield server
    await server.stop()


def add_task(cvat: CvatStandIn, project_id: int, jobs: int = 2) -> int:
    images, shapes = make_shapes_dataset(4 * jobs, size=(64, 64))
    return cvat.add_task(
        "birds", shapes_labels(), images, shapes, project_id=project_id, segment_size=4
    )


async def test_completed_jobs_each_train_once_in_a_per_job_project(gateway, cvat):
    hook = cvat.add_webhook(gateway.http_url, SECRET, events=EVENTS, project_id=4)
    task_id = add_task(cvat, project_id=4)
    first, second = (j["id"] for j in cvat.jobs(task_id))
    cvat.set_job_state(first, state="in progress")
    cvat.set_job_state(first, state="completed")
    deliveries = list(await cvat.wait_for_webhooks())
    answers = [json.loads(d.response) for d in deliveries]
    assert [d.status for d in deliveries] == [200] * len(deliveries)
    assert [a["status"] for a in answers] == ["ignored", "ignored", "accepted"]
    [event] = await gateway.published(topics.TASK_ANNOTATED)
    assert (event.cvat.task_id, event.cvat.job_id, event.cvat.project_id) == (task_id, first, 4)
    assert event.job_id == answers[-1]["job_id"]

    # CVAT's "redeliver" of the accepted delivery: the same job, nothing published
    status, text = await cvat.redeliver(deliveries[-1])
    assert status == 200 and json.loads(text) == {"status": "duplicate", "job_id": event.job_id}

    # the last job completes: a second training job; the task turning completed
    # starts nothing in a per-job project
    cvat.set_job_state(second, state="completed")
    later = (await cvat.wait_for_webhooks())[len(deliveries) + 1 :]
    assert [d.event for d in later] == ["update:job", "update:task"]
    assert [json.loads(d.response)["status"] for d in later] == ["accepted", "ignored"]
    events = await gateway.published(topics.TASK_ANNOTATED, expect=3, timeout=0.5)
    assert [e.cvat.job_id for e in events] == [first, second]
    assert cvat.webhooks[hook].secret == SECRET


@pytest.mark.parametrize("diff", [("changes",), ("before_update",), ()])
async def test_a_completed_task_trains_once_in_a_per_task_project(gateway, diff):
    """Every diff style CVAT has sent: changes, before_update, and none (the newest)."""
    cvat = await standin(webhook_diff=diff)
    try:
        cvat.add_webhook(gateway.http_url, SECRET, events=EVENTS, project_id=3)
        task_id = add_task(cvat, project_id=3)
        for job in cvat.jobs(task_id):
            cvat.set_job_state(job["id"], state="completed")
        deliveries = await cvat.wait_for_webhooks()
        assert {d.status for d in deliveries} == {200}
        by_event = [(d.event, json.loads(d.response)["status"]) for d in deliveries]
        assert ("update:task", "accepted") in by_event
        assert [s for _e, s in by_event].count("accepted") == 1
        [event] = await gateway.published(topics.TASK_ANNOTATED, expect=2, timeout=0.5)
        assert (event.cvat.task_id, event.cvat.job_id) == (task_id, 0)
        assert event.training.model_name == "birds"
    finally:
        await cvat.stop()


async def test_a_new_task_in_a_watched_project_is_preannotated(gateway, cvat):
    write_model(gateway.storage, "team-a", "birds", 1, model_type="ssd-mobilenet-v2-coco")
    cvat.add_webhook(gateway.http_url, SECRET, events=EVENTS, project_id=3)
    task_id = add_task(cvat, project_id=3, jobs=1)
    [delivery] = await cvat.wait_for_webhooks()
    assert delivery.event == "create:task" and json.loads(delivery.response)["status"] == "accepted"
    [event] = await gateway.published(topics.ANNOTATION_REQUESTED)
    assert event.cvat.task_id == task_id
    assert (event.model.name, event.model.version) == ("birds", 1)


async def test_a_webhook_with_another_secret_is_refused(gateway, cvat):
    cvat.add_webhook(gateway.http_url, "another-secret", events=EVENTS, project_id=4)
    task_id = add_task(cvat, project_id=4, jobs=1)
    cvat.set_job_state(cvat.jobs(task_id)[0]["id"], state="completed")
    deliveries = await cvat.wait_for_webhooks()
    assert deliveries and {d.status for d in deliveries} == {401}
    assert await gateway.published(topics.TASK_ANNOTATED, expect=0, timeout=0) == []


async def test_ping(gateway, cvat):
    hook = cvat.add_webhook(gateway.http_url, SECRET, events=EVENTS, project_id=4)
    status, text = await cvat.ping(hook)
    assert status == 200 and json.loads(text) == {"status": "pong"}
