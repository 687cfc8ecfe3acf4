"""The CVAT stand-in makes tasks in CVAT's order, and refuses what CVAT's rules refuse.

``create:task`` fires when the row is made (``POST /api/tasks``), before any
data; the data comes with ``POST /api/tasks/{id}/data`` and is processed in the
background (``/api/requests``, the legacy ``/status``); frames and jobs appear
together at the end. Users without rights on a task get 403.
"""

from __future__ import annotations

import json

import aiohttp
import pytest
from cvat_sdk.api_client import apis, models

from tests.standins.cvat import CvatStandIn, make_shapes_dataset, shapes_labels
from tests.standins.test_cvat_standin import TOKEN, Receiver, _api, _http, _sync

pytestmark = pytest.mark.timeout(120)

#: Fields CVAT reads through ``task.data`` and leaves out while a task has none.
DATA_FIELDS = {"data", "size", "image_quality", "data_chunk_size"}


@pytest.fixture
async def cvat():
    async with CvatStandIn(tokens={TOKEN}) as server:
        server.data_seconds = 0.05
        yield server


def _upload_form(images: list[tuple[str, bytes]]) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("image_quality", "70")
    for i, (name, data) in enumerate(images):
        form.add_field(f"client_files[{i}]", data, filename=name, content_type="image/jpeg")
    return form


async def test_create_task_fires_before_the_data_and_jobs_come_after(cvat: CvatStandIn) -> None:
    async with Receiver() as receiver:
        cvat.add_webhook(receiver.url, "s3cr3t", events=["create:task"])
        status, body, _ = await _http(cvat, "POST", "/api/tasks", json={
            "name": "new", "labels": shapes_labels(), "segment_size": 3})  # fmt: skip
        assert status == 201
        task_id = json.loads(body)["id"]
        await cvat.wait_for_webhooks()
        [created] = receiver.payloads()
    # What CVAT sends and answers before data: no data fields, no jobs.
    assert created["event"] == "create:task"
    assert not DATA_FIELDS & set(created["task"])
    assert created["task"]["jobs"]["count"] == 0
    sdk_task = await _sync(lambda: apis.TasksApi(_api(cvat)).retrieve(task_id)[0])
    assert isinstance(sdk_task, models.TaskRead) and sdk_task.jobs.count == 0
    status, _, _ = await _http(cvat, "GET", f"/api/tasks/{task_id}/data/meta")
    assert status == 500  # CVAT's view reads task.data.images with no data
    assert cvat.jobs(task_id) == []

    images, _ = make_shapes_dataset(7, size=(64, 64))
    status, body, _ = await _http(
        cvat, "POST", f"/api/tasks/{task_id}/data", data=_upload_form(images)
    )
    assert status == 202
    rq_id = json.loads(body)["rq_id"]
    assert rq_id == f"action=create&target=task&target_id={task_id}"
    # Processing: a data id, size 0, no jobs; the request says how far it is.
    task = cvat.task(task_id)
    assert task["data"] is not None and task["size"] == 0 and task["jobs"]["count"] == 0
    status, body, _ = await _http(cvat, "GET", f"/api/requests?action=create&task_id={task_id}")
    [request] = json.loads(body)["results"]
    assert request["id"] == rq_id and request["status"] in ("queued", "started")
    assert request["operation"]["type"] == "create:task"
    status, body, headers = await _http(cvat, "GET", f"/api/tasks/{task_id}/status")
    assert json.loads(body)["state"] in ("Queued", "Started")
    assert headers["Deprecation"] == "true"
    status, body, _ = await _http(cvat, "GET", f"/api/tasks/{task_id}/data/meta")
    assert status == 200 and json.loads(body)["size"] == 0 and json.loads(body)["frames"] == []

    done = await cvat.wait_for_data(task_id)
    assert done["status"] == "finished"
    task = cvat.task(task_id)
    assert task["size"] == 7 and task["jobs"]["count"] == 3 and task["mode"] == "annotation"
    assert [(j["start_frame"], j["stop_frame"]) for j in cvat.jobs(task_id)] == [
        (0, 2), (3, 5), (6, 6)]  # fmt: skip
    status, body, _ = await _http(cvat, "GET", f"/api/tasks/{task_id}/status")
    assert json.loads(body)["state"] == "Finished"
    # Data is attached once.
    status, _, _ = await _http(cvat, "POST", f"/api/tasks/{task_id}/data",
                               data=_upload_form(images))  # fmt: skip
    assert status == 400


