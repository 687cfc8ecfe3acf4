"""``POST /api/jobs``: a Ground Truth job's request, checked as CVAT 2.x checks it.

Read from cvat-ai/cvat ``cvat/apps/engine/serializers.py`` (``JobWriteSerializer``:
its fields, ``validate`` and ``create``), ``cvat/apps/engine/field_validation.py``
(the messages of ``require_field`` / ``require_one_of_fields``) and
``cvat/apps/engine/models.py`` (``JobType``, ``JobFrameSelectionMethod``). DRF
checks the fields first (``{"<field>": [...]}``), then ``validate``
(``{"non_field_errors": [...]}``), then ``create`` (a plain list), and the
stand-in answers in the same order with the same bodies.

Frame selection: ``manual`` (``frames``, task-relative numbers) and
``random_uniform`` (``frame_count`` or ``frame_share``, optional
``random_seed``: numpy's MT19937 choice over the frames not deleted, as CVAT
draws them). ``random_per_job`` is refused: the stand-in does not draw it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .model import FRAME_SELECTION_METHODS, JOB_STAGES, JOB_STATES, JOB_TYPES, Task


class GroundTruthError(ValueError):
    """A request CVAT answers 400; ``detail`` is the body."""

    def __init__(self, detail: Any) -> None:
        super().__init__(str(detail))
        self.detail = detail


@dataclass(frozen=True)
class GroundTruthRequest:
    task_id: int
    method: str
    frames: tuple[int, ...] = ()
    frame_count: int | None = None
    frame_share: float | None = None
    seed: int | None = None

    def frames_for(self, task: Task) -> list[int]:
        """The job's frames in ``task`` (ValueError with CVAT's message when refused)."""
        if self.method == "manual":
            return list(self.frames)
        if self.method != "random_uniform":
            raise ValueError(
                f"The CVAT stand-in does not draw '{self.method}' frames: use manual or "
                "random_uniform"
            )
        size = len(task.frames)
        if self.frame_count is not None:
            if size < self.frame_count:
                raise ValueError(
                    f"The number of frames requested ({self.frame_count}) must not be greater "
                    f"than the number of the task frames ({size})"
                )
            count = self.frame_count
        else:
            assert self.frame_share is not None
            count = max(1, int(self.frame_share * size))
        from numpy import random

        valid = [i for i in range(size) if i not in task.deleted_frames]
        rng = random.Generator(random.MT19937(seed=self.seed))
        return rng.choice(valid, size=count, shuffle=False, replace=False).tolist()


def parse_job_create(body: Any) -> GroundTruthRequest:
    """The request of ``POST /api/jobs``, or ``GroundTruthError`` with CVAT's answer."""
    if not isinstance(body, dict):
        kind = "list" if isinstance(body, list) else type(body).__name__
        raise GroundTruthError(
            {"non_field_errors": [f"Invalid data. Expected a dictionary, but got {kind}."]}
        )
    errors: dict[str, Any] = {}
    job_type = _choice(body, "type", JOB_TYPES, errors, required=True)
    task_id = _integer(body, "task_id", errors, required=True)
    method = _choice(body, "frame_selection_method", FRAME_SELECTION_METHODS, errors)
    _choice(body, "stage", JOB_STAGES, errors)
    _choice(body, "state", JOB_STATES, errors)
    frames = _frames(body, errors)
    frame_count = _integer(body, "frame_count", errors, minimum=1)
    _integer(body, "frames_per_job_count", errors, minimum=1)
    seed = _integer(body, "random_seed", errors, minimum=0)
    shares = {k: _share(body, k, errors) for k in ("frame_share", "frames_per_job_share")}
    if errors:
        raise GroundTruthError(errors)

    def refuse(message: str) -> GroundTruthError:
        return GroundTruthError({"non_field_errors": [message]})

    if method == "random_uniform":
        _one_of(body, ("frame_count", "frame_share"), refuse)
    elif method == "random_per_job":
        _one_of(body, ("frames_per_job_count", "frames_per_job_share"), refuse)
    elif method == "manual" and "frames" not in body:
        raise refuse('The "frames" field is required')
    if "frames" in body and method != "manual":
        raise refuse('"frames" can only be used when "frame_selection_method" is "manual"')
    if job_type != "ground_truth":
        raise GroundTruthError([f"Unexpected job type '{job_type}'"])
    assert task_id is not None
    if method is None:  # CVAT pops it without a default: a server error there
        raise GroundTruthError(["Unexpected frame selection method 'None'"])
    return GroundTruthRequest(
        task_id, method, tuple(frames or ()), frame_count, shares["frame_share"], seed
    )


def _one_of(body: dict[str, Any], keys: tuple[str, ...], refuse: Any) -> None:
    present = sum(k in body for k in keys)
    options = ", ".join(f'"{k}"' for k in keys)
    if not present:
        raise refuse(f"One of the fields {options} required")
    if present > 1:
        raise refuse(f"Only 1 of the fields {options} can be used")


def _choice(
    body: dict[str, Any],
    name: str,
    choices: tuple[str, ...],
    errors: dict[str, Any],
    *,
    required: bool = False,
) -> str | None:
    if name not in body:
        if required:
            errors[name] = ["This field is required."]
        return None
    value = body[name]
    if value not in choices:
        errors[name] = [f'"{value}" is not a valid choice.']
        return None
    return value


def _integer(
    body: dict[str, Any],
    name: str,
    errors: dict[str, Any],
    *,
    required: bool = False,
    minimum: int | None = None,
) -> int | None:
    if name not in body:
        if required:
            errors[name] = ["This field is required."]
        return None
    value = _as_int(body[name])
    if value is None:
        errors[name] = ["A valid integer is required."]
    elif minimum is not None and value < minimum:
        errors[name] = [f"Ensure this value is greater than or equal to {minimum}."]
        return None
    return value


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _share(body: dict[str, Any], name: str, errors: dict[str, Any]) -> float | None:
    if name not in body:
        return None
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        errors[name] = ["A valid number is required."]
        return None
    if not 0 <= value <= 1:
        errors[name] = ["Value must be in the range [0; 1]"]
        return None
    return float(value)


def _frames(body: dict[str, Any], errors: dict[str, Any]) -> list[int] | None:
    if "frames" not in body:
        return None
    raw = body["frames"]
    if isinstance(raw, str) or not isinstance(raw, list):
        errors["frames"] = [f'Expected a list of items but got type "{type(raw).__name__}".']
        return None
    if not raw:
        errors["frames"] = ["This list may not be empty."]
        return None
    frames, bad = [], {}
    for i, item in enumerate(raw):
        value = _as_int(item)
        if value is None:
            bad[str(i)] = ["A valid integer is required."]
        elif value < 0:
            bad[str(i)] = ["Ensure this value is greater than or equal to 0."]
        else:
            frames.append(value)
    if bad:
        errors["frames"] = bad
        return None
    return frames
