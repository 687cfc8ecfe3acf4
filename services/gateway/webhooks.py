"""CVAT webhook deliveries: verify, read, and decide what (if anything) to start.

Transport-free: ``services.gateway.http`` hands the raw body and the signature
header to ``WebhookDesk.handle`` and turns its ``Answer`` into an HTTP reply.

What starts something (docs/cvat.md):

- ``update:job`` whose ``state`` turns ``completed`` or whose ``stage`` turns
  ``acceptance``, in a project whose policy triggers per job: train on that job;
- ``update:task`` whose ``status`` turns ``completed``, in a project whose
  policy triggers per task: train on the task;
- ``update:job`` whose ``state`` turns ``completed`` in a project whose policy
  retrains (``trigger: project``): count, and retrain when due
  (``services.gateway.retrain``: answered accepted, queued or counted);
- ``create:task`` in a watched project with a ready model: pre-annotate it.

Besides, with a CVAT token, a completed job of a watched project whose task
the gateway pre-annotated is measured: what the person corrected
(``services.gateway.corrections``).

A change is read from ``changes`` (``{"field": {"from", "to"}}``, recent
servers) or else from ``before_update`` (``{"field": old}``) with the new value
in the resource; the newest servers send neither, and then the value is
compared with what the previous delivery of that resource said. The job id is a hash of the delivery's identity (webhook,
event, resource, the change's time), so CVAT's retry of a delivery finds the
job the first one made.

Who may start something (docs/security.md): a delivery is verified with the
secret of the project it names (the policy's ``secret``/``secret_env``; the
global ``PREANNOTATE_WEBHOOK_SECRET`` only for unwatched projects, deliveries
naming none, and, when the policy says ``global_secret: true``, watched
projects without their own), so a project's secret signs for that project only.
Before acting, the desk asks CVAT (``GET /api/tasks/{id}``, with the service's
CVAT token, through ``preannotate.cvat``) whether the task is in the project
the delivery claims; if not, it refuses (403) and starts nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import structlog

from preannotate.cvat.client import CvatClient
from preannotate.cvat.settings import CvatConnection, CvatSettings
from preannotate.errors import (
    InvalidArgument,
    PermissionDenied,
    PreannotateError,
    Unauthenticated,
    Unavailable,
)
from services.gateway.corrections import CorrectionsDesk
from services.gateway.jobs import JobFactory
from services.gateway.policy import Policy, ProjectPolicy
from services.gateway.retrain import Retrainer

SIGNATURE_HEADER = "X-Signature-256"
SIGNATURE_PREFIX = "sha256="

#: Lazy: resolved at each call, so it follows ``telemetry.logging.configure``.
log = structlog.get_logger(component="webhooks")


#: ``(task id, organization) -> the task's project id (None: in no project)``, as CVAT says.
TaskProject = Callable[[int, str], Awaitable[int | None]]

NO_SECRET = "webhooks are off: set PREANNOTATE_WEBHOOK_SECRET to the secret of the CVAT webhook"


def verify_signature(
    secret: bytes, body: bytes, header: str | None, missing: str = NO_SECRET
) -> None:
    """Raise ``Unauthenticated`` unless ``header`` is CVAT's signature of ``body``
    (``missing``: the message when there is no secret to check it with)."""
    if not secret:
        raise Unauthenticated(missing)
    if not header:
        raise Unauthenticated(f"the delivery has no {SIGNATURE_HEADER} header")
    expected = SIGNATURE_PREFIX + hmac.new(secret, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode("ascii"), header.strip().encode("utf-8", "replace")):
        raise Unauthenticated(f"the {SIGNATURE_HEADER} signature does not match the body")


def parse_body(body: bytes) -> dict[str, Any]:
    """The delivery as a dict; ``InvalidArgument`` when it is not a JSON object with an event."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"the body is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidArgument(f"the body must be a JSON object, not {type(payload).__name__}")
    event = payload.get("event")
    if not isinstance(event, str) or not event:
        raise InvalidArgument("the delivery has no 'event' (e.g. \"update:job\")")
    return payload


@dataclass(frozen=True)
class Answer:
    """What the delivery did: ``status`` is pong, accepted, duplicate or ignored
    (and, for a retraining project, queued or counted)."""

    status: str
    reason: str = ""
    job_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status}
        if self.job_id:
            out["job_id"] = self.job_id
        if self.reason:
            out["reason"] = self.reason
        out.update(self.extra)
        return out


def _resource(payload: dict[str, Any], name: str) -> dict[str, Any]:
    value = payload.get(name)
    if not isinstance(value, dict):
        raise InvalidArgument(f"a {payload['event']} delivery needs a '{name}' object")
    return value


def _int_field(resource: dict[str, Any], name: str, what: str, required: bool = True) -> int | None:
    value = resource.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(f"{what}.{name} must be a whole number, got {value!r}")
    return value


