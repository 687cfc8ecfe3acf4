"""The aiohttp application: route table and the middleware every request passes.

Order per request: log it, apply injected delays, answer an injected failure,
check the token (its user), resolve the organisation context (403 for a user
who is not a member), then route.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from .handlers import ORG, USER, Handlers
from .issues import IssueHandlers
from .model import User

if TYPE_CHECKING:
    from .server import CvatStandIn

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Paths CVAT serves without credentials.
_PUBLIC = ("/api/server/about",)


@dataclass(frozen=True)
class LoggedRequest:
    """A request the stand-in saw; unpacks as (method, path, headers)."""

    method: str
    path: str
    headers: CIMultiDictProxy[str]
    query: dict[str, str]

    def __iter__(self) -> Iterator[object]:
        return iter((self.method, self.path, self.headers))


def build_app(server: CvatStandIn) -> web.Application:
    app = web.Application(middlewares=[_middleware(server)], client_max_size=256 * 1024 * 1024)
    h = Handlers(server)
    issues = IssueHandlers(h)
    # CVAT routes data and annotations with and without a trailing slash.
    task, job = r"/api/tasks/{id:\d+}", r"/api/jobs/{id:\d+}"
    app.add_routes(
        [
            web.get("/api/server/about", h.about),
            web.get("/api/server/annotation/formats", h.formats),
            web.get("/api/users/self", h.users_self),
            web.get("/api/issues", issues.list),
            web.post("/api/issues", issues.create),
            web.get(r"/api/organizations/{id:\d+}", h.organization_retrieve),
            web.get("/api/tasks", h.tasks_list),
            web.post("/api/tasks", h.task_create),
            web.get(task, h.task_retrieve),
            web.get(f"{task}/status", h.task_status),
            web.get(f"{task}/data/meta", h.task_meta),
            web.patch(f"{task}/data/meta", h.task_meta),
            web.get(f"{task}/data", h.task_data),
            web.get(f"{task}/data/", h.task_data),
            web.post(f"{task}/data", h.task_data_upload),
            web.post(f"{task}/data/", h.task_data_upload),
            web.post(f"{task}/dataset/export", h.dataset_export),
            web.get(f"{task}/dataset/download", h.dataset_download),
            web.route("*", f"{task}/annotations", h.task_annotations),
            web.route("*", f"{task}/annotations/", h.task_annotations),
            web.get("/api/jobs", h.jobs_list),
            web.post("/api/jobs", h.job_create),
            web.get(job, h.job_retrieve),
            web.patch(job, h.job_update),
            web.delete(job, h.job_delete),
            web.get(f"{job}/data/meta", h.job_meta),
            web.get(f"{job}/data", h.job_data),
            web.get(f"{job}/data/", h.job_data),
            web.route("*", f"{job}/annotations", h.job_annotations),
            web.route("*", f"{job}/annotations/", h.job_annotations),
            web.get("/api/labels", h.labels_list),
            web.get(r"/api/labels/{id:\d+}", h.label_retrieve),
            web.get("/api/requests", h.requests_list),
            web.get("/api/requests/{rq_id}", h.request_retrieve),
            web.post(r"/api/webhooks/{id:\d+}/ping", h.webhook_ping),
        ]
    )
    return app


def _middleware(server: CvatStandIn) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        server.request_log.append(
            LoggedRequest(
                request.method,
                request.path,
                CIMultiDictProxy(CIMultiDict(request.headers)),
                dict(request.query),
            )
        )
        target = request.path + (f"?{request.query_string}" if request.query_string else "")
        pause = server.faults.delay_for(request.method, target)
        if pause:
            await asyncio.sleep(pause)
        failure = server.faults.take_failure(request.method, target)
        if failure is not None:
            return _failure_response(failure.status, failure.body)
        if request.path not in _PUBLIC:
            user = _authenticate(server, request)
            if isinstance(user, web.Response):
                return user
            request[USER] = user
        org = request.headers.get("X-Organization", request.query.get("org"))
        if org and org not in server.state.organizations:
            return web.json_response(
                {"detail": f"Organization '{org}' does not exist or you are not a member"},
                status=404,
            )
        user = request.get(USER)
        if org and user is not None and user.privilege != "admin" and org not in user.organizations:
            return web.json_response(
                {"detail": "You do not have permission to perform this action."}, status=403
            )
        request[ORG] = org
        return await handler(request)

    return middleware


def _authenticate(server: CvatStandIn, request: web.Request) -> User | web.Response:
    """The token's user, or the 401 CVAT answers."""
    header = request.headers.get("Authorization", "")
    scheme, _, credential = header.partition(" ")
    credential = credential.strip()
    if not header:
        message = "Authentication credentials were not provided."
    elif scheme.lower() in ("bearer", "token") and credential in server.tokens:
        return server.state.user
    elif scheme.lower() in ("bearer", "token") and credential in server.user_tokens:
        return server.user_tokens[credential]
    else:
        message = "Invalid token."
    return web.json_response({"detail": message}, status=401, headers={"WWW-Authenticate": "Token"})


def _failure_response(status: int, body: str | None) -> web.Response:
    if body is not None:
        return web.Response(status=status, text=body, content_type="text/plain")
    if status >= 500:
        return web.Response(
            status=status, text=f"<h1>Server Error ({status})</h1>", content_type="text/html"
        )
    return web.Response(
        status=status,
        text=json.dumps({"detail": f"Injected failure ({status})"}),
        content_type="application/json",
    )
