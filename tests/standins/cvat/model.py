"""The stand-in's state: users, organisations, tasks, jobs, labels, frames, stored shapes.

Plain dataclasses plus ``State``, which owns the id counters and builds tasks
in CVAT's two steps: ``create_task`` makes the row (labels with ids, no data,
no jobs), ``attach_data`` puts the frames in and cuts one job per segment of
``segment_size`` frames. How these objects look on the wire lives in
``resources``.
"""

from __future__ import annotations

import io
import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from PIL import Image

#: Label types CVAT accepts for a task label.
LABEL_TYPES = (
    "any", "rectangle", "polygon", "polyline", "points", "ellipse", "cuboid", "mask", "skeleton",
    "tag",
)  # fmt: skip

#: Attribute input types CVAT accepts.
INPUT_TYPES = ("checkbox", "radio", "number", "text", "select")

#: Job stages and states, as CVAT names them.
JOB_STAGES = ("annotation", "validation", "acceptance")
JOB_STATES = ("new", "in progress", "completed", "rejected")

#: Job types (``JobType`` in cvat/apps/engine/models.py; "replica" is not modelled)
#: and the frame selection methods of a Ground Truth job (``JobFrameSelectionMethod``).
JOB_TYPES = ("annotation", "ground_truth", "replica")
FRAME_SELECTION_METHODS = ("random_uniform", "random_per_job", "manual")

#: CVAT's global privileges a stand-in user can have, and organisation roles.
PRIVILEGES = ("admin", "user")
ORG_ROLES = ("owner", "maintainer", "supervisor", "worker")

#: Label colours handed out in order, as CVAT's UI palette does.
_COLOURS = ("#fa3253", "#3d3df5", "#34d1b7", "#ff6037", "#b83df5", "#f59331", "#2a7dd1")


def now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime | None) -> str | None:
    """CVAT's timestamp format: ISO 8601 with microseconds and a Z."""
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class User:
    id: int
    username: str
    first_name: str
    last_name: str
    email: str
    #: CVAT's global privilege: "admin" sees and changes everything; "user" only
    #: what it owns, is assigned to, or its organisation role allows (``access``).
    privilege: str = "admin"
    #: organisation slug -> role (owner, maintainer, supervisor, worker).
    organizations: dict[str, str] = field(default_factory=dict)


@dataclass
class Frame:
    name: str
    data: bytes
    width: int
    height: int
    broken: bool = False


@dataclass
class Label:
    id: int
    name: str
    type: str
    color: str
    attributes: list[dict[str, Any]]
    task_id: int
    project_id: int | None


@dataclass
class Job:
    id: int
    task_id: int
    start_frame: int
    stop_frame: int
    created: datetime
    updated: datetime
    state: str = "new"
    stage: str = "annotation"
    assignee: User | None = None
    #: "annotation", or "ground_truth": a job over chosen frames of the task
    #: (CVAT's SPECIFIC_FRAMES segment, ``frames``) from 0 to the task's last frame.
    type: str = "annotation"
    frames: tuple[int, ...] = ()

    @property
    def status(self) -> str:
        """CVAT's legacy job status, derived from stage and state."""
        if self.stage == "acceptance" and self.state == "completed":
            return "completed"
        if self.stage == "validation":
            return "validation"
        return "annotation"

    def holds(self, frame: int) -> bool:
        if self.type == "ground_truth":
            return frame in self.frames
        return self.start_frame <= frame <= self.stop_frame


@dataclass
class Task:
    id: int
    name: str
    labels: list[Label]
    frames: list[Frame]
    jobs: list[Job]
    owner: User
    organization: str | None
    project_id: int | None
    segment_size: int
    chunk_size: int
    image_quality: int
    subset: str
    created: datetime
    updated: datetime
    #: None until data is attached (POST /api/tasks/{id}/data); the frames
    #: and jobs exist only once that data is processed (``data_ready``).
    data_id: int | None = None
    data_ready: bool = False
    #: Frames marked deleted (PATCH data/meta): kept, but not to be annotated.
    deleted_frames: set[int] = field(default_factory=set)
    assignee: User | None = None
    #: The data is a video (``CvatStandIn.set_video``): mode "interpolation".
    video: bool = False
    #: The task's Ground Truth job (``POST /api/jobs``, type ground_truth): at most
    #: one. ``jobs`` holds the annotation jobs only: a task's annotations, writes
    #: and exports leave the GT job out, as CVAT's ``TaskAnnotation`` does.
    gt_job: Job | None = None

    @property
    def all_jobs(self) -> list[Job]:
        """The annotation jobs and the Ground Truth job (what ``/api/jobs`` lists)."""
        return [*self.jobs, *([self.gt_job] if self.gt_job else [])]

    @property
    def status(self) -> str:
        """ "completed" once every job (the GT job too: CVAT's ``update_task_status``
        reads all the task's jobs) is completed, else "annotation"."""
        jobs = self.all_jobs
        if self.jobs and all(job.state == "completed" for job in jobs):
            return "completed"
        return "annotation"

    def label(self, label_id: int) -> Label | None:
        return next((lb for lb in self.labels if lb.id == label_id), None)

    def label_named(self, name: str) -> Label | None:
        return next((lb for lb in self.labels if lb.name == name), None)

    def job_for(self, frame: int) -> Job | None:
        return next((job for job in self.jobs if job.holds(frame)), None)