class LastSeen:
    """The last value of a watched field per CVAT resource, for servers that send no diff.

    The newest CVAT sends update deliveries with neither ``changes`` nor
    ``before_update``; then a field "turns" when it differs from what the last
    delivery of the same resource said (unknown counts as different, so after
    a restart the first delivery showing ``completed`` counts).
    """

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._values: OrderedDict[tuple[str, int, str], Any] = OrderedDict()

    def get(self, kind: str, resource_id: int, name: str) -> tuple[bool, Any]:
        """(known, the value the last handled delivery showed)."""
        key = (kind, resource_id, name)
        return key in self._values, self._values.get(key)

    def put(self, kind: str, resource_id: int, name: str, value: Any) -> None:
        key = (kind, resource_id, name)
        self._values.pop(key, None)
        self._values[key] = value
        while len(self._values) > self.limit:
            self._values.popitem(last=False)


def field_change(
    payload: dict[str, Any], resource: dict[str, Any], name: str
) -> tuple[Any, Any] | None:
    """(old, new) of ``name`` if the delivery's diff says it changed, else None.

    Raises ``LookupError`` when the delivery carries no diff at all.
    """
    changes = payload.get("changes")
    before = payload.get("before_update")
    if isinstance(changes, dict) and changes:
        change = changes.get(name)
        if change is None:
            return None  # the server lists what changed, and this did not
        if not isinstance(change, dict) or "to" not in change:
            raise InvalidArgument(f"changes.{name} must be an object with 'from' and 'to'")
        return change.get("from"), change["to"]
    if isinstance(before, dict) and before:
        return (before[name], resource.get(name)) if name in before else None
    if changes is not None and not isinstance(changes, dict):
        raise InvalidArgument("'changes' must be an object of {field: {from, to}}")
    if before is not None and not isinstance(before, dict):
        raise InvalidArgument("'before_update' must be an object of {field: old value}")
    raise LookupError(name)


def turned(
    payload: dict[str, Any],
    resource: dict[str, Any],
    name: str,
    value: str,
    seen: tuple[bool, Any],
) -> bool:
    """Whether ``name`` turned ``value`` in this delivery (``seen``: ``LastSeen.get``'s answer)."""
    try:
        change = field_change(payload, resource, name)
    except LookupError:
        known, old = seen
        change = (old if known else None, resource.get(name))
    return change is not None and change[0] != value and change[1] == value


def change_time(payload: dict[str, Any], resource: dict[str, Any]) -> str:
    changes = payload.get("changes")
    if isinstance(changes, dict) and isinstance(changes.get("updated_date"), dict):
        return str(changes["updated_date"].get("to") or "")
    return str(resource.get("updated_date") or "")


def delivery_job_id(payload: dict[str, Any], kind: str, resource_id: int, when: str) -> str:
    """A valid job id that is the same for every copy of one delivery."""
    identity = "|".join(
        [str(payload.get("webhook_id", "")), payload["event"], kind, str(resource_id), when]
    )
    return "wh-" + hashlib.sha256(identity.encode("utf-8")).hexdigest()[:24]


def claimed_project(payload: dict[str, Any]) -> int | None:
    """The project a delivery names (its job's, task's or, for ping, webhook's), if any."""
    for name in ("job", "task", "webhook"):
        resource = payload.get(name)
        if isinstance(resource, dict):
            value = resource.get("project_id")
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return None


def cvat_task_project(settings: CvatSettings) -> TaskProject:
    """``TaskProject`` that asks CVAT ``GET /api/tasks/{id}`` with the service's token."""

    async def ask(task_id: int, organization: str) -> int | None:
        config = CvatConnection.from_settings(settings, organization)
        async with CvatClient(config) as client:
            task = await client.request("GET", f"/api/tasks/{task_id}")
        if not isinstance(task, dict):
            raise Unavailable(f"CVAT answered GET /api/tasks/{task_id} with no task")
        project = task.get("project_id")
        return project if isinstance(project, int) else None

    return ask


def task_checker(settings: CvatSettings, policy: Policy) -> TaskProject | None:
    """The ``TaskProject`` the policy needs (None when it confirms nothing); a clear
    error when it must confirm tasks and no CVAT token is configured."""
    if not (policy.confirm_tasks and policy.projects):
        return None
    if not settings.cvat_token.get_secret_value():
        raise InvalidArgument(
            "the webhook policy watches projects, and the gateway confirms with CVAT that each "
            "delivery's task is in its project: set PREANNOTATE_CVAT_URL and "
            "PREANNOTATE_CVAT_TOKEN (a token that can read the watched projects' tasks), or "
            "put confirm_tasks: false in the policy file"
        )
    return cvat_task_project(settings)


