"""The webhook policy: which CVAT projects the gateway watches, and what it starts.

A YAML file (``PREANNOTATE_WEBHOOK_POLICY_FILE``)::

    projects:
      - project_id: 3              # the CVAT project
        namespace: team-a          # where jobs and models of this project live
        trigger: task              # "task": train when the task is completed;
                                   # "job": train on each completed (or accepted) job
        model_type: ssd-mobilenet-v2-coco
        arguments: "epochs=4000;batch_size=24"
        machine_type: gpu-1        # optional: the default pool otherwise
        model_name: birds          # the model trained, and the one that annotates
        base_model: ""             # optional: "<name>[/<version>]" of the namespace
        organization: ""           # optional: CVAT organisation slug (X-Organization)
        annotate_new_tasks: true   # create:task -> annotation.requested (newest ready model)
        threshold: 0.5             # optional: score threshold of those annotations

Every entry is checked when the file is loaded (names, the model type and the
arguments against the catalog), so a bad policy stops the gateway at start
with the entry and the key to change.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from preannotate.errors import InvalidArgument
from preannotate.keys import check_name


class ProjectPolicy(BaseModel):
    """What to do for one watched CVAT project."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    project_id: int = Field(gt=0)
    namespace: str
    trigger: Literal["task", "job"] = "task"
    model_type: str
    arguments: str = ""
    machine_type: str = ""
    model_name: str
    base_model: str = ""
    organization: str = ""
    annotate_new_tasks: bool = True
    threshold: float | None = Field(None, ge=0, le=1)

    @field_validator("namespace", "model_name")
    @classmethod
    def _name(cls, value: str, info) -> str:
        try:
            return check_name(value, info.field_name.replace("_", " "))
        except InvalidArgument as exc:
            raise ValueError(str(exc)) from None


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    projects: tuple[ProjectPolicy, ...] = ()

    @field_validator("projects")
    @classmethod
    def _unique(cls, value: tuple[ProjectPolicy, ...]) -> tuple[ProjectPolicy, ...]:
        seen: set[int] = set()
        for p in value:
            if p.project_id in seen:
                raise ValueError(f"project {p.project_id} is listed twice")
            seen.add(p.project_id)
        return value

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
            loc = ".".join(str(p) for p in err["loc"])
            lines.append(f"{loc}: {err['msg']}")
        raise InvalidArgument(f"{where} is not valid:\n  " + "\n  ".join(lines)) from None
    if check_training is not None:
        for i, project in enumerate(policy.projects):
            try:
                check_training(project)
            except InvalidArgument as exc:
                raise InvalidArgument(
                    f"{where}: projects[{i}] (project {project.project_id}): {exc}"
                ) from exc
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
