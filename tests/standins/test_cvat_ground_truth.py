"""The stand-in's Ground Truth jobs answer as CVAT 2.x does, checked with cvat-sdk's models.

CVAT (``JobWriteSerializer`` in cvat/apps/engine/serializers.py, ``JobViewSet``
in views.py, ``TaskAnnotation`` in dataset_manager/task.py): ``POST /api/jobs``
with ``type: ground_truth`` makes one job over chosen frames of a task (one per
task), listed with ``type=ground_truth``; its data/meta counts and lists those
frames (``included_frames``); its annotations are its own and are not part of
the task's annotations nor of the task's export.
"""

from __future__ import annotations

import asyncio
import io
import json
import zipfile
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cvat_sdk.api_client import models

from tests.standins.cvat import CvatStandIn, make_shapes_dataset, shapes_labels
from tests.standins.test_cvat_standin import (
    _api,
    _assert_schema_fields,
    _http,
    _shape,
    _sync,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def cvat() -> AsyncIterator[CvatStandIn]:
    async with CvatStandIn(tokens={"secret-token"}) as server:
        server.export_seconds = 0.02
        yield server


def _task(server: CvatStandIn, n: int = 6, **kwargs: Any) -> int:
    images, shapes = make_shapes_dataset(n, size=(40, 32), seed=3)
    return server.add_task("gt", shapes_labels(), images, shapes, segment_size=3, **kwargs)


async def test_sdk_creates_lists_and_reads_a_ground_truth_job(cvat: CvatStandIn) -> None:
    task_id = _task(cvat, project_id=4)
    circle = cvat.labels(task_id)[0]["id"]
    names = [f.name for f in cvat.state.tasks[task_id].frames]

    def calls() -> dict[str, Any]:
        with _api(cvat) as api:
            created, _ = api.jobs_api.create(
                models.JobWriteRequest(
                    type=models.JobType("ground_truth"),
                    task_id=task_id,
                    frame_selection_method=models.FrameSelectionMethod("manual"),
                    frames=[4, 1],
                )
            )
            listed, _ = api.jobs_api.list(project_id=4, type="ground_truth")
            annotation_jobs, _ = api.jobs_api.list(task_id=task_id, type="annotation")
            meta, _ = api.jobs_api.retrieve_data_meta(created.id)
            api.jobs_api.partial_update_annotations(
                "create",
                created.id,
                patched_labeled_data_request={"shapes": [_shape(circle, 4)]},
            )
            annotations, _ = api.jobs_api.retrieve_annotations(created.id)
            task, _ = api.tasks_api.retrieve(task_id)
            task_annotations, _ = api.tasks_api.retrieve_annotations(task_id)
            return locals()

    got = await _sync(calls)
    job = got["created"]
    assert isinstance(job, models.JobRead)
    assert str(job.type) == "ground_truth" and job.task_id == task_id
    # Frames 0 to the task's last; it counts only its own frames.
    assert (job.start_frame, job.stop_frame, job.frame_count) == (0, 5, 2)
    assert (str(job.stage), str(job.state)) == ("annotation", "new")
    assert [j.id for j in got["listed"].results] == [job.id]
    assert job.id not in [j.id for j in got["annotation_jobs"].results]
    meta = got["meta"]
    assert meta.included_frames == [1, 4] and meta.size == 2
    assert [f.name for f in meta.frames] == [
        "placeholder.jpg",
        names[1],
        "placeholder.jpg",
        "placeholder.jpg",
        names[4],
        "placeholder.jpg",
    ]
    [shape] = got["annotations"].shapes
    assert shape.frame == 4 and shape.label_id == circle
    # The task's annotations (and so its export) leave the GT job out.
    gt_ids = {s["id"] for s in cvat.state.annotations[job.id].shapes}
    assert gt_ids and not gt_ids & {s.id for s in got["task_annotations"].shapes}
    assert got["task"].validation_mode == "gt" and got["task"].jobs.count == 3
    _assert_schema_fields(cvat.job(job.id), models.JobRead)
    status, body, _ = await _http(cvat, "GET", f"/api/jobs/{job.id}/data/meta")
    assert status == 200
    _assert_schema_fields(json.loads(body), models.DataMetaRead)


async def test_a_ground_truth_job_holds_only_its_frames_and_stays_out_of_exports(
    cvat: CvatStandIn,
) -> None:
    task_id = _task(cvat)
    circle = cvat.labels(task_id)[0]["id"]
    before = cvat.annotations(task_id)
    job = cvat.add_gt_job(
        task_id,
        [0, 5],
        [{"frame": 5, "label": "circle", "type": "rectangle", "points": [1, 1, 9, 9]}],
    )
    path = f"/api/jobs/{job['id']}/annotations?action=create"
    status, body, _ = await _http(cvat, "PATCH", path, json={"shapes": [_shape(circle, 2)]})
    assert status == 400 and "frame 2 is outside" in body.decode()
    status, body, _ = await _http(cvat, "GET", f"/api/jobs/{job['id']}/data?type=frame&number=2")
    assert status == 400
    status, _, headers = await _http(cvat, "GET", f"/api/jobs/{job['id']}/data?type=frame&number=5")
    assert status == 200 and headers["Content-Type"].startswith("image/")
    assert cvat.annotations(task_id) == before
    # The task's COCO export holds the annotation jobs' shapes only.
    status, body, _ = await _http(
        cvat, "POST", f"/api/tasks/{task_id}/dataset/export?format=COCO%201.0&save_images=false"
    )
    rq_id = json.loads(body)["rq_id"]
    for _ in range(200):
        status, body, _ = await _http(cvat, "GET", f"/api/requests/{rq_id}")
        if json.loads(body)["status"] == "finished":
            break
        await asyncio.sleep(0.02)
    status, body, _ = await _http(
        cvat, "GET", f"/api/tasks/{task_id}/dataset/download", params={"rq_id": rq_id}
    )
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        coco = json.loads(archive.read("annotations/instances_default.json"))
    exported = [s for s in before if s["type"] in ("rectangle", "polygon", "mask")]
    assert len(coco["annotations"]) == len(exported)
    # A GT job counts in the task's status: completed only when it is too.
    for annotation_job in cvat.jobs(task_id):
        cvat.set_job_state(annotation_job["id"], state="completed")
    assert cvat.task(task_id)["status"] == "annotation"
    cvat.set_job_state(job["id"], state="completed", stage="acceptance")
    assert cvat.task(task_id)["status"] == "completed"
    assert cvat.job(job["id"])["status"] == "completed"


async def test_ground_truth_job_requests_are_refused_as_cvat_refuses_them(
    cvat: CvatStandIn,
) -> None:
    task_id = _task(cvat)
    empty = cvat.create_task("no data", shapes_labels())

    async def post(body: Any, token: str = "secret-token") -> tuple[int, Any]:
        status, raw, _ = await _http(cvat, "POST", "/api/jobs", json=body, token=token)
        return status, json.loads(raw)

    manual = {"type": "ground_truth", "task_id": task_id, "frame_selection_method": "manual"}
    assert await post({**manual, "frames": [1, 1]}) == (400, ["Frames must not repeat"])
    assert await post({**manual, "frames": [2, 9, 7]}) == (
        400,
        ["The following frames do not exist in the task: 7, 9"],
    )
    assert await post({**manual, "frames": []}) == (
        400,
        {"frames": ["This list may not be empty."]},
    )
    assert await post({**manual, "frames": [-1]}) == (
        400,
        {"frames": {"0": ["Ensure this value is greater than or equal to 0."]}},
    )
    assert await post(manual) == (400, {"non_field_errors": ['The "frames" field is required']})
    assert await post({**manual, "frame_selection_method": "random_uniform"}) == (
        400,
        {"non_field_errors": ['One of the fields "frame_count", "frame_share" required']},
    )
    assert await post({"task_id": task_id, "type": "bogus"}) == (
        400,
        {"type": ['"bogus" is not a valid choice.']},
    )
    assert await post({"type": "annotation", "task_id": task_id}) == (
        400,
        ["Unexpected job type 'annotation'"],
    )
    assert await post({**manual, "task_id": empty, "frames": [0]}) == (
        400,
        ["This task has no data attached yet. Please set up task data and try again"],
    )
    cvat.add_user("worker1", "worker-token")
    status, _ = await post({**manual, "frames": [0]}, token="worker-token")
    assert status == 403
    status, job = await post({**manual, "frames": [0, 3]})
    assert status == 201 and job["frame_count"] == 2
    assert await post({**manual, "frames": [1]}) == (
        400,
        ['Task with validation mode "gt" cannot have more than 1 GT job'],
    )
    # Only a GT job can be deleted; deleting it frees the task for another.
    first = cvat.jobs(task_id)[0]["id"]
    status, body, _ = await _http(cvat, "DELETE", f"/api/jobs/{first}")
    assert status == 400 and json.loads(body) == ["Only ground truth jobs can be removed"]
    status, _, _ = await _http(cvat, "DELETE", f"/api/jobs/{job['id']}")
    assert status == 204 and cvat.gt_job(task_id) is None
    status, again = await post(
        {**manual, "frame_selection_method": "random_uniform", "frame_count": 3, "random_seed": 1}
    )
    assert status == 201 and again["frame_count"] == 3
    drawn = cvat.state.jobs[again["id"]].frames
    assert len(set(drawn)) == 3 and set(drawn) <= set(range(6))