def requested_by(payload: dict[str, Any]) -> str:
    sender = payload.get("sender")
    if isinstance(sender, dict) and sender.get("username"):
        return f"cvat:{sender['username']}"
    return "cvat"


class WebhookDesk:
    """Handles one delivery: signature, body, policy, then the job factory."""

    def __init__(
        self,
        *,
        secret: bytes,
        policy: Policy,
        jobs: JobFactory,
        task_project: TaskProject | None = None,
        retrainer: Retrainer | None = None,
        corrections: CorrectionsDesk | None = None,
    ) -> None:
        if policy.confirm_tasks and policy.projects and task_project is None:
            raise ValueError("the policy confirms tasks with CVAT: give task_project")
        if any(p.retrains for p in policy.projects) and retrainer is None:
            raise ValueError("the policy has projects that retrain: give retrainer")
        self.retrainer = retrainer
        self.corrections = corrections
        self.secret = secret
        self.policy = policy
        self.jobs = jobs
        self.task_project = task_project
        self.last_seen = LastSeen()
        #: Field values seen by the delivery being handled (one list per request).
        self._seen: ContextVar[list[tuple[str, int, str, Any]]] = ContextVar("webhook_seen")

    def secret_for(self, project_id: int | None) -> tuple[bytes, str]:
        """(the secret that signs deliveries naming ``project_id``, the message when none)."""
        policy = self.policy.for_project(project_id)
        if policy is not None and policy.secret is not None:
            return policy.secret_bytes(), NO_SECRET
        if policy is not None and not self.policy.global_secret:  # the loader refuses this
            return b"", f"project {project_id} has no webhook secret in the policy"
        return self.secret, NO_SECRET

    async def handle(self, body: bytes, signature: str | None) -> Answer:
        try:
            payload = parse_body(body)
        except InvalidArgument:
            verify_signature(self.secret, body, signature)  # an unsigned stranger hears 401
            raise
        secret, missing = self.secret_for(claimed_project(payload))
        verify_signature(secret, body, signature, missing)
        token = self._seen.set([])
        try:
            answer = await self._dispatch(payload)
            for item in self._seen.get():  # a failed delivery leaves no trace: its retry counts
                self.last_seen.put(*item)
            return answer
        finally:
            self._seen.reset(token)

    async def _dispatch(self, payload: dict[str, Any]) -> Answer:
        event = payload["event"]
        if event == "ping":
            return Answer("pong")
        if event == "update:job":
            return await self._job_update(payload)
        if event == "update:task":
            return await self._task_update(payload)
        if event == "create:task":
            return await self._task_created(payload)
        return self._ignored(event, "the gateway does not act on this event")

    def _ignored(self, event: str, reason: str, **facts: Any) -> Answer:
        log.debug("webhook ignored", webhook_event=event, reason=reason, **facts)
        return Answer("ignored", reason=reason)

    def _turned(self, payload, kind: str, resource, rid: int, name: str, value: str) -> bool:
        """Whether the field turned ``value``; remembered once the delivery is handled."""
        seen = self.last_seen.get(kind, rid, name)
        self._seen.get().append((kind, rid, name, resource.get(name)))
        return turned(payload, resource, name, value, seen)

    async def _confirm(self, policy: ProjectPolicy, task_id: int, event: str) -> None:
        """Refuse (``PermissionDenied``) unless CVAT says ``task_id`` is in the policy's project."""
        if not self.policy.confirm_tasks:
            return
        assert self.task_project is not None
        actual = await self.task_project(task_id, policy.organization)
        if actual != policy.project_id:
            log.warning(
                "webhook refused: the task is not in the project the delivery names",
                webhook_event=event,
                task=task_id,
                claimed_project=policy.project_id,
                cvat_project=actual,
            )
            raise PermissionDenied(
                f"CVAT says task {task_id} is not in project {policy.project_id}; nothing started"
            )

    def _duplicate(self, job_id: str) -> Answer | None:
        if self.jobs.known(job_id) is None:
            return None
        log.info("duplicate webhook delivery; the job exists already", job_id=job_id)
        return Answer("duplicate", job_id=job_id)

    async def _job_update(self, payload: dict[str, Any]) -> Answer:
        event = payload["event"]
        job = _resource(payload, "job")
        cvat_job = _int_field(job, "id", "job")
        task_id = _int_field(job, "task_id", "job")
        project_id = _int_field(job, "project_id", "job", required=False)
        job_id = delivery_job_id(payload, "job", cvat_job, change_time(payload, job))
        completed = self._turned(payload, "job", job, cvat_job, "state", "completed")
        accepted = self._turned(payload, "job", job, cvat_job, "stage", "acceptance")
        known = self._duplicate(job_id)
        if known is not None:
            return known
        if not (completed or accepted):
            return self._ignored(
                event, "the job did not turn completed or acceptance", job=cvat_job
            )
        policy = self.policy.for_project(project_id)
        if policy is None:
            return self._ignored(event, f"project {project_id} is not watched", job=cvat_job)
        if completed and self.corrections is not None:
            await self._confirm(policy, task_id, event)
            await self._measure(policy, job, task_id, cvat_job)
        if policy.retrains:
            return await self._retrain(payload, policy, task_id, cvat_job, completed)
        if policy.trigger != "job":
            return self._ignored(event, f"project {project_id} trains per task, not per job")
        await self._confirm(policy, task_id, event)
        sub = await self.jobs.train_from_policy(
            policy,
            job_id=job_id,
            task_id=task_id,
            cvat_job_id=cvat_job,
            requested_by=requested_by(payload),
        )
        return Answer("accepted" if sub.created else "duplicate", job_id=sub.job_id)

    async def _task_update(self, payload: dict[str, Any]) -> Answer:
        event = payload["event"]
        task = _resource(payload, "task")
        task_id = _int_field(task, "id", "task")
        project_id = _int_field(task, "project_id", "task", required=False)
        job_id = delivery_job_id(payload, "task", task_id, change_time(payload, task))
        completed = self._turned(payload, "task", task, task_id, "status", "completed")
        known = self._duplicate(job_id)
        if known is not None:
            return known
        if not completed:
            return self._ignored(event, "the task did not turn completed", task=task_id)
        policy = self.policy.for_project(project_id)
        if policy is None:
            return self._ignored(event, f"project {project_id} is not watched", task=task_id)
        if policy.trigger != "task":
            return self._ignored(
                event, f"project {project_id} trains per {policy.trigger}, not per task"
            )
        await self._confirm(policy, task_id, event)
        sub = await self.jobs.train_from_policy(
            policy,
            job_id=job_id,
            task_id=task_id,
            cvat_job_id=0,
            requested_by=requested_by(payload),
        )
        return Answer("accepted" if sub.created else "duplicate", job_id=sub.job_id)

    async def _measure(
        self, policy: ProjectPolicy, job: dict[str, Any], task_id: int, cvat_job: int
    ) -> None:
        """The corrections of a completed job; a failure is logged, the delivery goes on."""
        assert self.corrections is not None
        start, stop = job.get("start_frame"), job.get("stop_frame")
        if not (isinstance(start, int) and isinstance(stop, int)):
            log.warning("corrections not measured: the job has no frame range", job=cvat_job)
            return
        try:
            await self.corrections.job_completed(
                policy, task_id=task_id, cvat_job=cvat_job, start=start, stop=stop
            )
        except PreannotateError as exc:
            log.warning("corrections not measured", job=cvat_job, error=str(exc))

    async def _retrain(
        self, payload: dict[str, Any], policy: ProjectPolicy, task_id: int, job: int, done: bool
    ) -> Answer:
        """A completed job of a retraining project: count it, retrain when due."""
        if not done:
            return self._ignored(payload["event"], "the job did not turn completed", job=job)
        await self._confirm(policy, task_id, payload["event"])
        assert self.retrainer is not None
        answer = await self.retrainer.job_completed(
            policy, task_id=task_id, cvat_job_id=job, requested_by=requested_by(payload)
        )
        return Answer(
            answer.outcome,
            reason=answer.reason,
            job_id=answer.job_id,
            extra={"generation": answer.generation},
        )

    async def _task_created(self, payload: dict[str, Any]) -> Answer:
        event = payload["event"]
        task = _resource(payload, "task")
        task_id = _int_field(task, "id", "task")
        project_id = _int_field(task, "project_id", "task", required=False)
        job_id = delivery_job_id(payload, "task", task_id, str(task.get("created_date") or ""))
        known = self._duplicate(job_id)
        if known is not None:
            return known
        policy = self.policy.for_project(project_id)
        if policy is None:
            return self._ignored(event, f"project {project_id} is not watched", task=task_id)
        if not policy.annotate_new_tasks:
            return self._ignored(event, f"project {project_id} does not annotate new tasks")
        await self._confirm(policy, task_id, event)
        model = await self.jobs.newest_ready_model(policy.namespace, policy.model_name)
        if model is None:
            return self._ignored(
                event,
                f"no ready model {policy.namespace}/{policy.model_name} to annotate with yet",
            )
        sub = await self.jobs.annotate_from_policy(
            policy, job_id=job_id, task_id=task_id, model=model
        )
        if sub.created and self.corrections is not None:
            self.corrections.follow_annotation(policy, sub.job_id, task_id, model)
        return Answer(
            "accepted" if sub.created else "duplicate",
            job_id=sub.job_id,
            extra={"model": f"{model.namespace}/{model.name}/{model.version}"},
        )
