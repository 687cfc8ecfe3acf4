"""``CvatStandIn``: the test-facing handle on the CVAT stand-in HTTP server.

Start it, fill it with tasks (``add_task``: data ready; ``create_task`` then
``upload_data``: CVAT's order, the data processed in the background), point a
client (cvat-sdk or plain HTTP) at ``server.url``, and inspect what the client
did. It also plays CVAT's side of webhooks: task creation and job state
changes are delivered, signed, to the registered targets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from functools import partial
from typing import Any

from aiohttp import web

from . import creation, resources
from . import labeled_data as annotations_
from .app import LoggedRequest, build_app
from .export import ExportRequest, Exports
from .faults import Faults
from .model import JOB_STAGES, JOB_STATES, Job, State, Task, User, now
from .webhooks import DEFAULT_RETRY_INTERVALS, Delivery, Sender, Webhook

#: Diff keys an update delivery carries: ``before_update`` (field -> old
#: value, older servers) and ``changes`` (field -> {"from", "to"}).
DIFF_KEYS = ("before_update", "changes")


class _ServerOrganization:
    def __repr__(self) -> str:
        return "<the stand-in's organization>"


#: ``add_task(organization=...)`` default: the organization given to the server.
SERVER_ORGANIZATION: Any = _ServerOrganization()


class CvatStandIn:
    """A CVAT REST server on 127.0.0.1 with a free port, shaped on CVAT 2.80.

    ``tokens``: the personal access tokens (``Authorization: Bearer <t>``) and
    legacy keys (``Authorization: Token <t>``) it accepts; anything else is 401.
    ``organization``: the slug new tasks belong to unless ``add_task`` names
    another (None: the personal workspace). ``webhook_diff``: which of
    ``before_update`` / ``changes`` update deliveries carry (the newest CVAT
    code sends neither; pass ``()`` to test that). ``webhook_retry_intervals``:
    seconds before each retry of a 5xx/408/429/unanswered delivery (CVAT waits
    minutes). ``webhook_timeout``: seconds a target may take to answer (CVAT: 10).
    """

    def __init__(
        self,
        tokens: Iterable[str] = ("secret-token",),
        organization: str | None = None,
        *,
        webhook_diff: Iterable[str] = DIFF_KEYS,
        webhook_retry_intervals: Iterable[float] = DEFAULT_RETRY_INTERVALS,
        webhook_timeout: float = 10.0,
    ) -> None:
        self.tokens = frozenset(tokens)
        if isinstance(tokens, str) or not self.tokens:
            raise ValueError("tokens must be a collection of one or more token strings")
        self.organization = organization
        self.webhook_diff = tuple(webhook_diff)
        unknown = set(self.webhook_diff) - set(DIFF_KEYS)
        if unknown:
            raise ValueError(f"webhook_diff keys must be among {DIFF_KEYS}, got {sorted(unknown)}")
        self.state = State()
        if organization is not None:
            self.state.organization_id(organization)
        self.faults = Faults()
        self.exports = Exports()
        self.creations = creation.Creations()
        #: Tokens of the users ``add_user`` made (the ``tokens`` are the admin's).
        self.user_tokens: dict[str, User] = {}
        self.webhooks: dict[int, Webhook] = {}
        self.request_log: list[LoggedRequest] = []
        #: Issues as ``POST /api/issues`` made them (``issues.IssueHandlers``).
        self.issues: list[dict[str, Any]] = []
        self._sender = Sender(retry_intervals=tuple(webhook_retry_intervals))
        self._sender.timeout = webhook_timeout
        self._backlog: list[tuple[Webhook, dict[str, Any]]] = []
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.url = "http://127.0.0.1"

    # --- lifecycle ----------------------------------------------------------------

    async def start(self) -> str:
        """Serve on a free port; returns the base URL (also ``self.url``)."""
        if self._runner is not None:
            raise RuntimeError("the CVAT stand-in is already started")
        runner = web.AppRunner(build_app(self), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        self._loop = asyncio.get_running_loop()
        host, port = runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        await self._sender.open()
        backlog, self._backlog = self._backlog, []
        for webhook, payload in backlog:
            self._sender.schedule(webhook, payload)
        return self.url

    async def stop(self) -> None:
        await self.exports.close()
        await self.creations.close()
        await self._sender.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._loop = None

    async def __aenter__(self) -> CvatStandIn:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # --- content ------------------------------------------------------------------

    def create_task(
        self,
        name: str,
        labels: list[dict[str, Any]],
        project_id: int | None = None,
        segment_size: int | None = None,
        organization: str | None = SERVER_ORGANIZATION,
        *,
        subset: str = "",
        owner: str | None = None,
    ) -> int:
        """Create a task row as ``POST /api/tasks`` does (labels, no data, no jobs)
        and fire ``create:task`` now, as CVAT does; returns its id. Its data comes
        later with ``upload_data`` (or ``POST /api/tasks/{id}/data``)."""
        task = self._new_task(name, labels, project_id, segment_size, organization, subset, owner)
        self._fire("create:task", "task", self.task(task.id), task.project_id, task.organization)
        return task.id

    def upload_data(
        self,
        task_id: int,
        images: list[tuple[str, bytes]],
        *,
        chunk_size: int = 72,
        image_quality: int = 70,
        deleted_frames: Iterable[int] = (),
    ) -> str:
        """Attach data as ``POST /api/tasks/{id}/data`` does; returns the request id.

        The frames and jobs appear once the data is processed, after
        ``data_seconds`` (queued, then started), unless ``fail_data`` was called.
        ``deleted_frames``: frames then marked deleted (PATCH data/meta).
        """
        task = self._task(task_id)
        frames = self.state.check_images(images)
        deleted = set(deleted_frames)
        self.state.start_data(task, chunk_size=chunk_size, image_quality=image_quality)
        user = task.owner
        org_id = self.state.organizations[task.organization] if task.organization else None
        request = creation.CreateRequest(
            creation.request_id(task.id), task.id, task.project_id, org_id, (user.id, user.username)
        )
        start = partial(self.creations.start, request, partial(self.state.attach_data, task,
                                                                  frames, deleted))  # fmt: skip
        if self._loop is None:
            raise RuntimeError("start the CVAT stand-in before uploading data")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            start()
        else:  # called from a worker thread
            self.creations.requests[request.id] = request
            self._loop.call_soon_threadsafe(start)
        return request.id

    async def wait_for_data(self, task_id: int, timeout: float = 10.0) -> dict[str, Any]:
        """Wait until the task's data request has ended; the request as /api/requests shows it."""
        request = await self.creations.wait(task_id, timeout)
        return request.as_dict(self.url)

    @property
    def data_seconds(self) -> float:
        """Seconds a task's uploaded data spends queued and again started (default 0.05)."""
        return self.creations.step_seconds

    @data_seconds.setter
    def data_seconds(self, value: float) -> None:
        if value < 0:
            raise ValueError(f"data_seconds must not be negative, got {value}")
        self.creations.step_seconds = value

    def fail_data(self, task_id: int, message: str) -> None:
        """Processing the task's data (uploaded before or after this) fails with ``message``."""
        self._task(task_id)
        self.creations.failures[task_id] = message

    def add_task(
        self,
        name: str,
        labels: list[dict[str, Any]],
        images: list[tuple[str, bytes]],
        shapes: list[dict[str, Any]] | None = None,
        project_id: int | None = None,
        segment_size: int | None = None,
        organization: str | None = SERVER_ORGANIZATION,
        *,
        chunk_size: int = 72,
        image_quality: int = 70,
        subset: str = "",
        deleted_frames: Iterable[int] = (),
        owner: str | None = None,
    ) -> int:
        """A task whose data is in already (as a user sees an older task); returns its id.

        ``labels``: [{"name", "type" (any, rectangle, polygon, mask, ...),
        "attributes": [{"name", "input_type", "values", "default_value",
        "mutable"}]}]. ``images``: [(name, bytes)] in frame order.
        ``shapes``: [{"frame", "label" (name) or "label_id", "type", "points",
        optional occluded, z_order, rotation, source, score, attributes
        {name: value}}], stored in the job holding the frame.
        ``segment_size``: frames per job (None: one job). Fires ``create:task``
        with the task as CVAT sent it at creation (no data, no jobs), but its
        data is ready at once: for CVAT's real order use ``create_task`` and
        ``upload_data``.
        """
        frames = self.state.check_images(images)
        task = self._new_task(name, labels, project_id, segment_size, organization, subset, owner)
        try:
            created = self.task(task.id)
            self.state.start_data(task, chunk_size=chunk_size, image_quality=image_quality)
            self.state.attach_data(task, frames, set(deleted_frames))
            if shapes:
                self._seed_shapes(task.id, shapes)
        except Exception:
            self._forget_task(task.id)
            raise
        self._fire("create:task", "task", created, task.project_id, task.organization)
        return task.id

    def _new_task(
        self,
        name: str,
        labels: list[dict[str, Any]],
        project_id: int | None,
        segment_size: int | None,
        organization: str | None,
        subset: str,
        owner: str | None,
    ) -> Task:
        org = self.organization if organization is SERVER_ORGANIZATION else organization
        return self.state.create_task(
            name,
            labels,
            project_id=project_id,
            segment_size=segment_size,
            organization=org,
            subset=subset,
            owner=self._user(owner) if owner is not None else None,
        )

    def add_gt_job(
        self,
        task_id: int,
        frames: Iterable[int],
        shapes: list[dict[str, Any]] | None = None,
        *,
        state: str | None = None,
        stage: str | None = None,
    ) -> dict[str, Any]:
        """The task's Ground Truth job over ``frames``, as ``POST /api/jobs`` with
        ``type: ground_truth`` and manual frames makes it (one per task; ValueError
        with CVAT's message otherwise); returns the job. ``shapes`` as for
        ``add_task``, on those frames; ``state``/``stage`` set afterwards (no
        webhook fires for a job made this way)."""
        task = self._task(task_id)
        job = self.state.add_gt_job(task, list(frames))
        try:
            if shapes:
                self._seed_shapes(task.id, shapes, [job])
        except Exception:
            self.remove_gt_job(job.id)
            raise
        job.state, job.stage = state or job.state, stage or job.stage
        return self.job(job.id)

    def remove_gt_job(self, job_id: int) -> None:
        """Delete a Ground Truth job and its annotations (``DELETE /api/jobs/{id}``)."""
        job = self.state.jobs[job_id]
        task = self.state.tasks[job.task_id]
        if task.gt_job is not job:
            raise ValueError("Only ground truth jobs can be removed")
        task.gt_job = None
        del self.state.jobs[job_id]
        self.state.annotations.pop(job_id, None)

    def gt_job(self, task_id: int) -> dict[str, Any] | None:
        """The task's Ground Truth job as ``GET /api/jobs/<id>`` answers it, or None."""
        job = self._task(task_id).gt_job
        return self.job(job.id) if job else None

    # --- users --------------------------------------------------------------------

    def add_user(
        self,
        username: str,
        token: str,
        *,
        privilege: str = "user",
        organizations: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """A user who authenticates with ``token`` (Bearer or Token). ``privilege``
        "user" (CVAT's default) or "admin"; ``organizations``: slug -> role (owner,
        maintainer, supervisor, worker). What it may see and change: ``access``."""
        if token in self.tokens or token in self.user_tokens:
            raise ValueError("that token belongs to another user already")
        user = self.state.add_user(username, privilege, organizations or {})
        self.user_tokens[token] = user
        return resources.basic_user(self.url, user)

    def assign(self, username: str | None, *, task_id: int = 0, job_id: int = 0) -> None:
        """Make ``username`` (None: nobody) the assignee of a task or of a job."""
        user = self._user(username) if username is not None else None
        if bool(task_id) == bool(job_id):
            raise ValueError("name exactly one of task_id and job_id")
        if task_id:
            self._task(task_id).assignee = user
        else:
            if job_id not in self.state.jobs:
                raise KeyError(f"no job {job_id}; jobs are {sorted(self.state.jobs)}")
            self.state.jobs[job_id].assignee = user

    def _user(self, username: str) -> User:
        if username not in self.state.users:
            raise KeyError(f"no user {username!r}; users are {sorted(self.state.users)}")
        return self.state.users[username]

    def _seed_shapes(
        self, task_id: int, shapes: list[dict[str, Any]], jobs: list[Job] | None = None
    ) -> None:
        task = self.state.tasks[task_id]
        body = []
        for i, raw in enumerate(shapes):
            shape = dict(raw)
            if "label" in shape:
                label = task.label_named(shape.pop("label"))
                if label is None:
                    names = ", ".join(lb.name for lb in task.labels)
                    raise ValueError(
                        f"shape #{i} names label {raw['label']!r}; the task has {names}"
                    )
                shape["label_id"] = label.id
                attributes = shape.get("attributes", {})
                if isinstance(attributes, dict):
                    specs = {a["name"]: a["id"] for a in label.attributes}
                    unknown = set(attributes) - set(specs)
                    if unknown:
                        raise ValueError(f"shape #{i}: label {label.name!r} has no attributes "
                                         f"{sorted(unknown)}")  # fmt: skip
                    shape["attributes"] = [
                        {"spec_id": specs[k], "value": str(v)} for k, v in attributes.items()
                    ]
            body.append(shape)
        try:
            annotations_.apply(self.state, task, jobs or task.jobs, {"shapes": body}, "create")
        except annotations_.AnnotationError as exc:
            raise ValueError(f"shapes refused: {exc.detail}") from None

    def _forget_task(self, task_id: int) -> None:
        task = self.state.tasks.pop(task_id)
        self.creations.requests.pop(creation.request_id(task_id), None)
        for job in task.all_jobs:
            self.state.jobs.pop(job.id, None)
            self.state.annotations.pop(job.id, None)

    # --- inspection ---------------------------------------------------------------

    def task(self, task_id: int) -> dict[str, Any]:
        """The task as GET /api/tasks/<id> answers it."""
        return resources.task(self.url, self.state, self._task(task_id))

    def jobs(self, task_id: int) -> list[dict[str, Any]]:
        """The task's jobs as GET /api/jobs/<id> answers them, in frame order."""
        return [resources.job(self.url, self.state, j) for j in self._task(task_id).jobs]

    def job(self, job_id: int) -> dict[str, Any]:
        if job_id not in self.state.jobs:
            raise KeyError(f"no job {job_id}; jobs are {sorted(self.state.jobs)}")
        return resources.job(self.url, self.state, self.state.jobs[job_id])

    def labels(self, task_id: int) -> list[dict[str, Any]]:
        return [resources.label(lb) for lb in self._task(task_id).labels]

    def annotations(self, task_id: int) -> list[dict[str, Any]]:
        """The task's shapes as CVAT stores them (id, frame, label_id, type, points, ...)."""
        return annotations_.task_data(self.state, self._task(task_id))["shapes"]

    def task_annotations(self, task_id: int) -> dict[str, Any]:
        """The task's full annotations: {"version", "tags", "shapes", "tracks"}."""
        return annotations_.task_data(self.state, self._task(task_id))

    def _task(self, task_id: int) -> Any:
        if task_id not in self.state.tasks:
            raise KeyError(f"no task {task_id}; tasks are {sorted(self.state.tasks)}")
        return self.state.tasks[task_id]

    # --- failure injection --------------------------------------------------------

    def fail(
        self,
        method: str,
        path_regex: str,
        status: int = 500,
        times: int = 3,
        body: str | None = None,
    ) -> None:
        """Answer ``status`` to the next ``times`` requests whose method matches
        (``"*"``: any) and whose path (with query) matches ``path_regex``."""
        self.faults.add_failure(method, path_regex, status, times, body)

    def delay(self, path_regex: str, seconds: float, method: str = "*") -> None:
        """Hold every matching request ``seconds`` before answering."""
        self.faults.add_delay(path_regex, seconds, method)

    def set_video(self, task_id: int) -> None:
        """Make the task's data a video, as CVAT shows one: task and job ``mode``
        "interpolation", chunk types "video", one entry in data/meta ``frames``."""
        self._task(task_id).video = True

    def break_frame(self, task_id: int, frame: int) -> None:
        """Serve that frame (alone, in chunks and in exports) as undecodable bytes."""
        frames = self._task(task_id).frames
        if not 0 <= frame < len(frames):
            raise IndexError(f"task {task_id} has frames 0-{len(frames) - 1}, not {frame}")
        frames[frame].broken = True

    def fail_export(self, task_id: int, message: str) -> None:
        """The next export of the task ends ``failed`` with ``message``."""
        self._task(task_id)
        self.exports.failures[task_id] = message

    def clear_faults(self) -> None:
        self.faults.clear()
        self.exports.failures.clear()

    @property
    def export_seconds(self) -> float:
        """Seconds an export spends queued and again started (default 0.05)."""
        return self.exports.step_seconds

    @export_seconds.setter
    def export_seconds(self, value: float) -> None:
        self.exports.step_seconds = value

    # --- job state and webhooks ---------------------------------------------------

    def set_job_state(
        self, job_id: int, state: str | None = None, stage: str | None = None
    ) -> dict[str, Any]:
        """Change a job's state and/or stage as a CVAT user would; returns the job.

        Fires ``update:job`` and, when the task's status flips (all jobs
        completed, or one reopened), ``update:task``.
        """
        if state is not None and state not in JOB_STATES:
            raise ValueError(f"state must be one of {JOB_STATES}, got {state!r}")
        if stage is not None and stage not in JOB_STAGES:
            raise ValueError(f"stage must be one of {JOB_STAGES}, got {stage!r}")
        if job_id not in self.state.jobs:
            raise KeyError(f"no job {job_id}; jobs are {sorted(self.state.jobs)}")
        job = self.state.jobs[job_id]
        task = self.state.tasks[job.task_id]
        job_before, task_before = self.job(job_id), self.task(task.id)
        job.state = state or job.state
        job.stage = stage or job.stage
        job_after = self.job(job_id)
        if job_after == job_before:
            return job_after
        moment = now()
        job.updated = task.updated = moment
        job_after = self.job(job_id)
        self._fire_update("job", job_before, job_after, task.project_id, task.organization)
        task_after = self.task(task.id)
        if task_after["status"] != task_before["status"]:
            self._fire_update("task", task_before, task_after, task.project_id, task.organization)
        return job_after

    def add_webhook(
        self,
        target_url: str,
        secret: str,
        events: Iterable[str] = ("update:job", "update:task", "create:task"),
        project_id: int | None = None,
        organization: str | None = None,
    ) -> int:
        """Register a webhook; returns its id. With neither ``project_id`` nor
        ``organization`` it hears every task (a stand-in convenience)."""
        events = tuple(events)
        if isinstance(events, str) or not events:
            raise ValueError("events must list one or more event names")
        webhook = Webhook(len(self.webhooks) + 1, target_url, secret, events, project_id,
                          organization)  # fmt: skip
        self.webhooks[webhook.id] = webhook
        return webhook.id

    @property
    def webhook_deliveries(self) -> list[Delivery]:
        """Every delivery attempt so far, in order."""
        return self._sender.deliveries

    async def deliver(
        self,
        webhook_id: int,
        event: str,
        payload: dict[str, Any],
        *,
        body: bytes | None = None,
        signature: str | None = None,
    ) -> tuple[int, str]:
        """Deliver once, now: ``{"event", **payload, "webhook_id"}`` (plus ``sender``
        unless given). ``body`` replaces the JSON sent (e.g. malformed bytes);
        ``signature`` replaces the X-Signature-256 value. Returns (status, body)."""
        webhook = self._webhook(webhook_id)
        full = {"event": event, **payload, "webhook_id": webhook_id}
        full.setdefault("sender", resources.basic_user(self.url, self.state.user))
        delivery = await self._sender.send(webhook, full, body=body, signature_value=signature)
        return delivery.status, delivery.response

    async def redeliver(self, delivery: Delivery) -> tuple[int, str]:
        """Send an earlier delivery's payload again, as CVAT's "redeliver" does."""
        webhook = self._webhook(delivery.webhook_id)
        again = await self._sender.send(webhook, delivery.payload, redelivery=True)
        return again.status, again.response

    async def ping(self, webhook_id: int) -> tuple[int, str]:
        """Send CVAT's ``ping`` event to a webhook."""
        webhook = self._webhook(webhook_id)
        payload = {
            "event": "ping",
            "webhook": {
                "id": webhook.id,
                "url": f"{self.url}/api/webhooks/{webhook.id}",
                "target_url": webhook.target_url,
                "description": "",
                "type": "project" if webhook.project_id is not None else "organization",
                "content_type": "application/json",
                "is_active": webhook.is_active,
                "enable_ssl": True,
                "events": list(webhook.events),
                "project_id": webhook.project_id,
                "organization": None,
                "owner": resources.basic_user(self.url, self.state.user),
            },
            "sender": resources.basic_user(self.url, self.state.user),
        }
        delivery = await self._sender.send(webhook, payload)
        return delivery.status, delivery.response

    async def wait_for_webhooks(self, timeout: float = 10.0) -> list[Delivery]:
        """Wait until every automatic delivery (and its retries) has ended."""
        await asyncio.sleep(0)  # let deliveries handed over from other threads queue up
        await self._sender.drain(timeout)
        return self.webhook_deliveries

    def export_done(self, request: ExportRequest) -> None:
        task = self.state.tasks.get(request.task_id)
        event = f"completed:request[export:{request.subresource}]"
        payload = {"event": event, "request": request.as_dict(self.url)}
        for webhook in self.webhooks.values():
            if task is not None and webhook.wants(event, task.project_id, task.organization):
                self._schedule(webhook, {**payload, "webhook_id": webhook.id})

    def _webhook(self, webhook_id: int) -> Webhook:
        if webhook_id not in self.webhooks:
            raise KeyError(f"no webhook {webhook_id}; webhooks are {sorted(self.webhooks)}")
        return self.webhooks[webhook_id]

    def _fire_update(
        self,
        resource: str,
        before: dict[str, Any],
        after: dict[str, Any],
        project_id: int | None,
        organization: str | None,
    ) -> None:
        changed = [k for k in after if before.get(k) != after[k]]
        extra: dict[str, Any] = {}
        if "before_update" in self.webhook_diff:
            extra["before_update"] = {k: before.get(k) for k in changed}
        if "changes" in self.webhook_diff:
            extra["changes"] = {k: {"from": before.get(k), "to": after[k]} for k in changed}
        self._fire(f"update:{resource}", resource, after, project_id, organization, extra)

    def _fire(
        self,
        event: str,
        resource: str,
        body: dict[str, Any],
        project_id: int | None,
        organization: str | None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        sender = resources.basic_user(self.url, self.state.user)
        for webhook in self.webhooks.values():
            if webhook.wants(event, project_id, organization):
                payload = {
                    "event": event,
                    resource: body,
                    **(extra or {}),
                    "webhook_id": webhook.id,
                    "sender": sender,
                }
                self._schedule(webhook, payload)

    def _schedule(self, webhook: Webhook, payload: dict[str, Any]) -> None:
        if self._runner is None or self._loop is None:
            self._backlog.append((webhook, payload))
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._sender.schedule(webhook, payload)
        else:  # called from a worker thread (e.g. next to a synchronous client)
            self._loop.call_soon_threadsafe(self._sender.schedule, webhook, payload)
