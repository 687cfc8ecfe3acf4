"""POST /webhooks/cvat over real HTTP, on a gateway over the in-process bus."""

from __future__ import annotations

import asyncio
import json

import pytest
from structlog.testing import capture_logs

from preannotate import topics
from preannotate.storage import LocalStorage
from preannotate.v1 import events_pb2
from tests.gateway import payloads
from tests.gateway.conftest import POLICY, sign, statuses, write_model

pytestmark = pytest.mark.timeout(60)


async def nothing_published(gw) -> None:
    await asyncio.sleep(0.1)
    assert await gw.published(topics.TASK_ANNOTATED, expect=0, timeout=0) == []
    assert await gw.published(topics.ANNOTATION_REQUESTED, expect=0, timeout=0) == []
    assert statuses(gw) == []


async def test_ping_is_answered(gateway):
    status, body = await gateway.post(payloads.ping())
    assert (status, body["status"]) == (200, "pong")
    await nothing_published(gateway)


@pytest.mark.parametrize(
    "signature",
    [
        None,  # missing
        "sha256=" + "0" * 64,  # wrong
        "",  # empty
        "deadbeef",  # no prefix
    ],
)
async def test_a_bad_or_missing_signature_is_401_and_publishes_nothing(gateway, signature):
    status, body = await gateway.post(payloads.job_completed(), signature=signature)
    assert status == 401
    assert "X-Signature-256" in body["error"]
    await nothing_published(gateway)


async def test_a_signature_made_with_another_secret_is_refused(gateway):
    status, body = await gateway.post(payloads.job_completed(), secret="not-the-secret")
    assert status == 401 and "does not match" in body["error"]
    await nothing_published(gateway)


async def test_the_signature_covers_the_raw_body(gateway):
    payload = payloads.job_completed()
    body = json.dumps(payload).encode()
    tampered = body.replace(b'"id": 19', b'"id": 20')
    status, _ = await gateway.post(tampered, signature=sign(body))
    assert status == 401
    await nothing_published(gateway)


async def test_without_a_configured_secret_every_delivery_is_refused(gateway_cleanup):
    gw = await gateway_cleanup(webhook_secret="")
    status, body = await gw.post(payloads.job_completed(), secret="")
    assert status == 401 and "PREANNOTATE_WEBHOOK_SECRET" in body["error"]
    await nothing_published(gw)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"job": {}}', "'event'"),
        (json.dumps({"event": "update:job", "webhook_id": 7}).encode(), "'job' object"),
        (
            json.dumps({"event": "update:job", "job": {"id": 19}, "webhook_id": 7}).encode(),
            "job.task_id",
        ),
        (
            json.dumps({"event": "update:task", "task": {"id": "x"}, "before_update": {}}).encode(),
            "task.id",
        ),
    ],
)
async def test_malformed_deliveries_are_400_with_a_message(gateway, body, says):
    status, answer = await gateway.post(body)
    assert status == 400
    assert says in answer["error"]
    await nothing_published(gateway)


async def test_a_completed_job_in_a_per_job_project_queues_one_training_job(gateway):
    status, body = await gateway.post(payloads.job_completed(job_id=19, task_id=15, project_id=4))
    assert (status, body["status"]) == (200, "accepted")
    job_id = body["job_id"]
    [event] = await gateway.published(topics.TASK_ANNOTATED)
    assert event.job_id == job_id and event.namespace == "team-a"
    assert (event.cvat.task_id, event.cvat.job_id, event.cvat.project_id) == (15, 19, 4)
    assert event.cvat.organization == "lab"
    assert event.training.model_type == "frcnn-res50-coco"
    assert event.training.arguments == "epochs=100"
    assert event.training.machine_type == "gpu-2"
    assert event.training.model_name == "cars"
    assert (event.trigger, event.requested_by) == ("webhook", "cvat:admin1")
    [first] = statuses(gateway, job_id)
    assert first.state == events_pb2.JOB_STATE_QUEUED
    assert first.stage == events_pb2.JOB_STAGE_EXPORT
    assert gateway.runtime.status_view.get(job_id) is not None


