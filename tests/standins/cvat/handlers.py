"""The REST endpoints: one aiohttp handler per CVAT view the stand-in speaks."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import access, coco, creation, export, media, resources
from . import labeled_data as annotations_
from .ground_truth import GroundTruthError, parse_job_create
from .labeled_data import AnnotationError
from .model import JOB_STAGES, JOB_STATES, Job, Task, User, now

if TYPE_CHECKING:
    from .server import CvatStandIn

#: The organisation context of a request: None (all), "" (personal) or a slug.
ORG: web.RequestKey[str | None] = web.RequestKey("org")
#: The user the request's token belongs to.
USER: web.RequestKey[User] = web.RequestKey("user")

#: Methods that only read.
_SAFE = ("GET", "HEAD", "OPTIONS")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def _detail(status: int, message: str) -> web.Response:
    return _json({"detail": message}, status=status)


def _not_found() -> web.HTTPNotFound:
    return web.HTTPNotFound(
        text=json.dumps({"detail": "Not found."}), content_type="application/json"
    )


def _forbidden() -> web.HTTPForbidden:
    return web.HTTPForbidden(
        text=json.dumps({"detail": access.DENIED}), content_type="application/json"
    )


def _bad_request(detail: Any) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps(detail), content_type="application/json")


def _int_arg(request: web.Request, name: str, *, required: bool = False) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        if required:
            raise _bad_request({name: ["This query parameter is required."]})
        return None
    try:
        return int(raw)
    except ValueError:
        raise _bad_request({name: [f"A valid integer is required, got {raw!r}."]}) from None


def _server_error() -> web.Response:
    return web.Response(status=500, text="<h1>Server Error (500)</h1>", content_type="text/html")


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


class Handlers:
    """Handlers over the stand-in's state; ``request[ORG]`` is the org context."""

    def __init__(self, server: CvatStandIn) -> None:
        self.server = server
        self.state = server.state

    @property
    def base(self) -> str:
        return self.server.url

    # --- visibility ---------------------------------------------------------------

    def _visible(self, request: web.Request, task: Task) -> bool:
        org = request.get(ORG)
        if org is None:
            return True
        if org == "":
            return task.organization is None
        return task.organization == org

    def _readable(self, request: web.Request, task: Task) -> bool:
        return self._visible(request, task) and access.may_read(request[USER], task)

    def _task(self, request: web.Request, *, write: bool | None = None) -> Task:
        """The task the path names: 404 unknown (or another org's), 403 not the user's
        (to read, or with ``write`` (default: an unsafe method) to change)."""
        task = self.state.tasks.get(int(request.match_info["id"]))
        if task is None or not self._visible(request, task):
            raise _not_found()
        user = request[USER]
        write = request.method not in _SAFE if write is None else write
        allowed = access.may_change if write else access.may_read
        if not allowed(user, task):
            raise _forbidden()
        return task

    def _job(self, request: web.Request) -> Job:
        job = self.state.jobs.get(int(request.match_info["id"]))
        if job is None or not self._visible(request, self.state.tasks[job.task_id]):
            raise _not_found()
        task = self.state.tasks[job.task_id]
        allowed = access.may_read_job if request.method in _SAFE else access.may_change_job
        if not allowed(request[USER], task, job):
            raise _forbidden()
        return job

    # --- server and users ---------------------------------------------------------

    async def about(self, request: web.Request) -> web.Response:
        return _json(resources.about())

    async def formats(self, request: web.Request) -> web.Response:
        return _json(resources.formats())

    async def users_self(self, request: web.Request) -> web.Response:
        return _json(resources.full_user(self.base, request[USER]))

    async def organization_retrieve(self, request: web.Request) -> web.Response:
        """``GET /api/organizations/{id}``: members (and admins) see it, others get 404
        (CVAT filters the queryset by membership)."""
        wanted = int(request.match_info["id"])
        slug = next((s for s, i in self.state.organizations.items() if i == wanted), None)
        user = request[USER]
        if slug is None or (user.privilege != "admin" and slug not in user.organizations):
            return _detail(404, "Not found.")
        return _json({"id": wanted, "slug": slug, "name": slug, "description": "",
                      "contact": {}, "owner": None})  # fmt: skip

    # --- tasks, jobs, labels ------------------------------------------------------

    async def tasks_list(self, request: web.Request) -> web.Response:
        wanted = {
            "id": _int_arg(request, "id"),
            "project_id": _int_arg(request, "project_id"),
        }
        text_filters = {
            k: request.query[k] for k in ("name", "status", "subset") if k in request.query
        }
        items = []
        for task in sorted(self.state.tasks.values(), key=lambda t: -t.id):
            if not self._readable(request, task):
                continue
            if wanted["id"] is not None and task.id != wanted["id"]:
                continue
            if wanted["project_id"] is not None and task.project_id != wanted["project_id"]:
                continue
            data = resources.task(self.base, self.state, task)
            if any(str(data[k]) != v for k, v in text_filters.items()):
                continue
            items.append(data)
        return _json(self._page(request, items))

    async def task_retrieve(self, request: web.Request) -> web.Response:
        return _json(resources.task(self.base, self.state, self._task(request)))

    async def task_create(self, request: web.Request) -> web.Response:
        """POST /api/tasks: the row only (CVAT fires create:task now; data comes later)."""
        body = await self._body(request)
        if not isinstance(body, dict) or not body.get("name"):
            raise _bad_request({"name": ["This field is required."]})
        unknown = set(body) - {"name", "labels", "project_id", "segment_size", "subset",
                               "overlap", "bug_tracker", "assignee_id"}  # fmt: skip
        if unknown:
            raise _bad_request(
                {k: ["The CVAT stand-in does not take this field."] for k in unknown}
            )
        org = request.get(ORG) or None
        user = request[USER]
        if org is not None and user.privilege != "admin" and org not in user.organizations:
            raise _forbidden()
        labels = body.get("labels") or []
        if body.get("project_id") is None and not labels:
            raise _bad_request({"labels": ["Label set must not be empty"]})
        try:
            task_id = self.server.create_task(
                body["name"],
                [
                    {k: v for k, v in lb.items() if k in ("name", "type", "attributes", "color")}
                    for lb in labels
                ],
                project_id=body.get("project_id"),
                segment_size=body.get("segment_size") or None,
                organization=org,
                subset=body.get("subset", ""),
                owner=user.username,
            )
        except ValueError as exc:
            raise _bad_request({"detail": str(exc)}) from None
        return _json(resources.task(self.base, self.state, self.state.tasks[task_id]), 201)

    async def task_data_upload(self, request: web.Request) -> web.Response:
        """POST /api/tasks/{id}/data with multipart ``client_files[N]`` and
        ``image_quality``: 202 {"rq_id"}; processed in the background."""
        task = self._task(request)
        if task.data_id is not None:
            return _json("Adding more data is not supported", status=400)
        if not request.content_type.startswith("multipart/"):
            raise _bad_request(["The CVAT stand-in takes data as multipart client_files[N]"])
        files: list[tuple[int, str, bytes]] = []
        fields: dict[str, str] = {}
        async for part in await request.multipart():
            name = part.name or ""
            if name.startswith("client_files["):
                index = int(name[len("client_files[") : -1])
                files.append((index, part.filename or f"file_{index}", await part.read()))
            else:
                fields[name] = await part.text()
        if not files:
            raise _bad_request({"client_files": ["No media data found"]})
        if "image_quality" not in fields:
            raise _bad_request({"image_quality": ["This field is required."]})
        images = [(n, b) for _, n, b in sorted(files)]
        try:
            rq_id = self.server.upload_data(
                task.id,
                images,
                image_quality=int(fields["image_quality"]),
                chunk_size=int(fields.get("chunk_size") or 72),
            )
        except ValueError as exc:
            raise _bad_request({"detail": str(exc)}) from None
        return _json({"rq_id": rq_id}, status=202)

    async def task_status(self, request: web.Request) -> web.Response:
        """The deprecated GET /api/tasks/{id}/status: no request (yet, or any more) is Finished."""
        task = self._task(request)
        item = self.server.creations.for_task(task.id)
        body = item.legacy_status() if item is not None else {"state": "Finished", "message": ""}
        return web.json_response(body, headers={"Deprecation": "true"})

    async def jobs_list(self, request: web.Request) -> web.Response:
        task_id = _int_arg(request, "task_id")
        project_id = _int_arg(request, "project_id")
        job_id = _int_arg(request, "id")
        text_filters = {
            k: request.query[k] for k in ("state", "stage", "type") if k in request.query
        }
        items = []
        for job in sorted(self.state.jobs.values(), key=lambda j: -j.id):
            task = self.state.tasks[job.task_id]
            if not self._visible(request, task) or not access.may_read_job(
                request[USER], task, job
            ):
                continue
            if task_id is not None and job.task_id != task_id:
                continue
            if project_id is not None and task.project_id != project_id:
                continue
            if job_id is not None and job.id != job_id:
                continue
            data = resources.job(self.base, self.state, job)
            if any(str(data[k]) != v for k, v in text_filters.items()):
                continue
            items.append(data)
        return _json(self._page(request, items))

    async def job_create(self, request: web.Request) -> web.Response:
        """``POST /api/jobs``: a Ground Truth job over chosen frames (JobWriteSerializer):
        201 with the job; 400 with CVAT's message when refused; 403 without the right
        to change the task."""
        body = await self._body(request)
        try:
            wanted = parse_job_create(body)
        except GroundTruthError as exc:
            raise _bad_request(exc.detail) from None
        task = self.state.tasks.get(wanted.task_id)
        if task is None or not self._visible(request, task):
            raise _bad_request(["Task matching query does not exist."])
        if not access.may_change(request[USER], task):
            raise _forbidden()
        try:
            self.state.check_gt_job(task)
            job = self.server.add_gt_job(task.id, wanted.frames_for(task))
        except ValueError as exc:
            raise _bad_request([str(exc)]) from None
        return _json(job, 201)

    async def job_delete(self, request: web.Request) -> web.Response:
        """``DELETE /api/jobs/{id}``: only a Ground Truth job, with its annotations."""
        job = self._job(request)
        if job.type != "ground_truth":
            raise _bad_request(["Only ground truth jobs can be removed"])
        self.server.remove_gt_job(job.id)
        return web.Response(status=204)

    async def job_retrieve(self, request: web.Request) -> web.Response:
        return _json(resources.job(self.base, self.state, self._job(request)))

    async def job_update(self, request: web.Request) -> web.Response:
        job = self._job(request)
        body = await self._body(request)
        if not isinstance(body, dict):
            raise _bad_request({"non_field_errors": ["Expected a dictionary."]})
        errors = {}
        if "state" in body and body["state"] not in JOB_STATES:
            errors["state"] = [f'"{body["state"]}" is not a valid choice.']
        if "stage" in body and body["stage"] not in JOB_STAGES:
            errors["stage"] = [f'"{body["stage"]}" is not a valid choice.']
        if errors:
            raise _bad_request(errors)
        return _json(
            self.server.set_job_state(job.id, state=body.get("state"), stage=body.get("stage"))
        )

    async def labels_list(self, request: web.Request) -> web.Response:
        task_id = _int_arg(request, "task_id")
        job_id = _int_arg(request, "job_id")
        project_id = _int_arg(request, "project_id")
        if job_id is not None:
            job = self.state.jobs.get(job_id)
            task_id = job.task_id if job else -1
        items = []
        tasks = sorted(self.state.tasks.values(), key=lambda t: t.id)
        for task in tasks:
            if not self._readable(request, task):
                continue
            if task_id is not None and task.id != task_id:
                continue
            if project_id is not None and task.project_id != project_id:
                continue
            items += [resources.label(lb) for lb in task.labels]
        items.sort(key=lambda lb: lb["id"])
        return _json(self._page(request, items))

    async def label_retrieve(self, request: web.Request) -> web.Response:
        label_id = int(request.match_info["id"])
        for task in self.state.tasks.values():
            label = task.label(label_id)
            if label is not None and self._visible(request, task):
                if not access.may_read(request[USER], task):
                    raise _forbidden()
                return _json(resources.label(label))
        raise _not_found()

    def _page(self, request: web.Request, items: list[dict[str, Any]]) -> dict[str, Any]:
        for name in ("page", "page_size"):
            value = _int_arg(request, name)
            if value is not None and value < 1:
                raise _not_found() if name == "page" else _bad_request({name: ["Must be >= 1."]})
        number = _int_arg(request, "page") or 1
        size = _int_arg(request, "page_size") or 10
        if number > 1 and (number - 1) * size >= len(items):
            raise web.HTTPNotFound(
                text=json.dumps({"detail": "Invalid page."}), content_type="application/json"
            )
        query = dict(request.query)
        return resources.page(self.base, request.path, query, items)

    # --- data ---------------------------------------------------------------------

    async def task_meta(self, request: web.Request) -> web.Response:
        task = self._task(request)
        if task.data_id is None:  # CVAT reads task.data.images with data null: a 500
            return _server_error()
        if request.method == "PATCH":
            body = await self._body(request)
            deleted = body.get("deleted_frames") if isinstance(body, dict) else None
            if not isinstance(deleted, list) or not all(isinstance(f, int) for f in deleted):
                raise _bad_request({"deleted_frames": ["Expected a list of frame numbers."]})
            if any(not 0 <= f < len(task.frames) for f in deleted):
                raise _bad_request({"deleted_frames": ["Frame number out of range."]})
            task.deleted_frames = set(deleted)
        return _json(resources.data_meta(task, 0, len(task.frames) - 1))

    async def job_meta(self, request: web.Request) -> web.Response:
        job = self._job(request)
        task = self.state.tasks[job.task_id]
        return _json(resources.data_meta(task, job.start_frame, job.stop_frame, job.frames))

    async def task_data(self, request: web.Request) -> web.Response:
        task = self._task(request)
        if not task.data_ready:
            raise _bad_request(["The task has no data yet"])
        return self._data(request, task, 0, len(task.frames) - 1, "task")

    async def job_data(self, request: web.Request) -> web.Response:
        job = self._job(request)
        task = self.state.tasks[job.task_id]
        if job.type == "ground_truth":
            if request.query.get("type") != "frame":
                raise _bad_request(["The CVAT stand-in serves a ground truth job frame by frame"])
            number = _int_arg(request, "number", required=True)
            if number not in job.frames:
                raise _bad_request(["The frame number doesn't belong to the job"])
        return self._data(request, task, job.start_frame, job.stop_frame, "job")

    def _data(
        self, request: web.Request, task: Task, start: int, stop: int, owner: str
    ) -> web.Response:
        kind = request.query.get("type")
        quality = request.query.get("quality", "compressed")
        if quality not in media.QUALITIES:
            raise _bad_request([f"Wrong quality '{quality}': use original or compressed"])
        if kind == "frame":
            number = _int_arg(request, "number", required=True)
            assert number is not None
            if not start <= number <= stop:
                raise _bad_request([f"The frame number doesn't belong to the {owner}"])
            body, mime = media.frame_bytes(task.frames[number], quality, task.image_quality)
            return web.Response(body=body, content_type=mime)
        if kind == "chunk":
            index = _int_arg(request, "index" if owner == "job" else "number")
            if index is None:
                index = _int_arg(request, "number", required=True)
            assert index is not None
            count = math.ceil((stop - start + 1) / task.chunk_size)
            if not 0 <= index < count:
                raise _bad_request([f"The chunk number doesn't belong to the {owner}"])
            first = start + index * task.chunk_size
            frames = task.frames[first : min(first + task.chunk_size, stop + 1)]
            body = media.chunk_bytes(frames, quality, task.image_quality)
            return web.Response(body=body, content_type="application/zip")
        raise _bad_request(["Unknown data type: use type=frame or type=chunk"])

    # --- export -------------------------------------------------------------------

    async def dataset_export(self, request: web.Request) -> web.Response:
        task = self._task(request, write=False)
        if not task.data_ready:
            raise _bad_request("Exporting a dataset from a task without data is not allowed")
        fmt = request.query.get("format", "")
        known = {name: enabled for name, _, _, enabled in resources.EXPORT_FORMATS}
        if fmt not in known:
            raise _bad_request(["Unknown format specified for the request"])
        if not known[fmt]:
            return web.Response(status=405)
        if fmt not in resources.IMPLEMENTED_FORMATS:
            raise _bad_request(
                [f"The CVAT stand-in exports only {', '.join(resources.IMPLEMENTED_FORMATS)}"]
            )
        location = request.query.get("location", "local")
        if location != "local":
            raise _bad_request([f"The CVAT stand-in has no storage '{location}': use local"])
        save_images = _flag(request.query.get("save_images"))
        user = request[USER]
        rq_id = export.request_id(task.id, fmt, save_images, user.id)
        existing = self.server.exports.requests.get(rq_id)
        if existing is not None and existing.active:
            return _json("Export request is being processed", status=409)
        org_id = self.state.organizations[task.organization] if task.organization else None
        item = export.ExportRequest(
            id=rq_id,
            task_id=task.id,
            format=fmt,
            save_images=save_images,
            project_id=task.project_id,
            org_id=org_id,
            owner=(user.id, user.username),
            filename=export.result_filename(task, fmt, save_images),
        )
        shapes = annotations_.task_data(self.state, task)["shapes"]
        self.server.exports.start(
            item,
            lambda: coco.build_zip(task, shapes, save_images=save_images),
            self.server.export_done,
        )
        return _json({"rq_id": rq_id}, status=202)

    async def dataset_download(self, request: web.Request) -> web.Response:
        task = self._task(request)
        rq_id = request.query.get("rq_id")
        if not rq_id:
            raise _bad_request("Missing request id in the query parameters")
        item = self.server.exports.requests.get(rq_id)
        if item is None or item.task_id != task.id:
            raise _bad_request("Unknown export request id")
        if item.status != "finished" or item.result is None:
            raise _bad_request("The export process is not finished")
        return web.Response(
            body=item.result,
            content_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{item.filename}"'},
        )

    def _background(self) -> list[export.ExportRequest | creation.CreateRequest]:
        return [*self.server.exports.requests.values(), *self.server.creations.requests.values()]

    async def requests_list(self, request: web.Request) -> web.Response:
        """Background requests, newest first; ``action`` (create, export) and ``task_id`` filter."""
        action = request.query.get("action")
        task_id = _int_arg(request, "task_id")
        items = []
        for item in self._background():
            data = item.as_dict(self.base)
            if action and data["operation"]["type"].split(":")[0] != action:
                continue
            if task_id is not None and data["operation"]["task_id"] != task_id:
                continue
            items.append(data)
        items.sort(key=lambda r: r["created_date"], reverse=True)
        return _json(self._page(request, items))

    async def request_retrieve(self, request: web.Request) -> web.Response:
        rq_id = request.match_info["rq_id"]
        item = next((r for r in self._background() if r.id == rq_id), None)
        if item is None:
            raise _not_found()
        return _json(item.as_dict(self.base))

    # --- annotations --------------------------------------------------------------

    async def job_annotations(self, request: web.Request) -> web.Response:
        job = self._job(request)
        task = self.state.tasks[job.task_id]
        if request.method == "GET":
            return _json(annotations_.job_data(self.state, job))
        return await self._write(request, task, [job])

    async def task_annotations(self, request: web.Request) -> web.Response:
        task = self._task(request)
        if request.method == "GET":
            return _json(annotations_.task_data(self.state, task))
        return await self._write(request, task, task.jobs)

    async def _write(self, request: web.Request, task: Task, jobs: list[Job]) -> web.Response:
        if request.method not in ("PUT", "PATCH", "DELETE"):
            return _detail(405, f'Method "{request.method}" not allowed.')
        if request.method == "DELETE":
            for job in jobs:
                self.state.annotations[job.id] = annotations_.Annotations()
            self._touch(task, jobs)
            return web.Response(status=204)
        body = await self._body(request)
        action = None
        if request.method == "PATCH":
            action = request.query.get("action", "")
        try:
            data = annotations_.apply(self.state, task, jobs, body, action)
        except AnnotationError as exc:
            raise _bad_request(exc.detail) from None
        self._touch(task, jobs)
        return _json(data)

    def _touch(self, task: Task, jobs: list[Job]) -> None:
        moment = now()
        task.updated = moment
        for job in jobs:
            job.updated = moment

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            return json.loads(raw or b"null")
        except ValueError as exc:
            raise _bad_request({"detail": f"JSON parse error - {exc}"}) from None

    # --- webhooks -----------------------------------------------------------------

    async def webhook_ping(self, request: web.Request) -> web.Response:
        webhook_id = int(request.match_info["id"])
        if webhook_id not in self.server.webhooks:
            raise _not_found()
        delivery = await self.server.ping(webhook_id)
        return _json({"id": len(self.server.webhook_deliveries), "status_code": delivery[0],
                      "response": delivery[1]})  # fmt: skip
