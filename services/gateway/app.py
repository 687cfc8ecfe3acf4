"""The gateway's parts, built from its settings and wired once the runner is up.

``GatewayApp`` holds what both transports use: the ``JobFactory`` (domain
core) and the ``WebhookDesk``. The policy and the tokens file are read when the
service is built, so a bad file stops the gateway before it connects to anything.
"""

from __future__ import annotations

import functools

import structlog

from preannotate.cvat.scope import check_task
from preannotate.errors import Unavailable
from preannotate.service import Resources
from services.gateway.corrections import CorrectionsDesk, cvat_annotations
from services.gateway.desk import JobDesk, RecentJobs
from services.gateway.jobs import JobFactory
from services.gateway.policy import Policy, ProjectPolicy, load_policy
from services.gateway.retrain import Retrainer, progress_checker
from services.gateway.settings import GatewaySettings
from services.gateway.training import Catalog
from services.gateway.webhooks import WebhookDesk, task_checker

#: Lazy: resolved at each call, so it follows ``telemetry.logging.configure``.
log = structlog.get_logger(component="gateway")


def load_checked_policy(settings: GatewaySettings, catalog: Catalog) -> Policy:
    """The webhook policy, every entry checked against the catalog and the pools."""
    if settings.webhook_policy_file is None:
        return Policy.empty()

    def check(project: ProjectPolicy) -> None:
        catalog.check_request(
            namespace=project.namespace,
            task_id=1,
            model_type=project.model_type,
            arguments=project.arguments,
            base_model=project.base_model,
            machine_type=project.machine_type,
            gpus=0,
            model_name=project.model_name,
        )

    return load_policy(settings.webhook_policy_file, check_training=check)


class GatewayApp:
    def __init__(self, settings: GatewaySettings, catalog: Catalog, policy: Policy) -> None:
        self.settings = settings
        self.catalog = catalog
        self.policy = policy
        self._jobs: JobFactory | None = None
        self._webhooks: WebhookDesk | None = None
        self._retrainer: Retrainer | None = None
        self._corrections: CorrectionsDesk | None = None

    @property
    def jobs(self) -> JobFactory:
        if self._jobs is None:
            raise Unavailable("the gateway is starting; try again in a moment")
        return self._jobs

    @property
    def webhooks(self) -> WebhookDesk:
        if self._webhooks is None:
            raise Unavailable("the gateway is starting; try again in a moment")
        return self._webhooks

    async def startup(self, resources: Resources) -> None:
        if resources.status_view is None or resources.status_writer is None:
            raise RuntimeError("the gateway needs the runner's job.status view and writer")
        s = self.settings
        desk = JobDesk(
            bus=resources.bus,
            status_view=resources.status_view,
            status_writer=resources.status_writer,
            recent=RecentJobs(s.webhook_dedup_seconds, s.webhook_dedup_max),
            storage=resources.storage,
        )
        self._jobs = JobFactory(
            desk=desk,
            storage=resources.storage,
            catalog=self.catalog,
            annotation_threshold=s.webhook_annotation_threshold,
            task_scope=functools.partial(check_task, settings=s),
        )
        progress = progress_checker(s, self.policy)
        if progress is not None:
            self._retrainer = Retrainer(
                storage=resources.storage, jobs=self._jobs, progress=progress
            )
        if s.cvat_token.get_secret_value() and any(
            p.annotate_new_tasks for p in self.policy.projects
        ):  # measure what people correct in the tasks the gateway pre-annotates
            self._corrections = CorrectionsDesk(
                storage=resources.storage, jobs=self._jobs, read=cvat_annotations(s)
            )
        self._webhooks = WebhookDesk(
            secret=s.webhook_secret.get_secret_value().encode("utf-8"),
            policy=self.policy,
            jobs=self._jobs,
            task_project=task_checker(s, self.policy),
            retrainer=self._retrainer,
            corrections=self._corrections,
        )
        if self._retrainer is not None:  # what waited or ran before this start
            await self._retrainer.resume(self.policy)
        if not s.webhook_secret.get_secret_value():
            log.warning(
                "CVAT webhooks are refused: no secret (set PREANNOTATE_WEBHOOK_SECRET to the "
                "webhook's secret in CVAT)"
            )
        log.info(
            "gateway ready",
            watched_projects=[p.project_id for p in self.policy.projects],
            tls=s.tls() is not None,
        )

    async def shutdown(self) -> None:
        if self._retrainer is not None:
            await self._retrainer.close()
        if self._corrections is not None:
            await self._corrections.close()