async def test_the_same_delivery_twice_makes_one_job(gateway):
    delivery = payloads.job_completed()
    first = await gateway.post(delivery)
    second = await gateway.post(delivery)
    assert first[0] == second[0] == 200
    assert first[1]["status"] == "accepted" and second[1]["status"] == "duplicate"
    assert first[1]["job_id"] == second[1]["job_id"]
    await asyncio.sleep(0.1)
    assert len(await gateway.published(topics.TASK_ANNOTATED, expect=2, timeout=0.3)) == 1
    assert len(statuses(gateway)) == 1


async def test_concurrent_copies_of_a_delivery_make_one_job(gateway):
    delivery = payloads.job_completed()
    answers = await asyncio.gather(*(gateway.post(delivery) for _ in range(5)))
    assert {a[0] for a in answers} == {200}
    assert len({a[1]["job_id"] for a in answers}) == 1
    assert sorted(a[1]["status"] for a in answers).count("accepted") == 1
    assert len(await gateway.published(topics.TASK_ANNOTATED, expect=2, timeout=0.3)) == 1


async def test_a_later_completion_of_the_same_job_is_a_new_job(gateway):
    first = await gateway.post(payloads.job_completed(updated="2024-05-02T10:00:00Z"))
    again = await gateway.post(payloads.job_completed(updated="2024-06-02T10:00:00Z"))
    assert first[1]["job_id"] != again[1]["job_id"]
    assert len(await gateway.published(topics.TASK_ANNOTATED, expect=2)) == 2


@pytest.mark.parametrize("diff", ["changes", "before_update", "both"])
async def test_changes_and_before_update_are_both_read(gateway, diff):
    status, body = await gateway.post(payloads.job_completed(diff=diff))
    assert (status, body["status"]) == (200, "accepted")
    status, body = await gateway.post(payloads.task_completed(task_id=16, diff=diff))
    assert (status, body["status"]) == (200, "accepted")
    got = await gateway.published(topics.TASK_ANNOTATED, expect=2)
    assert sorted(e.cvat.task_id for e in got) == [15, 16]


async def test_an_update_that_does_not_change_the_state_is_ignored(gateway):
    # already completed before: "changes" lists only the assignee
    body = payloads.job()
    delivery = payloads.update("job", body, {"assignee": None})
    delivery["changes"] = {"assignee": {"from": None, "to": {"id": 2}}}
    status, answer = await gateway.post(delivery)
    assert (status, answer["status"]) == (200, "ignored")
    # older servers: before_update without the state
    delivery = payloads.update("job", body, {"assignee": None}, diff="before_update")
    assert (await gateway.post(delivery))[1]["status"] == "ignored"
    # a job re-opened: completed -> in progress
    reopened = payloads.update("job", payloads.job(state="in progress"), {"state": "completed"})
    assert (await gateway.post(reopened))[1]["status"] == "ignored"
    await nothing_published(gateway)


async def test_a_job_reaching_acceptance_counts_as_annotated(gateway):
    body = payloads.job(state="new", stage="acceptance")
    delivery = payloads.update("job", body, {"stage": "validation"})
    status, answer = await gateway.post(delivery)
    assert (status, answer["status"]) == (200, "accepted")
    assert len(await gateway.published(topics.TASK_ANNOTATED)) == 1


async def test_without_any_diff_the_previous_delivery_decides(gateway):
    """The newest CVAT sends neither changes nor before_update."""
    in_progress = payloads.job_completed(
        state="in progress", updated="2024-05-02T09:00:00Z", diff="none"
    )
    assert (await gateway.post(in_progress))[1]["status"] == "ignored"
    done = payloads.job_completed(updated="2024-05-02T10:00:00Z", diff="none")
    assert (await gateway.post(done))[1]["status"] == "accepted"
    # a later save of the completed job (e.g. a new assignee) is not a new completion
    touched = payloads.job_completed(updated="2024-05-02T11:00:00Z", diff="none")
    assert (await gateway.post(touched))[1]["status"] == "ignored"
    # and CVAT's retry of the accepted delivery still answers its job
    retry = await gateway.post(done)
    assert retry[1]["status"] == "duplicate"
    assert len(await gateway.published(topics.TASK_ANNOTATED, expect=2, timeout=0.3)) == 1


