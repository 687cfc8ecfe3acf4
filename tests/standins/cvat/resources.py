"""How the stand-in's objects look on the wire: CVAT's REST representations.

Field names and shapes follow cvat/schema.yml as cvat-sdk 2.80's generated
models read them (TaskRead, JobRead, Label, DataMetaRead, User, About, ...),
checked against the dumps in cvat-ai/cvat tests/python/shared/assets.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from .model import Job, Label, State, Task, User, iso

#: The server version reported; cvat-sdk 2.80 accepts 2.80.x and 2.81.x.
SERVER_VERSION = "2.80.0"

#: Export formats the stand-in lists, as (name, ext, version, enabled).
EXPORT_FORMATS = (
    ("COCO 1.0", "ZIP", "1.0", True),
    ("CVAT for images 1.1", "ZIP", "1.1", True),
    ("Datumaro 1.0", "ZIP", "1.0", True),
    ("PASCAL VOC 1.1", "ZIP", "1.1", True),
    ("YOLO 1.1", "ZIP", "1.1", True),
    ("TFRecord 1.0", "ZIP", "1.0", False),
)

#: The formats the stand-in can actually produce.
IMPLEMENTED_FORMATS = ("COCO 1.0",)


def about() -> dict[str, Any]:
    return {
        "name": "Computer Vision Annotation Tool",
        "description": "CVAT is completely re-designed and re-implemented version of Video "
        "Annotation Tool from Irvine, California tool.",
        "version": SERVER_VERSION,
        "logo_url": "/api/server/logo",
        "subtitle": "Open and free data annotation platform",
    }


def formats() -> dict[str, Any]:
    exporters = [
        {"name": n, "ext": e, "version": v, "enabled": on, "dimension": "2d"}
        for n, e, v, on in EXPORT_FORMATS
    ]
    return {"importers": [dict(x) for x in exporters], "exporters": exporters}


def basic_user(base: str, user: User) -> dict[str, Any]:
    return {
        "url": f"{base}/api/users/{user.id}",
        "id": user.id,
        "username": user.username,
        "first_name": user.first_name,
        "last_name": user.last_name,
    }


def full_user(base: str, user: User) -> dict[str, Any]:
    return {
        **basic_user(base, user),
        "email": user.email,
        "groups": ["admin"],
        "is_staff": True,
        "is_superuser": True,
        "is_active": True,
        "last_login": "2024-01-01T00:00:00.000000Z",
        "date_joined": "2024-01-01T00:00:00.000000Z",
        "has_analytics_access": True,
    }


def task(base: str, state: State, t: Task) -> dict[str, Any]:
    """A task as TaskReadSerializer gives it. Before data is attached CVAT leaves
    out every field read through ``task.data`` (``data``, ``size``,
    ``image_quality``, ``data_chunk_size``, ``data_*_chunk_type``), as its
    "task_without_data" asset shows; while the data is processed ``size`` is 0
    and ``jobs.count`` 0."""
    jobs = t.all_jobs  # CVAT's job summary counts the Ground Truth job too
    completed = sum(1 for j in jobs if j.state == "completed")
    validation = sum(1 for j in jobs if j.stage == "validation")
    org_id = state.organizations[t.organization] if t.organization else None
    out: dict[str, Any] = {
        "url": f"{base}/api/tasks/{t.id}",
        "id": t.id,
        "name": t.name,
        "project_id": t.project_id,
        "project_name": f"project {t.project_id}" if t.project_id is not None else None,
        "mode": ("interpolation" if t.video else "annotation") if t.data_ready else "",
        "owner": basic_user(base, t.owner),
        "assignee": basic_user(base, t.assignee) if t.assignee else None,
        "bug_tracker": "",
        "created_date": iso(t.created),
        "updated_date": iso(t.updated),
        "overlap": 0 if t.data_ready else None,
        "segment_size": t.segment_size,
        "status": t.status,
        "guide_id": None,
        "dimension": "2d",
        "subset": t.subset,
        "organization": org_id,
        "target_storage": None,
        "source_storage": None,
        "assignee_updated_date": None,
        # A GT job made with POST /api/jobs sets the task's validation layout to "gt".
        "validation_mode": "gt" if t.gt_job else None,
        "jobs": {
            "count": len(jobs),
            "completed": completed,
            "validation": validation,
            "url": f"{base}/api/jobs?{urlencode({'task_id': t.id})}",
        },
        "labels": {"url": f"{base}/api/labels?{urlencode({'task_id': t.id})}"},
    }
    if t.data_id is not None:
        out.update(
            {
                "data_chunk_size": t.chunk_size,
                "data_compressed_chunk_type": "video" if t.video else "imageset",
                "data_original_chunk_type": "video" if t.video else "imageset",
                "data_cloud_storage_id": None,
                "size": len(t.frames),
                "image_quality": t.image_quality,
                "data": t.data_id,
            }
        )
    return out


def job(base: str, state: State, j: Job) -> dict[str, Any]:
    """JobReadSerializer. A Ground Truth job spans frames 0 to the task's last
    (``start_frame``/``stop_frame``) and counts only its own (``frame_count``);
    its chunks are always an image set."""
    t = state.tasks[j.task_id]
    chunks = "video" if t.video and j.type != "ground_truth" else "imageset"
    org_id = state.organizations[t.organization] if t.organization else None
    return {
        "url": f"{base}/api/jobs/{j.id}",
        "id": j.id,
        "task_id": t.id,
        "task_name": t.name,
        "project_id": t.project_id,
        "project_name": f"project {t.project_id}" if t.project_id is not None else None,
        "assignee": basic_user(base, j.assignee) if j.assignee else None,
        "guide_id": None,
        "dimension": "2d",
        "mode": "interpolation" if t.video else "annotation",
        "bug_tracker": None,
        "status": j.status,
        "stage": j.stage,
        "state": j.state,
        "frame_count": len(j.frames)
        if j.type == "ground_truth"
        else j.stop_frame - j.start_frame + 1,
        "start_frame": j.start_frame,
        "stop_frame": j.stop_frame,
        "data_chunk_size": t.chunk_size,
        "data_compressed_chunk_type": chunks,
        "data_original_chunk_type": "video" if t.video else "imageset",
        "created_date": iso(j.created),
        "updated_date": iso(j.updated),
        "type": j.type,
        "organization": org_id,
        "target_storage": None,
        "source_storage": None,
        "assignee_updated_date": None,
        "parent_job_id": None,
        "replicas_count": 0,
        "issues": {"url": f"{base}/api/issues?{urlencode({'job_id': j.id})}", "count": 0},
        "labels": {"url": f"{base}/api/labels?{urlencode({'job_id': j.id})}"},
    }


def label(lb: Label) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": lb.id,
        "name": lb.name,
        "color": lb.color,
        "attributes": [dict(a) for a in lb.attributes],
        "type": lb.type,
        "sublabels": [],
        "has_parent": False,
        "parent_id": None,
    }
    if lb.project_id is not None:
        out["project_id"] = lb.project_id
    else:
        out["task_id"] = lb.task_id
    return out


def data_meta(t: Task, start: int, stop: int, included: tuple[int, ...] = ()) -> dict[str, Any]:
    """DataMetaReadSerializer; while the data is processed: size 0, no frames.

    ``included``: a Ground Truth job's frames (JobViewSet.metadata): ``size`` counts
    them, ``included_frames`` lists them, and every other frame of the range is
    listed as ``placeholder.jpg`` (same width and height)."""
    if included:
        chosen = set(included)
        return {
            **data_meta(t, start, stop),
            "size": len(included),
            "frames": [
                {
                    "width": f.width,
                    "height": f.height,
                    "name": f.name if i in chosen else "placeholder.jpg",
                    "related_files": 0,
                    "has_related_context": False,
                }
                for i, f in enumerate(t.frames[start : stop + 1], start=start)
            ],
            "deleted_frames": sorted(f for f in t.deleted_frames if f in chosen),
            "included_frames": list(included),
        }
    return {
        "chunks_updated_date": iso(t.created),
        "chunk_size": t.chunk_size,
        "size": len(t.frames[start : stop + 1]),
        "image_quality": t.image_quality,
        "start_frame": start,
        "stop_frame": max(stop, start),
        "frame_filter": "",
        "frames": [
            {
                "width": f.width,
                "height": f.height,
                "name": f.name,
                "related_files": 0,
                "has_related_context": False,
            }
            # A video is one media item: CVAT lists it once (views.py: media = [db_data.video]).
            for f in (t.frames[:1] if t.video else t.frames[start : stop + 1])
        ],
        "deleted_frames": sorted(f for f in t.deleted_frames if start <= f <= stop),
        "included_frames": None,
        "chapters": None,
        "storage": "local",
        "cloud_storage_id": None,
    }


def page(
    base: str, path: str, query: dict[str, str], items: list[dict[str, Any]]
) -> dict[str, Any]:
    """A DRF page: ``page`` and ``page_size`` (default 10) from the query."""
    number = int(query.get("page", "1"))
    size = int(query.get("page_size", "10"))
    start = (number - 1) * size
    chunk = items[start : start + size]

    def link(n: int) -> str:
        return f"{base}{path}?{urlencode({**query, 'page': n})}"

    return {
        "count": len(items),
        "next": link(number + 1) if start + size < len(items) else None,
        "previous": link(number - 1) if number > 1 else None,
        "results": chunk,
    }
