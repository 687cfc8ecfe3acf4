"""The REST endpoints: one aiohttp handler per CVAT view the stand-in speaks."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import coco, export, media, resources
from . import labeled_data as annotations_
from .labeled_data import AnnotationError
from .model import JOB_STAGES, JOB_STATES, Job, Task, now

if TYPE_CHECKING:
    from .server import CvatStandIn

#: The organisation context of a request: None (all), "" (personal) or a slug.
ORG: web.RequestKey[str | None] = web.RequestKey("org")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def _detail(status: int, message: str) -> web.Response:
    return _json({"detail": message}, status=status)


def _not_found() -> web.HTTPNotFound:
    return web.HTTPNotFound(
        text=json.dumps({"detail": "Not found."}), content_type="application/json"
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

    def _task(self, request: web.Request) -> Task:
        task = self.state.tasks.get(int(request.match_info["id"]))
        if task is None or not self._visible(request, task):
            raise _not_found()
        return task

    def _job(self, request: web.Request) -> Job:
        job = self.state.jobs.get(int(request.match_info["id"]))
        if job is None or not self._visible(request, self.state.tasks[job.task_id]):
            raise _not_found()
        return job

    # --- server and users ---------------------------------------------------------

    async def about(self, request: web.Request) -> web.Response:
        return _json(resources.about())

    async def formats(self, request: web.Request) -> web.Response:
        return _json(resources.formats())

    async def users_self(self, request: web.Request) -> web.Response:
        return _json(resources.full_user(self.base, self.state.user))

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
            if not self._visible(request, task):
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
            if not self._visible(request, task):
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
            if not self._visible(request, task):
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
        return _json(resources.data_meta(task, 0, len(task.frames) - 1))

    async def job_meta(self, request: web.Request) -> web.Response:
        job = self._job(request)
        task = self.state.tasks[job.task_id]
        return _json(resources.data_meta(task, job.start_frame, job.stop_frame))

    async def task_data(self, request: web.Request) -> web.Response:
        task = self._task(request)
        return self._data(request, task, 0, len(task.frames) - 1, "task")

    async def job_data(self, request: web.Request) -> web.Response:
        job = self._job(request)
        task = self.state.tasks[job.task_id]
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
        task = self._task(request)
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
        user = self.state.user
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

    async def requests_list(self, request: web.Request) -> web.Response:
        items = [r.as_dict(self.base) for r in self.server.exports.requests.values()]
        items.sort(key=lambda r: r["created_date"], reverse=True)
        return _json(self._page(request, items))

    async def request_retrieve(self, request: web.Request) -> web.Response:
        item = self.server.exports.requests.get(request.match_info["rq_id"])
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