async def test_task_and_job_trigger_policies(gateway):
    # project 3 trains per task: a completed job there starts nothing ...
    answer = (await gateway.post(payloads.job_completed(task_id=15, project_id=3)))[1]
    assert answer["status"] == "ignored" and "per task" in answer["reason"]
    # ... and the completed task does
    answer = (await gateway.post(payloads.task_completed(task_id=15, project_id=3)))[1]
    assert answer["status"] == "accepted"
    # project 4 trains per job: the completed task starts nothing
    answer = (await gateway.post(payloads.task_completed(task_id=30, project_id=4)))[1]
    assert answer["status"] == "ignored" and "per job" in answer["reason"]
    [event] = await gateway.published(topics.TASK_ANNOTATED, expect=2, timeout=0.3)
    assert (event.cvat.task_id, event.cvat.job_id) == (15, 0)
    assert event.training.model_type == "ssd-mobilenet-v2-coco"
    assert event.training.machine_type == "cpu"  # the default pool
    assert event.training.model_name == "birds"


async def test_unwatched_projects_and_other_events_are_ignored(gateway):
    for delivery in (
        payloads.job_completed(project_id=99),
        payloads.job_completed(project_id=None),
        payloads.task_completed(project_id=99),
        payloads.task_created(project_id=99),
        {"event": "delete:task", "task": payloads.task(), "webhook_id": 7},
        {"event": "create:comment", "comment": {"id": 1}, "webhook_id": 7},
        {"event": "completed:request[export:dataset]", "request": {"id": "x"}},
    ):
        status, answer = await gateway.post(delivery)
        assert (status, answer["status"]) == (200, "ignored"), delivery["event"]
    await nothing_published(gateway)


async def test_create_task_with_a_ready_model_requests_annotation(gateway):
    # two finished versions and one unfinished (no manifest): the newest finished is used
    write_model(gateway.storage, "team-a", "birds", 1, model_type="ssd-mobilenet-v2-coco")
    write_model(gateway.storage, "team-a", "birds", 2, model_type="ssd-mobilenet-v2-coco")
    gateway.storage.put("team-a/serving/birds/3/saved_model.pb", b"half-written")
    status, answer = await gateway.post(payloads.task_created(task_id=21, project_id=3))
    assert (status, answer["status"]) == (200, "accepted")
    assert answer["model"] == "team-a/birds/2"
    [event] = await gateway.published(topics.ANNOTATION_REQUESTED)
    assert event.job_id == answer["job_id"] and event.namespace == "team-a"
    assert (event.cvat.task_id, event.cvat.project_id) == (21, 3)
    assert (event.model.namespace, event.model.name, event.model.version) == ("team-a", "birds", 2)
    assert event.threshold == 0  # unset: the model's own suggestion (inference reads it)
    assert event.mode == events_pb2.ANNOTATE_MODE_APPEND
    [first] = statuses(gateway, event.job_id)
    assert first.kind == events_pb2.JOB_KIND_ANNOTATION
    assert first.stage == events_pb2.JOB_STAGE_ANNOTATE
    assert first.state == events_pb2.JOB_STATE_QUEUED
    again = await gateway.post(payloads.task_created(task_id=21, project_id=3))
    assert again[1] == {"status": "duplicate", "job_id": answer["job_id"]}
    assert await gateway.published(topics.TASK_ANNOTATED, expect=0, timeout=0) == []


