"""A task's data being processed: the background request POST /api/tasks/{id}/data starts.

Mirrors CVAT 2.x: the upload answers 202 ``{"rq_id"}``; the request id is
``action=create&target=task&target_id=<id>``; ``GET /api/requests/<rq_id>`` (and
the list, ``?action=create&task_id=<id>``) shows it queued, then started with a
``progress``, then finished or failed; the deprecated ``GET
/api/tasks/{id}/status`` answers the same as ``{"state": "Queued" | "Started" |
"Finished" | "Failed", "message", "progress"}``. Until it finishes the task
has ``size`` 0 and no jobs; its frames and jobs appear together at the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .background import Background
from .model import iso, now

#: Legacy /status states by request status.
_LEGACY = {"queued": "Queued", "started": "Started", "finished": "Finished", "failed": "Failed"}


def request_id(task_id: int) -> str:
    return f"action=create&target=task&target_id={task_id}"


@dataclass
class CreateRequest:
    id: str
    task_id: int
    project_id: int | None
    org_id: int | None
    owner: tuple[int, str]
    created: datetime = field(default_factory=now)
    status: str = "queued"
    progress: float = 0.0
    message: str = ""
    started: datetime | None = None
    finished: datetime | None = None

    @property
    def active(self) -> bool:
        return self.status in ("queued", "started")

    def as_dict(self, base: str) -> dict[str, Any]:
        """The object GET /api/requests/<id> answers."""
        return {
            "status": self.status,
            "message": self.message,
            "id": self.id,
            "operation": {
                "type": "create:task",
                "target": "task",
                "project_id": self.project_id,
                "task_id": self.task_id,
                "job_id": None,
                "org_id": self.org_id,
                "format": None,
                "lightweight": None,
            },
            "progress": self.progress,
            "created_date": iso(self.created),
            "started_date": iso(self.started),
            "finished_date": iso(self.finished),
            "expiry_date": None,
            "owner": {"id": self.owner[0], "username": self.owner[1]},
            "result_url": None,
            "result_id": self.task_id if self.status == "finished" else None,
        }

    def legacy_status(self) -> dict[str, Any]:
        """What the deprecated GET /api/tasks/{id}/status answers."""
        out: dict[str, Any] = {"state": _LEGACY[self.status], "message": self.message}
        if self.status == "started":
            out["progress"] = self.progress
        return out


class Creations(Background[CreateRequest]):
    """The data requests and the background work that completes them
    (``failures``: task id -> message processing that task's data fails with)."""

    def for_task(self, task_id: int) -> CreateRequest | None:
        return self.requests.get(request_id(task_id))

    def start(self, request: CreateRequest, attach: Callable[[], None]) -> None:
        """Process in the background: queued, started, then ``attach()`` and finished."""
        self.requests[request.id] = request
        self.spawn(self._run(request, attach))

    async def _run(self, request: CreateRequest, attach: Callable[[], None]) -> None:
        await asyncio.sleep(self.step_seconds)
        request.status, request.started = "started", now()
        request.message, request.progress = "Media files are being extracted...", 0.0
        await asyncio.sleep(self.step_seconds / 2)
        request.progress = 0.5
        await asyncio.sleep(self.step_seconds / 2)
        failure = self.failures.pop(request.task_id, None)
        request.finished = now()
        if failure is not None:
            request.status, request.message, request.progress = "failed", failure, 0.0
            return
        try:
            attach()
        except Exception as exc:  # reported as CVAT reports a failed RQ job
            request.status, request.message = "failed", f"{type(exc).__name__}: {exc}"
        else:
            request.status, request.message, request.progress = "finished", "", 1.0

    async def wait(self, task_id: int, timeout: float) -> CreateRequest:
        """Wait until the task's data request has ended."""
        request = self.for_task(task_id)
        if request is None:
            raise KeyError(f"task {task_id} has no data request; call upload_data first")
        async with asyncio.timeout(timeout):
            while request.active:
                await asyncio.sleep(0.01)
        return request
