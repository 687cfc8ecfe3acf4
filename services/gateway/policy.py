"""The webhook policy: which CVAT projects the gateway watches, and what it starts.

A YAML file (``PREANNOTATE_WEBHOOK_POLICY_FILE``)::

    global_secret: false           # whether PREANNOTATE_WEBHOOK_SECRET signs the
                                   # deliveries of projects without a secret of their own
    confirm_tasks: true            # ask CVAT (GET /api/tasks/{id}) that a delivery's
                                   # task is in the project it claims, before acting
    projects:
      - project_id: 3              # the CVAT project
        secret_env: PROJECT3_WEBHOOK_SECRET   # the secret of this project's CVAT
                                   # webhook, from this variable (or ``secret: ...``)
        namespace: team-a          # where jobs and models of this project live
        trigger: task              # "task": train when the task is completed;
                                   # "job": train on each completed (or accepted) job;
                                   # "project": retrain as the project is annotated
                                   # (the default when retrain_after_* is given)
        retrain_after_jobs: 5      # trigger project: retrain after every 5 completed
                                   # CVAT jobs of the project (services/gateway/retrain.py)
        retrain_after_frames: 200  # ... or after every 200 frames of completed jobs
                                   # (give one of the two)
        model_type: ssd-mobilenet-v2-coco
        arguments: "epochs=4000;batch_size=24"
        machine_type: gpu-1        # optional: the default pool otherwise
        model_name: birds          # the model trained, and the one that annotates
        base_model: ""             # optional: "<name>[/<version>]" of the namespace
        organization: ""           # optional: CVAT organisation slug (X-Organization)
        annotate_new_tasks: true   # create:task -> annotation.requested (newest ready model)
        threshold: 0.5             # optional: score threshold of those annotations
        label_thresholds: {cat: 0.7}   # optional: labels' own thresholds
        review_issues: 3           # optional: CVAT issues on each job's most doubtful frames

Every entry is checked when the file is loaded (names, the model type and the
arguments against the catalog, a secret for each project or ``global_secret:
true``, the variable ``secret_env`` names being set), so a bad policy stops the
gateway at start with the entry and the key to change.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from preannotate.errors import InvalidArgument
from preannotate.keys import check_name


class ProjectPolicy(BaseModel):
    """What to do for one watched CVAT project."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    project_id: int = Field(gt=0)
    namespace: str
    trigger: Literal["task", "job", "project"] = "task"
    #: trigger "project": retrain after every N completed CVAT jobs of the project ...
    retrain_after_jobs: int | None = Field(None, ge=1)
    #: ... or after every N frames in completed jobs (one of the two).
    retrain_after_frames: int | None = Field(None, ge=1)
    model_type: str
    arguments: str = ""
    machine_type: str = ""
    model_name: str
    base_model: str = ""
    organization: str = ""
    annotate_new_tasks: bool = True
    threshold: float | None = Field(None, ge=0, le=1)
    #: Labels' own thresholds for the new tasks' pre-annotation (names: the model's labels).
    label_thresholds: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(default_factory=dict)
    #: CVAT issues opened on each job's most doubtful frames of a new task; 0: none.
    review_issues: int = Field(0, ge=0, le=100)
    #: The secret of this project's CVAT webhook (``secret_env``: read from that variable).
    secret: SecretStr | None = None
    secret_env: str = ""

    @model_validator(mode="before")
    @classmethod
    def _project_trigger(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "trigger" in data:
            return data
        if (
            data.get("retrain_after_jobs") is not None
            or data.get("retrain_after_frames") is not None
        ):
            return {**data, "trigger": "project"}
        return data

    @model_validator(mode="after")
    def _retrain_rule(self) -> ProjectPolicy:
        given = [
            name
            for name in ("retrain_after_jobs", "retrain_after_frames")
            if getattr(self, name) is not None
        ]
        if self.trigger == "project" and len(given) != 1:
            raise ValueError(
                "trigger: project retrains after every N completed jobs or N annotated frames: "
                "give exactly one of retrain_after_jobs and retrain_after_frames"
                + (" (both are given)" if given else "")
            )
        if self.trigger != "project" and given:
            raise ValueError(
                f"{given[0]} needs trigger: project (the default when it is given); "
                f"remove trigger: {self.trigger} or {given[0]}"
            )
        return self

    @property
    def retrains(self) -> bool:
        """Whether the project retrains as it is annotated (trigger: project)."""
        return self.trigger == "project"

    @model_validator(mode="before")
    @classmethod
    def _secret_from_env(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("secret_env"):
            return data
        if data.get("secret"):
            raise ValueError("give either secret or secret_env, not both")
        name = str(data["secret_env"])
        value = os.environ.get(name, "")
        if not value:
            raise ValueError(f"secret_env names {name}, which is not set (or empty)")
        return {**data, "secret": value}

    @field_validator("secret")
    @classmethod
    def _non_empty(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            raise ValueError("secret is empty: give the webhook's secret, or leave the key out")
        return value

    def secret_bytes(self) -> bytes:
        return b"" if self.secret is None else self.secret.get_secret_value().encode("utf-8")

    @field_validator("namespace", "model_name")
    @classmethod
    def _name(cls, value: str, info) -> str:
        try:
            return check_name(value, info.field_name.replace("_", " "))
        except InvalidArgument as exc:
            raise ValueError(str(exc)) from None


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Whether PREANNOTATE_WEBHOOK_SECRET signs deliveries of watched projects
    #: that have no secret of their own (false: each needs ``secret``/``secret_env``).
    global_secret: bool = False
    #: Whether the gateway asks CVAT that a delivery's task is in its project first.
    confirm_tasks: bool = True
    projects: tuple[ProjectPolicy, ...] = ()

    @field_validator("projects")
    @classmethod
    def _unique(cls, value: tuple[ProjectPolicy, ...]) -> tuple[ProjectPolicy, ...]:
        seen: set[int] = set()
        for p in value:
            if p.project_id in seen:
                raise ValueError(f"project {p.project_id} is listed twice")
            seen.add(p.project_id)
        models: dict[tuple[str, str], int] = {}
        for p in value:
            if not p.retrains:
                continue
            other = models.setdefault((p.namespace, p.model_name), p.project_id)
            if other != p.project_id:
                raise ValueError(
                    f"projects {other} and {p.project_id} both retrain model "
                    f"{p.namespace}/{p.model_name}: give each retraining project its own "
                    "model_name (a model's retrains are counted per project)"
                )
        return value

    def check_secrets(self, where: str = "policy") -> None:
        """``InvalidArgument`` unless every project has a secret or ``global_secret`` is on."""
        if self.global_secret:
            return
        bare = [p.project_id for p in self.projects if p.secret is None]
        if bare:
            raise InvalidArgument(
                f"{where}: project {', '.join(map(str, bare))} has no webhook secret; give "
                "each project its own (secret_env: VARIABLE, or secret: ...), or set "
                "global_secret: true to let PREANNOTATE_WEBHOOK_SECRET sign them"
            )

    def for_project(self, project_id: int | None) -> ProjectPolicy | None:
        if project_id is None:
            return None
        for p in self.projects:
            if p.project_id == project_id:
                return p
        return None

    @classmethod
    def empty(cls) -> Policy:
        return cls()


def parse_policy(
    data: object,
    where: str = "policy",
    check_training: Callable[[ProjectPolicy], None] | None = None,
) -> Policy:
    """Build and check a policy; ``check_training`` validates each entry's training part."""
    if data is None:
        data = {}
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "policy"
            lines.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
        raise InvalidArgument(f"{where} is not valid:\n  " + "\n  ".join(lines)) from None
    if check_training is not None:
        for i, project in enumerate(policy.projects):
            try:
                check_training(project)
            except InvalidArgument as exc:
                raise InvalidArgument(
                    f"{where}: projects[{i}] (project {project.project_id}): {exc}"
                ) from exc
    policy.check_secrets(where)
    return policy


def load_policy(
    path: str | Path, check_training: Callable[[ProjectPolicy], None] | None = None
) -> Policy:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidArgument(f"policy file {str(path)!r} cannot be read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"policy file {str(path)!r} is not YAML: {exc}") from exc
    return parse_policy(data, where=f"policy file {str(path)!r}", check_training=check_training)