async def test_data_processing_can_fail(cvat: CvatStandIn) -> None:
    task_id = cvat.create_task("broken", shapes_labels())
    cvat.fail_data(task_id, "No media data found")
    images, _ = make_shapes_dataset(2, size=(64, 64))
    cvat.upload_data(task_id, images)
    done = await cvat.wait_for_data(task_id)
    assert (done["status"], done["message"]) == ("failed", "No media data found")
    assert cvat.task(task_id)["size"] == 0 and cvat.jobs(task_id) == []
    _, body, _ = await _http(cvat, "GET", f"/api/tasks/{task_id}/status")
    assert json.loads(body) == {"state": "Failed", "message": "No media data found"}


async def test_deleted_frames_are_listed_in_data_meta(cvat: CvatStandIn) -> None:
    images, _ = make_shapes_dataset(6, size=(64, 64))
    task_id = cvat.add_task("old", shapes_labels(), images, segment_size=3, deleted_frames=[1, 4])
    _, body, _ = await _http(cvat, "GET", f"/api/tasks/{task_id}/data/meta")
    assert json.loads(body)["deleted_frames"] == [1, 4]
    second = cvat.jobs(task_id)[1]["id"]
    _, body, _ = await _http(cvat, "GET", f"/api/jobs/{second}/data/meta")
    assert json.loads(body)["deleted_frames"] == [4]
    status, body, _ = await _http(cvat, "PATCH", f"/api/tasks/{task_id}/data/meta",
                                  json={"deleted_frames": [0]})  # fmt: skip
    assert status == 200 and json.loads(body)["deleted_frames"] == [0]
    with pytest.raises(ValueError, match="deleted frames"):
        cvat.add_task("bad", shapes_labels(), images, deleted_frames=[6])


async def test_a_user_without_rights_on_a_task_gets_403(cvat: CvatStandIn) -> None:
    images, _ = make_shapes_dataset(4, size=(64, 64))
    cvat.add_user("worker1", "worker-token", organizations={"lab": "worker"})
    cvat.add_user("boss", "boss-token", organizations={"lab": "maintainer"})
    cvat.add_user("outsider", "outsider-token")
    task_id = cvat.add_task("lab task", shapes_labels(), images, segment_size=2, organization="lab")
    first, second = (j["id"] for j in cvat.jobs(task_id))
    lab = {"X-Organization": "lab"}

    async def status(token: str, method: str, path: str, **kw) -> int:
        code, _, _ = await _http(cvat, method, path, token=token, headers=lab, **kw)
        return code

    reads = [f"/api/tasks/{task_id}", f"/api/tasks/{task_id}/data/meta",
             f"/api/jobs/{first}", f"/api/jobs/{first}/annotations",
             f"/api/tasks/{task_id}/annotations"]  # fmt: skip
    for path in reads:
        assert await status("worker-token", "GET", path) == 403, path
        assert await status("boss-token", "GET", path) == 200, path
    write = f"/api/jobs/{first}/annotations?action=create"
    body = {"shapes": [], "tags": [], "tracks": [], "version": 0}
    assert await status("worker-token", "PATCH", write, json=body) == 403
    # A worker sees the job it is assigned, and the task, but not the other job.
    cvat.assign("worker1", job_id=first)
    assert await status("worker-token", "GET", f"/api/jobs/{first}/annotations") == 200
    assert await status("worker-token", "PATCH", write, json=body) == 200
    assert await status("worker-token", "GET", f"/api/jobs/{second}") == 403
    _, listed, _ = await _http(cvat, "GET", f"/api/jobs?task_id={task_id}", token="worker-token",
                               headers=lab)  # fmt: skip
    assert [j["id"] for j in json.loads(listed)["results"]] == [first]
    # Not a member of the organisation: 403 in its context; its tasks are not listed.
    assert await status("outsider-token", "GET", f"/api/tasks/{task_id}") == 403
    _, listed, _ = await _http(cvat, "GET", "/api/tasks", token="outsider-token")
    assert json.loads(listed)["count"] == 0
    code, _, _ = await _http(cvat, "GET", f"/api/tasks/{task_id}", token="outsider-token")
    assert code == 403
