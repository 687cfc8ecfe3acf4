"""CVAT-shaped webhook payloads (cvat/apps/webhooks; the REST shapes of tasks and jobs)."""

from __future__ import annotations

from typing import Any

BASE = "http://cvat.example:8080"
SENDER = {
    "url": f"{BASE}/api/users/1",
    "id": 1,
    "username": "admin1",
    "first_name": "Admin",
    "last_name": "First",
}


def job(
    job_id: int = 19,
    task_id: int = 15,
    project_id: int | None = 4,
    *,
    state: str = "completed",
    stage: str = "annotation",
    updated: str = "2024-05-02T10:00:00.000000Z",
) -> dict[str, Any]:
    return {
        "url": f"{BASE}/api/jobs/{job_id}",
        "id": job_id,
        "task_id": task_id,
        "project_id": project_id,
        "assignee": None,
        "guide_id": None,
        "dimension": "2d",
        "bug_tracker": None,
        "status": "annotation" if stage == "annotation" else stage,
        "stage": stage,
        "state": state,
        "mode": "annotation",
        "frame_count": 4,
        "start_frame": 0,
        "stop_frame": 3,
        "data_chunk_size": 72,
        "data_compressed_chunk_type": "imageset",
        "data_original_chunk_type": "imageset",
        "created_date": "2024-05-01T09:00:00.000000Z",
        "updated_date": updated,
        "issues": {"url": f"{BASE}/api/issues?job_id={job_id}", "count": 0},
        "labels": {"url": f"{BASE}/api/labels?job_id={job_id}"},
        "type": "annotation",
        "organization": None,
        "target_storage": None,
        "source_storage": None,
        "assignee_updated_date": None,
    }


def task(
    task_id: int = 15,
    project_id: int | None = 3,
    *,
    status: str = "completed",
    updated: str = "2024-05-02T10:00:00.000000Z",
    created: str = "2024-05-01T09:00:00.000000Z",
) -> dict[str, Any]:
    return {
        "url": f"{BASE}/api/tasks/{task_id}",
        "id": task_id,
        "name": f"task {task_id}",
        "project_id": project_id,
        "mode": "annotation",
        "owner": SENDER,
        "assignee": None,
        "bug_tracker": "",
        "created_date": created,
        "updated_date": updated,
        "overlap": 0,
        "segment_size": 4,
        "status": status,
        "data_chunk_size": 72,
        "data_compressed_chunk_type": "imageset",
        "data_original_chunk_type": "imageset",
        "size": 4,
        "image_quality": 70,
        "data": 14,
        "dimension": "2d",
        "subset": "",
        "organization": None,
        "target_storage": {"id": 14, "location": "local", "cloud_storage_id": None},
        "source_storage": {"id": 13, "location": "local", "cloud_storage_id": None},
        "jobs": {
            "count": 1,
            "completed": 1,
            "validation": 0,
            "url": f"{BASE}/api/jobs?task_id={task_id}",
        },
        "labels": {"url": f"{BASE}/api/labels?task_id={task_id}"},
    }


def update(
    resource: str,
    body: dict[str, Any],
    old: dict[str, Any],
    *,
    diff: str = "changes",
    webhook_id: int = 7,
) -> dict[str, Any]:
    """An ``update:<resource>`` delivery; ``diff`` is "changes", "before_update", "both" or "none"."""
    payload: dict[str, Any] = {"event": f"update:{resource}", resource: body}
    if diff in ("before_update", "both"):
        payload["before_update"] = dict(old)
    if diff in ("changes", "both"):
        payload["changes"] = {k: {"from": v, "to": body[k]} for k, v in old.items()}
    payload["webhook_id"] = webhook_id
    payload["sender"] = SENDER
    return payload


def job_completed(
    job_id: int = 19, task_id: int = 15, project_id: int | None = 4, **kwargs: Any
) -> dict[str, Any]:
    diff = kwargs.pop("diff", "changes")
    body = job(job_id, task_id, project_id, **kwargs)
    return update(
        "job", body, {"state": "in progress", "updated_date": "2024-05-01T09:00:00Z"}, diff=diff
    )


def task_completed(task_id: int = 15, project_id: int | None = 3, **kwargs: Any) -> dict[str, Any]:
    diff = kwargs.pop("diff", "changes")
    body = task(task_id, project_id, **kwargs)
    return update("task", body, {"status": "annotation"}, diff=diff)


def task_created(
    task_id: int = 21, project_id: int | None = 3, webhook_id: int = 7
) -> dict[str, Any]:
    body = task(task_id, project_id, status="annotation")
    return {"event": "create:task", "task": body, "webhook_id": webhook_id, "sender": SENDER}


def ping(webhook_id: int = 7) -> dict[str, Any]:
    return {
        "event": "ping",
        "webhook": {
            "id": webhook_id,
            "url": f"{BASE}/api/webhooks/{webhook_id}",
            "target_url": "http://gateway:8080/webhooks/cvat",
            "description": "",
            "type": "project",
            "content_type": "application/json",
            "is_active": True,
            "enable_ssl": True,
            "events": ["create:task", "update:job", "update:task"],
            "project_id": 3,
            "organization": None,
            "owner": SENDER,
        },
        "sender": SENDER,
    }
