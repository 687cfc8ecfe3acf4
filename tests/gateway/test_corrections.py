"""The corrections measure end to end in the gateway (services/gateway/corrections.py):
a new task pre-annotated by version 1, a person's edits in CVAT, the job completed,
and the count stored with version 1 and listed by ListModels."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from preannotate import layout, topics
from preannotate.status import StatusWriter
from preannotate.v1 import events_pb2
from services.gateway.models import list_models
from tests.gateway.conftest import SECRET, write_model
from tests.standins.cvat import CvatStandIn, make_shapes_dataset, shapes_labels

pytestmark = pytest.mark.timeout(90)

TOKEN = "secret-token"
POLICY = {
    "global_secret": True,
    "confirm_tasks": True,
    "projects": [
        {
            "project_id": 7,
            "namespace": "team-a",
            "trigger": "task",
            "model_type": "ssd-mobilenet-v2-coco",
            "model_name": "birds",
            "annotate_new_tasks": True,
        }
    ],
}


@pytest.fixture
async def cvat():
    server = CvatStandIn(tokens={TOKEN})
    await server.start()
    yield server
    await server.stop()


async def patch(cvat: CvatStandIn, job: int, action: str, shapes: list[dict]) -> None:
    body = {"version": 0, "tags": [], "shapes": shapes, "tracks": []}
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Token {TOKEN}"}) as session,
        session.patch(f"{cvat.url}/api/jobs/{job}/annotations?action={action}", json=body) as r,
    ):
        assert r.status == 200, await r.text()


def rect(frame: int, label_id: int, points: list[float], source: str, **extra) -> dict:
    shape = {
        "type": "rectangle",
        "frame": frame,
        "label_id": label_id,
        "points": points,
        "source": source,
        "occluded": False,
        "z_order": 0,
        "rotation": 0.0,
        "attributes": [],
        "group": 0,
    }
    return {**shape, **extra}


async def test_a_completed_job_counts_what_the_person_corrected(gateway_cleanup, cvat):
    gw = await gateway_cleanup(policy=POLICY, cvat_url=cvat.url, cvat_token=TOKEN)
    write_model(gw.storage, "team-a", "birds", 1)  # serving: version 1 annotates new tasks
    cvat.add_webhook(gw.http_url, SECRET, events=("create:task", "update:job"), project_id=7)
    images, _ = make_shapes_dataset(4, size=(64, 64))
    task_id = cvat.add_task("birds", shapes_labels(), images, [], project_id=7, segment_size=4)
    [job] = [j["id"] for j in cvat.jobs(task_id)]
    cat, dog = (lb["id"] for lb in cvat.labels(task_id))
    await cvat.wait_for_webhooks()
    [request] = await gw.published(topics.ANNOTATION_REQUESTED)
    assert request.model.version == 1

    # the inference run writes its proposal, then its job succeeds
    await patch(
        cvat,
        job,
        "create",
        [
            rect(0, cat, [0, 0, 10, 10], "auto"),  # kept
            rect(0, dog, [20, 20, 30, 30], "auto"),  # relabelled by the person
            rect(1, cat, [0, 0, 10, 10], "auto"),  # deleted by the person
            rect(2, cat, [0, 0, 10, 10], "auto"),  # stretched to 0,0,10,12 (IoU 0.83)
        ],
    )
    done = events_pb2.JobStatus(
        job_id=request.job_id,
        namespace="team-a",
        kind=events_pb2.JOB_KIND_ANNOTATION,
        stage=events_pb2.JOB_STAGE_ANNOTATE,
        state=events_pb2.JOB_STATE_SUCCEEDED,
    )
    await StatusWriter(gw.bus, "inference").write(done)
    for _ in range(100):
        if layout.read_proposal(gw.storage, "team-a", "birds", task_id) is not None:
            break
        await asyncio.sleep(0.05)
    proposal = layout.read_proposal(gw.storage, "team-a", "birds", task_id)
    assert proposal is not None and len(proposal["shapes"]) == 4

    # a person corrects the job in CVAT and completes it
    by_frame = {(s["frame"], s["label_id"]): s for s in cvat.annotations(task_id)}
    relabel = {**by_frame[(0, dog)], "label_id": cat, "source": "semi-auto"}
    stretch = {**by_frame[(2, cat)], "points": [0, 0, 10, 12], "source": "semi-auto"}
    await patch(cvat, job, "update", [relabel, stretch])
    await patch(cvat, job, "delete", [by_frame[(1, cat)]])
    await patch(cvat, job, "create", [rect(3, dog, [5, 5, 25, 25], "manual")])  # a miss
    cvat.set_job_state(job, state="completed")
    await cvat.wait_for_webhooks()

    [record] = layout.read_corrections(gw.storage, "team-a", "birds")[1]
    assert {k: record[k] for k in ("frames", "proposed", "final")} == {
        "frames": 4,
        "proposed": 4,
        "final": 4,
    }
    assert {k: record[k] for k in ("deleted", "drawn", "moved", "relabelled")} == {
        "deleted": 1,
        "drawn": 1,
        "moved": 1,
        "relabelled": 1,
    }
    assert (record["per_frame"], record["per_100_objects"]) == (1.0, 100.0)

    [model] = list_models(gw.storage, "team-a")
    assert model.metrics["corrections/per_100_objects"] == 100.0
    assert model.metrics["corrections/jobs"] == 1.0
