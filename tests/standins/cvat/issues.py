"""CVAT's issues (review comments on a region of a frame), as CVAT 2.x serves them.

    POST /api/issues              IssueWriteSerializer: frame, position, job, message
                                  (required), assignee, resolved; 201 with the issue
    GET  /api/issues?job_id=      paginated, newest first; also task_id, frame_id, resolved

What CVAT's server does (cvat/apps/engine/views.py ``IssueViewSet``,
serializers.py ``IssueWriteSerializer``): the ``message`` becomes the issue's first
comment (the read form shows ``comments: {count, url}``); ``position`` is the
region's points (x1, y1, x2, y2 for a rectangle); the frame must lie in the job
(400 otherwise); changing a job's issues needs the right to change the job (403).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from . import access
from .handlers import USER, Handlers


def _bad(detail: dict[str, list[str]]) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps(detail), content_type="application/json")


class IssueHandlers:
    """``/api/issues``; the issues live in ``server.issues`` (dicts as CVAT reads them)."""

    def __init__(self, handlers: Handlers) -> None:
        self.h = handlers
        self.server = handlers.server

    async def create(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            raise _bad({"detail": ["JSON parse error"]}) from None
        if not isinstance(body, dict):
            raise _bad({"non_field_errors": ["Invalid data. Expected a dictionary."]})
        missing = [k for k in ("frame", "position", "job", "message") if k not in body]
        if missing:
            raise _bad({k: ["This field is required."] for k in missing})
        state = self.h.state
        job = state.jobs.get(body["job"]) if isinstance(body["job"], int) else None
        if job is None:
            raise _bad({"job": [f'Invalid pk "{body["job"]}" - object does not exist.']})
        task = state.tasks[job.task_id]
        if not self.h._visible(request, task):
            raise _bad({"job": [f'Invalid pk "{body["job"]}" - object does not exist.']})
        if not access.may_change_job(request[USER], task, job):
            return web.json_response(
                {"detail": "You do not have permission to perform this action."}, status=403
            )
        frame, position = body["frame"], body["position"]
        if not isinstance(frame, int) or not job.start_frame <= frame <= job.stop_frame:
            raise _bad({"frame": [f"The frame number must be in [{job.start_frame}, "
                                  f"{job.stop_frame}]"]})  # fmt: skip
        if (
            not isinstance(position, list)
            or len(position) < 4
            or len(position) % 2
            or not all(isinstance(v, int | float) for v in position)
        ):
            raise _bad({"position": ["A list of 4 or more numbers (x, y pairs) is expected."]})
        if not isinstance(body["message"], str) or not body["message"].strip():
            raise _bad({"message": ["This field may not be blank."]})
        user = request[USER]
        now = datetime.now(UTC).isoformat()
        issue = {
            "id": len(self.server.issues) + 1,
            "frame": frame,
            "position": [float(v) for v in position],
            "job": job.id,
            "owner": {"id": user.id, "username": user.username},
            "assignee": None,
            "created_date": now,
            "updated_date": now,
            "resolved": bool(body.get("resolved", False)),
            "comments": {"count": 1, "url": f"{self.h.base}/api/comments?issue_id=0"},
            # not in CVAT's read form: the first comment's text, kept for the tests
            "_message": body["message"],
        }
        issue["comments"]["url"] = f"{self.h.base}/api/comments?issue_id={issue['id']}"
        self.server.issues.append(issue)
        return web.json_response(_public(issue), status=201)

    async def list(self, request: web.Request) -> web.Response:
        wanted: dict[str, Any] = {}
        for name, field in (("job_id", "job"), ("frame_id", "frame")):
            value = request.query.get(name)
            if value is not None:
                wanted[field] = int(value)
        task_id = request.query.get("task_id")
        items = []
        for issue in sorted(self.server.issues, key=lambda i: -i["id"]):
            job = self.h.state.jobs[issue["job"]]
            task = self.h.state.tasks[job.task_id]
            if not self.h._visible(request, task) or not access.may_read_job(
                request[USER], task, job
            ):
                continue
            if any(issue[k] != v for k, v in wanted.items()):
                continue
            if task_id is not None and job.task_id != int(task_id):
                continue
            items.append(_public(issue))
        return web.json_response(self.h._page(request, items))


def _public(issue: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in issue.items() if not k.startswith("_")}
