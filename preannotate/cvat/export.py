"""CVAT's dataset export flow: request, poll, download.

    POST /api/tasks/{id}/dataset/export?format=COCO%201.0&save_images=true  -> 202 {"rq_id"}
    GET  /api/requests/{rq_id}     until status is "finished" (result_url) or "failed"
    GET  <result_url>              with the same auth: the zip, streamed to a file

Each request is ``CvatClient``'s (its retries and errors). On top of them:
a deadline for the whole export (``ExportLimits.timeout``), a poll interval,
a size limit for the zip, a status callback (each new state CVAT reports, then
"downloading") and a cancel hook asked between two polls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from preannotate.cvat.client import CvatClient
from preannotate.errors import Cancelled, FailedPrecondition, InvalidArgument, Unavailable

EXPORT_FORMAT = "COCO 1.0"
StatusCallback = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class ExportLimits:
    """How long CVAT may take, how often it is asked, and the largest zip taken."""

    timeout: float = 3600.0
    poll_interval: float = 2.0
    max_archive_bytes: int = 20 << 30


async def export_task(
    client: CvatClient,
    task_id: int,
    dest: Path,
    limits: ExportLimits = ExportLimits(),
    *,
    on_status: StatusCallback | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> Path:
    """Ask for, wait for and download task ``task_id``'s export into ``dest``."""
    if task_id <= 0:
        raise InvalidArgument(f"CVAT task id must be a positive number, got {task_id}")
    rq_id = await request_export(client, task_id)
    result_url = await wait_for_export(
        client, rq_id, task_id, limits, on_status=on_status, cancelled=cancelled
    )
    if on_status is not None:
        await on_status("downloading the export from CVAT")
    return await client.download(
        result_url,
        dest,
        max_bytes=limits.max_archive_bytes,
        limit_variable="PREANNOTATE_EXPORT_MAX_ARCHIVE_BYTES",
    )


def _answer(answer: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(answer, Mapping):
        raise FailedPrecondition(f"CVAT's answer to {what} is not an object: {answer!r:.200}")
    return answer


async def request_export(client: CvatClient, task_id: int) -> str:
    """Start the export; its request id."""
    what = f"POST /api/tasks/{task_id}/dataset/export"
    answer = _answer(await client.start_export(task_id, EXPORT_FORMAT), what)
    rq_id = answer.get("rq_id")
    if not rq_id:
        raise FailedPrecondition(f"CVAT accepted the export of task {task_id} but sent no rq_id")
    return str(rq_id)


async def wait_for_export(
    client: CvatClient,
    rq_id: str,
    task_id: int,
    limits: ExportLimits = ExportLimits(),
    *,
    on_status: StatusCallback | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> str:
    """Poll the request until it ends; returns its result_url."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.timeout
    last_seen = ""
    while True:
        request = _answer(await client.background_request(rq_id), f"GET /api/requests/{rq_id}")
        status = str(request.get("status") or "")
        if not status:
            raise FailedPrecondition(f"CVAT's request {rq_id} has no status: {request!r:.200}")
        if status == "finished":
            result_url = request.get("result_url")
            if not result_url:
                raise FailedPrecondition(
                    f"CVAT finished exporting task {task_id} (request {rq_id}) but gave no "
                    "result_url: is the task's target storage a cloud storage? Export to "
                    "local storage"
                )
            return str(result_url)
        if status == "failed":
            raise FailedPrecondition(
                f"CVAT failed to export task {task_id} as {EXPORT_FORMAT} "
                f"(request {rq_id}): {request.get('message') or 'no message'}"
            )
        progress = request.get("progress")
        seen = f"CVAT is preparing the export: {status}" + (
            f" ({float(progress) * 100:.0f}%)" if progress is not None else ""
        )
        if on_status is not None and seen != last_seen:
            await on_status(seen)
        last_seen = seen
        if cancelled is not None and cancelled():
            raise Cancelled(f"cancelled while CVAT was exporting task {task_id}")
        if loop.time() + limits.poll_interval > deadline:
            raise Unavailable(
                f"CVAT did not finish exporting task {task_id} within "
                f"{limits.timeout:g} s (request {rq_id}, last status "
                f"{status}); PREANNOTATE_CVAT_EXPORT_TIMEOUT_SECONDS"
            )
        await asyncio.sleep(limits.poll_interval)