@dataclass
class Annotations:
    """One job's stored annotations, each object a dict as CVAT returns it."""

    tags: list[dict[str, Any]] = field(default_factory=list)
    shapes: list[dict[str, Any]] = field(default_factory=list)
    tracks: list[dict[str, Any]] = field(default_factory=list)


class State:
    """Everything the stand-in holds, with CVAT-like id counters."""

    def __init__(self) -> None:
        self.user = User(1, "admin1", "Admin", "First", "admin1@cvat.org")
        self.users: dict[str, User] = {self.user.username: self.user}
        self.tasks: dict[int, Task] = {}
        self.jobs: dict[int, Job] = {}
        self.annotations: dict[int, Annotations] = {}
        self.organizations: dict[str, int] = {}
        self._task_ids = itertools.count(1)
        self._job_ids = itertools.count(1)
        self._label_ids = itertools.count(1)
        self._attribute_ids = itertools.count(1)
        self._data_ids = itertools.count(1)
        self.shape_ids = itertools.count(1)
        self.tag_ids = itertools.count(1)
        self.track_ids = itertools.count(1)

    def organization_id(self, slug: str) -> int:
        if slug not in self.organizations:
            self.organizations[slug] = len(self.organizations) + 1
        return self.organizations[slug]

    def add_user(self, username: str, privilege: str, organizations: dict[str, str]) -> User:
        if username in self.users:
            raise ValueError(f"user {username!r} exists already")
        if privilege not in PRIVILEGES:
            raise ValueError(f"privilege must be one of {PRIVILEGES}, got {privilege!r}")
        for slug, role in organizations.items():
            if role not in ORG_ROLES:
                raise ValueError(f"role in {slug!r} must be one of {ORG_ROLES}, got {role!r}")
            self.organization_id(slug)
        user = User(len(self.users) + 1, username, username.title(), "", f"{username}@cvat.org",
                    privilege, dict(organizations))  # fmt: skip
        self.users[username] = user
        return user

    def create_task(
        self,
        name: str,
        labels: list[dict[str, Any]],
        *,
        project_id: int | None,
        segment_size: int | None,
        organization: str | None,
        subset: str,
        owner: User | None = None,
    ) -> Task:
        """The task row CVAT makes on POST /api/tasks: labels, no data, no jobs."""
        if segment_size is not None and segment_size < 1:
            raise ValueError(f"segment_size must be at least 1, got {segment_size}")
        if organization is not None:
            self.organization_id(organization)
        task_id = next(self._task_ids)
        created = now()
        task_labels = [self._label(spec, i, task_id, project_id) for i, spec in enumerate(labels)]
        label_names = [lb.name for lb in task_labels]
        if len(set(label_names)) != len(label_names):
            raise ValueError(f"label names must be unique, got {label_names}")
        task = Task(
            id=task_id,
            name=name,
            labels=task_labels,
            frames=[],
            jobs=[],
            owner=owner or self.user,
            organization=organization,
            project_id=project_id,
            segment_size=segment_size or 0,
            chunk_size=0,
            image_quality=0,
            subset=subset,
            created=created,
            updated=created,
        )
        self.tasks[task_id] = task
        return task

    def check_images(self, images: list[tuple[str, bytes]]) -> list[Frame]:
        """The frames of ``images``, refused (ValueError) before anything changes."""
        if not images:
            raise ValueError("a task needs at least one image")
        frames = [_frame(name_, data) for name_, data in images]
        names = [f.name for f in frames]
        if len(set(names)) != len(names):
            raise ValueError("image names must be unique within a task")
        return frames

    def start_data(self, task: Task, *, chunk_size: int, image_quality: int) -> None:
        """POST /api/tasks/{id}/data: the task gets its (still empty) data object."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        if task.data_id is not None:
            raise ValueError(f"task {task.id} has data already; CVAT adds no more")
        task.data_id = next(self._data_ids)
        task.chunk_size, task.image_quality = chunk_size, image_quality

    def attach_data(
        self,
        task: Task,
        frames: list[Frame],
        deleted_frames: set[int] | frozenset[int] = frozenset(),
    ) -> None:
        """The data processed: frames in, one job per segment (CVAT's _create_thread end)."""
        unknown = sorted(f for f in deleted_frames if not 0 <= f < len(frames))
        if unknown:
            raise ValueError(f"deleted frames {unknown} are not frames 0-{len(frames) - 1}")
        size = len(frames)
        step = task.segment_size or size
        moment = now()
        for start in range(0, size, step):
            job = Job(next(self._job_ids), task.id, start, min(start + step, size) - 1, moment,
                      moment)  # fmt: skip
            task.jobs.append(job)
            self.jobs[job.id] = job
            self.annotations[job.id] = Annotations()
        task.frames = frames
        task.segment_size = step
        task.deleted_frames = set(deleted_frames)
        task.data_ready = True
        task.updated = moment

    def add_gt_job(self, task: Task, frames: list[int]) -> Job:
        """A Ground Truth job over ``frames`` (task frame numbers), refused (``ValueError``,
        CVAT's message) as ``JobWriteSerializer.create`` refuses it."""
        self.check_gt_job(task)
        if len(set(frames)) != len(frames):
            raise ValueError("Frames must not repeat")
        unknown = sorted(set(frames) - set(range(len(task.frames))))
        if unknown:
            listed = ", ".join(map(str, unknown))
            raise ValueError(f"The following frames do not exist in the task: {listed}")
        moment = now()
        job = Job(next(self._job_ids), task.id, 0, len(task.frames) - 1, moment, moment,
                  type="ground_truth", frames=tuple(sorted(frames)))  # fmt: skip
        task.gt_job = job
        self.jobs[job.id] = job
        self.annotations[job.id] = Annotations()
        task.updated = moment
        return job

    def check_gt_job(self, task: Task) -> None:
        """Whether ``task`` may get a Ground Truth job: data in, none yet (a first one
        sets its validation mode to "gt")."""
        if not task.data_ready:
            raise ValueError(
                "This task has no data attached yet. Please set up task data and try again"
            )
        if task.gt_job is not None:
            raise ValueError('Task with validation mode "gt" cannot have more than 1 GT job')

    def _label(
        self, spec: dict[str, Any], index: int, task_id: int, project_id: int | None
    ) -> Label:
        unknown = set(spec) - {"name", "type", "attributes", "color"}
        if unknown:
            raise ValueError(f"unknown label keys {sorted(unknown)}; use name, type, attributes")
        if not spec.get("name"):
            raise ValueError(f"label #{index} has no name")
        label_type = spec.get("type", "any")
        if label_type not in LABEL_TYPES:
            raise ValueError(f"label type {label_type!r} is not one of {', '.join(LABEL_TYPES)}")
        attributes = [self._attribute(a) for a in spec.get("attributes", [])]
        color = spec.get("color") or _COLOURS[index % len(_COLOURS)]
        return Label(next(self._label_ids), spec["name"], label_type, color, attributes, task_id,
                     project_id)  # fmt: skip

    def _attribute(self, spec: dict[str, Any]) -> dict[str, Any]:
        if not spec.get("name"):
            raise ValueError("every label attribute needs a name")
        input_type = spec.get("input_type", "text")
        if input_type not in INPUT_TYPES:
            raise ValueError(f"input_type {input_type!r} is not one of {', '.join(INPUT_TYPES)}")
        values = [str(v) for v in spec.get("values", [""])]
        return {
            "id": next(self._attribute_ids),
            "name": spec["name"],
            "mutable": bool(spec.get("mutable", False)),
            "input_type": input_type,
            "default_value": str(spec.get("default_value", values[0] if values else "")),
            "values": values,
        }


def _frame(name: str, data: bytes) -> Frame:
    if not name or name.startswith("/") or ".." in name.split("/"):
        raise ValueError(f"image name {name!r} must be a relative path without '..'")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Exception as exc:  # PIL raises many kinds for bad bytes
        raise ValueError(f"image {name!r} is not a readable image: {exc}") from exc
    return Frame(name, data, width, height)
