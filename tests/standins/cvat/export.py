"""Dataset export requests: queued, started, then finished with a zip, or failed.

Mirrors cvat/apps/engine/background.py (DatasetExportManager) and
cvat/apps/redis_handler/serializers.py (RequestSerializer): the request id is
``action=export&target=task&target_id=<id>&subresource=dataset|annotations&
format=<name>&user_id=<id>``; the result URL is
``/api/tasks/<id>/dataset/download?rq_id=<quoted id>``; a second request for the
same export while one is queued or running is refused with 409.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from .background import Background
from .model import Task, iso, now

#: How long a finished export stays downloadable (CVAT's default export cache TTL).
RESULT_TTL = timedelta(hours=24)


@dataclass
class ExportRequest:
    id: str
    task_id: int
    format: str
    save_images: bool
    project_id: int | None
    org_id: int | None
    owner: tuple[int, str]
    filename: str
    created: datetime = field(default_factory=now)
    status: str = "queued"
    progress: float = 0.0
    message: str = ""
    started: datetime | None = None
    finished: datetime | None = None
    result: bytes | None = None

    @property
    def subresource(self) -> str:
        return "dataset" if self.save_images else "annotations"

    @property
    def active(self) -> bool:
        return self.status in ("queued", "started")

    def result_url(self, base: str) -> str | None:
        if self.status != "finished":
            return None
        return f"{base}/api/tasks/{self.task_id}/dataset/download?rq_id={quote(self.id)}"

    def as_dict(self, base: str) -> dict[str, Any]:
        """The object GET /api/requests/<id> answers."""
        expiry = self.finished + RESULT_TTL if self.finished else None
        return {
            "status": self.status,
            "message": self.message,
            "id": self.id,
            "operation": {
                "type": f"export:{self.subresource}",
                "target": "task",
                "project_id": self.project_id,
                "task_id": self.task_id,
                "job_id": None,
                "org_id": self.org_id,
                "format": self.format,
                "lightweight": None,
            },
            "progress": self.progress,
            "created_date": iso(self.created),
            "started_date": iso(self.started),
            "finished_date": iso(self.finished),
            "expiry_date": iso(expiry),
            "owner": {"id": self.owner[0], "username": self.owner[1]},
            "result_url": self.result_url(base),
            "result_id": None,
        }


def request_id(task_id: int, fmt: str, save_images: bool, user_id: int) -> str:
    subresource = "dataset" if save_images else "annotations"
    return (
        f"action=export&target=task&target_id={task_id}&subresource={subresource}"
        f"&format={fmt}&user_id={user_id}"
    )


def result_filename(task: Task, fmt: str, save_images: bool) -> str:
    """CVAT's build_annotations_file_name: task_<id>_<dataset|annotations>_<time>_<fmt>.zip"""
    kind = "dataset" if save_images else "annotations"
    stamp = task.updated.strftime("%Y_%m_%d_%H_%M_%S")
    return f"task_{task.id}_{kind}_{stamp}_{fmt}.zip".lower()


class Exports(Background[ExportRequest]):
    """The export requests and the background work that completes them
    (``failures``: task id -> message the next export of that task fails with)."""

    def start(
        self,
        request: ExportRequest,
        build: Callable[[], bytes],
        on_done: Callable[[ExportRequest], None],
    ) -> None:
        self.requests[request.id] = request
        self.spawn(self._run(request, build, on_done))

    async def _run(
        self,
        request: ExportRequest,
        build: Callable[[], bytes],
        on_done: Callable[[ExportRequest], None],
    ) -> None:
        await asyncio.sleep(self.step_seconds)
        request.status, request.started, request.progress = "started", now(), 0.0
        request.message = "Exporting the dataset"
        await asyncio.sleep(self.step_seconds)
        failure = self.failures.pop(request.task_id, None)
        request.finished = now()
        if failure is not None:
            request.status, request.message, request.progress = "failed", failure, 0.0
        else:
            try:
                request.result = build()
            except Exception as exc:  # report it as CVAT reports a failed RQ job
                request.status, request.message = "failed", f"{type(exc).__name__}: {exc}"
            else:
                request.status, request.message, request.progress = "finished", "", 1.0
        on_done(request)
