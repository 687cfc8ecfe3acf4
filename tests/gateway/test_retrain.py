"""Continuous training (services/gateway/retrain.py): completed CVAT jobs of a watched
project retrain its model from the promoted version, and retrains coalesce.

A gateway over the in-process bus, the CVAT stand-in delivering signed webhooks
and answering the job counts; storage is a local folder.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from preannotate import promotion, topics
from preannotate.catalog import default_catalog
from preannotate.errors import InvalidArgument
from preannotate.status import StatusWriter
from preannotate.v1 import events_pb2
from services.exporter.handlers import dataset_event
from services.gateway.policy import parse_policy
from services.gateway.retrain import Annotated, generation, retrain_job_id
from services.trainer.handlers import validate
from services.trainer.settings import TrainerSettings
from tests.gateway.conftest import SECRET, statuses, write_model
from tests.standins.cvat import CvatStandIn, make_shapes_dataset, shapes_labels

pytestmark = pytest.mark.timeout(90)

TOKEN = "secret-token"
PROJECT = {
    "project_id": 5,
    "namespace": "team-a",
    "model_type": "ssd-mobilenet-v2-coco",
    "arguments": "epochs=200;batch_size=8",
    "model_name": "birds",
    "annotate_new_tasks": False,
}


def policy_with(**project) -> dict:
    return {"global_secret": True, "confirm_tasks": True, "projects": [{**PROJECT, **project}]}


# --- the policy -----------------------------------------------------------------------


def test_retrain_after_implies_the_project_trigger():
    policy = parse_policy(policy_with(retrain_after_jobs=3))
    [project] = policy.projects
    assert (project.trigger, project.retrains, project.retrain_after_jobs) == ("project", True, 3)


@pytest.mark.parametrize(
    ("project", "says"),
    [
        ({"retrain_after_jobs": 2, "retrain_after_frames": 10}, "exactly one"),
        ({"trigger": "project"}, "exactly one"),
        ({"trigger": "job", "retrain_after_jobs": 2}, "needs trigger: project"),
        ({"retrain_after_frames": 0}, "greater than or equal to 1"),
    ],
)
def test_a_bad_retrain_policy_says_what_to_change(project, says):
    with pytest.raises(InvalidArgument, match=says):
        parse_policy(policy_with(**project))


def test_two_projects_cannot_retrain_one_model():
    data = policy_with(retrain_after_jobs=1)
    data["projects"].append({**data["projects"][0], "project_id": 6})
    with pytest.raises(InvalidArgument, match="own model_name"):
        parse_policy(data)


def test_the_generation_is_the_count_divided_by_n():
    jobs = parse_policy(policy_with(retrain_after_jobs=2)).projects[0]
    frames = parse_policy(policy_with(retrain_after_frames=10)).projects[0]
    assert [generation(jobs, Annotated(n, 0))[0] for n in (0, 1, 2, 3, 4)] == [0, 0, 1, 1, 2]
    assert generation(frames, Annotated(9, 29))[0] == 2


# --- over CVAT ------------------------------------------------------------------------


@pytest.fixture
async def cvat():
    server = CvatStandIn(tokens={TOKEN})
    await server.start()
    yield server
    await server.stop()


async def retraining_gateway(gateway_cleanup, cvat, storage=None, **project):
    gw = await gateway_cleanup(
        policy=policy_with(**project), cvat_url=cvat.url, cvat_token=TOKEN, storage=storage
    )
    gw.hook = cvat.add_webhook(gw.http_url, SECRET, events=("update:job",), project_id=5)
    return gw


def add_task(cvat: CvatStandIn, jobs: int) -> tuple[int, list[int]]:
    images, shapes = make_shapes_dataset(4 * jobs, size=(64, 64))
    task_id = cvat.add_task("birds", shapes_labels(), images, shapes, project_id=5, segment_size=4)
    return task_id, [j["id"] for j in cvat.jobs(task_id)]


async def answers(cvat: CvatStandIn) -> list[dict]:
    deliveries = await cvat.wait_for_webhooks()
    assert [d.status for d in deliveries] == [200] * len(deliveries)
    return [json.loads(d.response) for d in deliveries]


@pytest.mark.parametrize(("promoted", "base"), [(1, 1), (None, 2)])
async def test_a_retrain_starts_from_the_promoted_version(
    gateway_cleanup, cvat, promoted, base, tmp_path
):
    """Versions 1 and 2 are trained; 1 is promoted (2 was refused): the retrain
    starts from 1. Without a promotion log, from the newest (2)."""
    gw = await retraining_gateway(gateway_cleanup, cvat, retrain_after_jobs=2)
    for version in (1, 2):
        write_model(gw.storage, "team-a", "birds", version, area="models")
    if promoted:
        promotion.promote(gw.storage, "team-a", "birds", promoted, by="test")
    task_id, jobs = add_task(cvat, jobs=3)

    cvat.set_job_state(jobs[0], state="completed")
    [first] = await answers(cvat)
    assert first["status"] == "counted" and "1 completed jobs, a retrain every 2" in first["reason"]
    assert await gw.published(topics.TASK_ANNOTATED, expect=0, timeout=0) == []

    cvat.set_job_state(jobs[1], state="completed")
    second = (await answers(cvat))[-1]
    job_id = retrain_job_id("team-a", "birds", 1)
    assert second == {"status": "accepted", "job_id": job_id, "generation": 1}
    [event] = await gw.published(topics.TASK_ANNOTATED)
    assert event.job_id == job_id and event.trigger == "retrain"
    assert (event.cvat.task_id, event.cvat.project_id) == (0, 5)  # the whole project
    ref = event.training.base_model
    assert (ref.namespace, ref.name, ref.version) == ("team-a", "birds", base)
    assert event.training.model_name == "birds"
    [status] = statuses(gw, job_id)
    assert status.details["base_model"] == f"team-a/birds/{base}"
    assert status.details["retrain_generation"] == "1"
    assert status.details["retrain_due_to_task"] == str(task_id)

    # the trainer starts from it: its request (the manifest's "base_model" and the
    # model's start label "base team-a/birds/<v>" come from it)
    dataset = dataset_event(
        event,
        "team-a",
        f"team-a/datasets/{job_id}/",
        {"classes": ["circle", "square"], "splits": {"train": {"images": 3}}},
    )
    settings = TrainerSettings(
        storage="local",
        storage_root=gw.storage.root,
        machine_types="cpu=0",
        machine_type="cpu",
        trainer_work_dir=tmp_path / "work",
    )
    request = validate(dataset, settings, default_catalog())
    assert str(request.base) == f"team-a/birds/{base}"
    assert "the completed jobs of CVAT project 5" in status.message


async def finish(gw, job_id: str) -> None:
    done = events_pb2.JobStatus(
        job_id=job_id,
        namespace="team-a",
        kind=events_pb2.JOB_KIND_TRAINING,
        stage=events_pb2.JOB_STAGE_CONVERT,
        state=events_pb2.JOB_STATE_SUCCEEDED,
        message="model ready",
    )
    await StatusWriter(gw.bus, "converter").write(done)


async def test_retrains_coalesce_one_runs_and_the_newest_waits(gateway_cleanup, cvat):
    """N=1, three jobs completed one after the other: retrain 1 runs; 2 waits; 3
    replaces 2 in the queue; when 1 ends, 3 starts (from the version then promoted),
    and nothing else."""
    gw = await retraining_gateway(gateway_cleanup, cvat, retrain_after_jobs=1)
    _, jobs = add_task(cvat, jobs=3)
    replies = []
    for job in jobs:
        cvat.set_job_state(job, state="completed")
        replies = await answers(cvat)
    running = retrain_job_id("team-a", "birds", 1)
    assert [(a["status"], a["generation"], a["job_id"]) for a in replies] == [
        ("accepted", 1, running),
        ("queued", 2, running),
        ("queued", 3, running),
    ]
    assert len(await gw.published(topics.TASK_ANNOTATED, expect=2, timeout=0.3)) == 1

    write_model(gw.storage, "team-a", "birds", 1, area="models")  # what retrain 1 made
    await finish(gw, running)
    events = await gw.published(topics.TASK_ANNOTATED, expect=2)
    assert [e.job_id for e in events] == [running, retrain_job_id("team-a", "birds", 3)]
    assert events[1].training.base_model.version == 1
    [status] = statuses(gw, events[1].job_id)
    assert (status.details["retrain_generation"], status.details["retrain_replaces"]) == (
        "3",
        "2",
    )

    await finish(gw, events[1].job_id)  # nothing waits: nothing more starts
    await asyncio.sleep(0.2)
    assert len(await gw.published(topics.TASK_ANNOTATED, expect=3, timeout=0.2)) == 2


async def test_jobs_completed_at_once_start_one_retrain(gateway_cleanup, cvat):
    """Three jobs completed before the first delivery is handled: the deliveries
    may all see the same count; whatever they see, one retrain is queued."""
    gw = await retraining_gateway(gateway_cleanup, cvat, retrain_after_jobs=1)
    _, jobs = add_task(cvat, jobs=3)
    for job in jobs:
        cvat.set_job_state(job, state="completed")
    replies = await answers(cvat)
    assert [a["status"] for a in replies].count("accepted") == 1
    assert {a["status"] for a in replies} <= {"accepted", "queued", "counted"}
    assert len(await gw.published(topics.TASK_ANNOTATED, expect=2, timeout=0.3)) == 1


async def test_a_restarted_gateway_counts_from_cvat_and_starts_what_waits(gateway_cleanup, cvat):
    """The count and the records outlive the gateway: a second gateway on the same
    storage neither repeats the running retrain nor loses the waiting one."""
    gw = await retraining_gateway(gateway_cleanup, cvat, retrain_after_jobs=1)
    _, jobs = add_task(cvat, jobs=2)
    cvat.set_job_state(jobs[0], state="completed")
    [first] = await answers(cvat)
    assert first["status"] == "accepted"
    cvat.webhooks.pop(gw.hook)
    # a new gateway on the same storage, with a bus of its own (its job.status view
    # does not know the started retrain: it queues it again, under the same job id,
    # which every stage acts on once)
    again = await retraining_gateway(gateway_cleanup, cvat, gw.storage, retrain_after_jobs=1)
    [event] = await again.published(topics.TASK_ANNOTATED)
    assert event.job_id == first["job_id"]
    cvat.set_job_state(jobs[1], state="completed")
    replies = await answers(cvat)
    assert replies[-1]["status"] == "queued" and replies[-1]["generation"] == 2
    await finish(again, first["job_id"])
    events = await again.published(topics.TASK_ANNOTATED, expect=2)
    assert [e.job_id for e in events] == [first["job_id"], retrain_job_id("team-a", "birds", 2)]