async def test_create_task_without_a_ready_model_is_ignored(gateway):
    # a model of another namespace, and one only trained (not exported), do not count
    write_model(gateway.storage, "team-b", "birds", 1)
    write_model(gateway.storage, "team-a", "birds", 1, area="models")
    status, answer = await gateway.post(payloads.task_created(project_id=3))
    assert (status, answer["status"]) == (200, "ignored")
    assert "no ready model team-a/birds" in answer["reason"]
    await nothing_published(gateway)


async def test_policy_threshold_and_organization_reach_the_annotation(gateway):
    write_model(gateway.storage, "team-a", "cars", 4)
    status, answer = await gateway.post(payloads.task_created(task_id=40, project_id=4))
    assert (status, answer["status"]) == (200, "accepted")
    [event] = await gateway.published(topics.ANNOTATION_REQUESTED)
    assert event.threshold == pytest.approx(0.3)
    assert event.cvat.organization == "lab"
    assert dict(event.label_thresholds) == pytest.approx({"car": 0.6})
    assert event.review_issues == 2


async def test_an_oversized_body_is_refused(gateway_cleanup):
    gw = await gateway_cleanup(webhook_max_bytes=2048)
    delivery = payloads.job_completed()
    delivery["padding"] = "x" * 5000
    status, answer = await gw.post(delivery)
    assert status == 413 and "larger than 2048 bytes" in answer["error"]
    await nothing_published(gw)


async def test_a_policy_whose_base_model_is_missing_is_404_not_retried(gateway_cleanup):
    # preannotate.http_errors: NotFound is 404 (it was 422 here, 404 on the Nuclio API);
    # CVAT retries only 5xx, 408 and 429, and a retry would fail the same way.
    policy = {**POLICY, "projects": [{**POLICY["projects"][0], "base_model": "ghost"}]}
    gw = await gateway_cleanup(policy=policy)
    status, answer = await gw.post(payloads.task_completed(task_id=15, project_id=3))
    assert status == 404 and answer["code"] == "not_found"
    assert "base model team-a/ghost does not exist" in answer["error"]
    await nothing_published(gw)


class BrokenStorage(LocalStorage):
    """A storage whose listing fails the way an unexpected fault does."""

    def list(self, prefix: str) -> list[str]:
        raise OSError(f"disk gone under /secret/{prefix}")


async def test_an_unexpected_error_is_500_without_details_so_that_cvat_retries(
    gateway_cleanup, tmp_path
):
    gw = await gateway_cleanup(storage=BrokenStorage(tmp_path / "broken"))
    with capture_logs() as logs:
        status, answer = await gw.post(payloads.task_created(task_id=22, project_id=3))
    assert status == 500 and answer["code"] == "internal" and "secret" not in answer["error"]
    ref = answer["error"].split("ref ")[1].split(")")[0]
    [entry] = [e for e in logs if e.get("ref") == ref]
    assert str(entry["exc_info"]).startswith("disk gone")
    await nothing_published(gw)


@pytest.mark.parametrize("diff", ["changes", "none"])
async def test_a_failed_publish_is_503_so_that_cvat_retries(gateway, diff):
    real_send = gateway.bus.send
    failures = {"left": 1}

    async def flaky_send(topic, value, **kw):
        if topic == topics.TASK_ANNOTATED and failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("broker went away")
        return await real_send(topic, value, **kw)

    gateway.bus.send = flaky_send
    delivery = payloads.job_completed(diff=diff)
    status, answer = await gateway.post(delivery)
    assert status == 503 and "send the same request again" in answer["error"]
    assert statuses(gateway) == []
    status, answer = await gateway.post(delivery)
    assert (status, answer["status"]) == (200, "accepted")
    assert len(await gateway.published(topics.TASK_ANNOTATED)) == 1


async def test_a_large_delivery_is_read_whole(gateway):
    delivery = payloads.task_completed(task_id=15, project_id=3)
    delivery["task"]["labels"] = [{"id": i, "name": f"label-{i}" * 20} for i in range(3000)]
    assert len(json.dumps(delivery)) > 500_000
    status, answer = await gateway.post(delivery)
    assert (status, answer["status"]) == (200, "accepted")
