"""Whether a CVAT task's data is ready to be read: frames in, jobs cut.

CVAT makes a task in two steps. ``POST /api/tasks`` makes the row (and fires
``create:task``): the task has no data, so ``GET /api/tasks/{id}`` leaves out
``data`` and ``size`` and counts no jobs. ``POST /api/tasks/{id}/data`` attaches
data that a background request processes (minutes for a large upload): the
task then has a ``data`` id but ``size`` 0 and no jobs until the request ends.
Its progress is ``GET /api/requests?action=create&task_id=<id>`` (CVAT 2.x with
the requests API) or the deprecated ``GET /api/tasks/{id}/status``. The frames
and the jobs appear together when the request finishes.

``data_pending`` answers None once the data is ready, else why not yet; it
raises ``FailedPrecondition`` when CVAT says processing failed (the data will
never be ready).
"""

from __future__ import annotations

from typing import Any

from preannotate.cvat.client import CvatClient
from preannotate.errors import FailedPrecondition, NotFound

#: The job status while a run waits for CVAT.
WAITING = "waiting for CVAT to finish the task's data"


async def data_pending(client: CvatClient, task_id: int) -> str | None:
    """None when task ``task_id``'s frames and jobs are in; else what CVAT is at."""
    task = await client.task(task_id)
    if task.get("data") is None:
        return f"{WAITING}: no data uploaded to task {task_id} yet"
    if int(task.get("size") or 0) > 0 and int((task.get("jobs") or {}).get("count") or 0) > 0:
        return None
    return f"{WAITING}: {await _progress(client, task_id)}"


async def _progress(client: CvatClient, task_id: int) -> str:
    """How far CVAT's processing is, from the requests API (or the legacy status)."""
    try:
        requests = await client.data_requests(task_id)
    except NotFound:  # a CVAT older than the requests API
        return _legacy(await client.legacy_task_status(task_id), task_id)
    if not requests:
        return "data uploaded, processing not started"
    return _request(requests[0], task_id)


def _request(request: dict[str, Any], task_id: int) -> str:
    status = str(request.get("status") or "")
    if status == "failed":
        raise _failed(task_id, str(request.get("message") or "no reason given"))
    if status == "started":
        return f"processing the data ({_percent(request.get('progress'))})"
    if status == "finished":  # the task row lags behind its request for a moment
        return "processing finished, jobs not listed yet"
    return f"data {status or 'queued'}"


def _legacy(state: dict[str, Any], task_id: int) -> str:
    """The legacy ``/status`` answer read as a request ("Started" is "started")."""
    as_request = {**state, "status": str(state.get("state") or "").lower()}
    return _request(as_request, task_id)


def _percent(progress: Any) -> str:
    try:
        return f"{float(progress) * 100:.0f} %"
    except (TypeError, ValueError):
        return "progress unknown"


def _failed(task_id: int, message: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"CVAT failed to process the data of task {task_id}: {message}; upload the data again "
        "in a new task"
    )
