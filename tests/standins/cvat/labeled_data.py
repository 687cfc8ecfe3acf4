"""Job and task annotations: GET, PUT, and PATCH ?action=create|update|delete.

Behaves as cvat/apps/dataset_manager/task.py does: ``create`` assigns new ids
and answers the created objects; ``update`` replaces objects by id and answers
them; ``delete`` removes by id and echoes the request; ``PUT`` replaces
everything. A task-level call is split across the task's jobs by frame. CVAT
answers ``"version": 0`` on every call since it dropped annotation commits
(``_init_version_from_db`` is a FIXME returning 0), and so does the stand-in.

A request is validated whole before anything is stored (CVAT runs it in one
transaction): one bad shape and nothing changes. The stand-in is stricter than
CVAT in two places, on purpose, so tests catch writes that real CVAT would
store in the wrong place: a shape must fall inside the job's frame range, and
``update`` may only name ids that the job holds (a Ground Truth job
holds its chosen frames only). Tracks (README, "Tracks, as
CVAT holds them"): their shapes are returned in frame order; a track whose
shapes share a frame or mix types, or (task-level) spans jobs, is refused
where CVAT would store it (and slice it per job).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .model import Annotations, Job, State, Task
from .rle import MaskError, decode_cvat_mask

SHAPE_TYPES = ("rectangle", "polygon", "polyline", "points", "ellipse", "cuboid", "mask")
SOURCES = ("auto", "semi-auto", "manual", "file", "consensus")
ACTIONS = ("create", "update", "delete")

#: Minimum number of coordinates and whether they come in (x, y) pairs.
_POINT_RULES: dict[str, tuple[int, bool]] = {
    "rectangle": (4, True),
    "ellipse": (4, True),
    "polygon": (6, True),
    "polyline": (4, True),
    "points": (2, True),
    "cuboid": (16, True),
}


class AnnotationError(ValueError):
    """A request CVAT would refuse with 400; ``detail`` is the response body."""

    def __init__(self, detail: Any) -> None:
        super().__init__(str(detail))
        self.detail = detail


def empty_response(data: Annotations | None = None) -> dict[str, Any]:
    data = data or Annotations()
    return {"version": 0, "tags": data.tags, "shapes": data.shapes, "tracks": data.tracks}


def job_data(state: State, job: Job) -> dict[str, Any]:
    """GET job annotations: by frame, attributes the object lacks filled with the
    label's defaults (CVAT's ``_extend_attributes``)."""
    stored = state.annotations[job.id]
    task = state.tasks[job.task_id]
    shapes = sorted(stored.shapes, key=lambda s: (s["frame"], s["id"]))
    tags = sorted(stored.tags, key=lambda s: (s["frame"], s["id"]))
    tracks = sorted(stored.tracks, key=lambda s: s["id"])
    data = _copy(empty_response(Annotations(tags, shapes, tracks)))
    for item in data["tags"] + data["shapes"] + data["tracks"]:
        label = task.label(item["label_id"])
        present = {a["spec_id"] for a in item["attributes"]}
        for spec in label.attributes if label else []:
            if spec["id"] not in present:
                item["attributes"].append({"spec_id": spec["id"], "value": spec["default_value"]})
    return data


def task_data(state: State, task: Task) -> dict[str, Any]:
    merged = Annotations()
    for job in task.jobs:
        data = job_data(state, job)
        merged.tags += data["tags"]
        merged.shapes += data["shapes"]
        merged.tracks += data["tracks"]
    return empty_response(merged)


def apply(
    state: State, task: Task, jobs: list[Job], body: Any, action: str | None
) -> dict[str, Any]:
    """Run a PUT (``action`` None) or PATCH on ``jobs`` (one job, or all of a task)."""
    if action is not None and action not in ACTIONS:
        raise AnnotationError(
            [f"Please specify a correct 'action' for the request: one of {', '.join(ACTIONS)}"]
        )
    incoming = _parse_body(body)
    scope = jobs[0] if len(jobs) == 1 else None
    checked = _validate(state, task, jobs, incoming, action, scope)

    if action is None:
        for job in jobs:
            state.annotations[job.id] = Annotations()
        return _store(state, jobs, checked, keep_ids=False)
    if action == "create":
        return _store(state, jobs, checked, keep_ids=False)
    if action == "update":
        _remove(state, jobs, checked)
        return _store(state, jobs, checked, keep_ids=True)
    _remove(state, jobs, checked)
    return _copy(empty_response(Annotations(*(checked[k] for k in ("tags", "shapes", "tracks")))))


def _parse_body(body: Any) -> dict[str, list[dict[str, Any]]]:
    if not isinstance(body, dict):
        raise AnnotationError(
            {"non_field_errors": ["Invalid data. Expected a dictionary, but got list."]}
        )
    out: dict[str, list[dict[str, Any]]] = {}
    errors: dict[str, Any] = {}
    for key in ("tags", "shapes", "tracks"):
        value = body.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            errors[key] = [f'Expected a list of items but got type "{type(value).__name__}".']
        else:
            out[key] = value
    version = body.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        errors["version"] = ["A valid integer is required."]
    if errors:
        raise AnnotationError(errors)
    return out


def _validate(
    state: State,
    task: Task,
    jobs: list[Job],
    incoming: dict[str, list[dict[str, Any]]],
    action: str | None,
    scope: Job | None,
) -> dict[str, list[dict[str, Any]]]:
    field_errors: dict[str, list[dict[str, list[str]]]] = {}
    checked: dict[str, list[dict[str, Any]]] = {}
    for key, parse in (("tags", _parse_tag), ("shapes", _parse_shape), ("tracks", _parse_track)):
        items, per_item = [], []
        for raw in incoming[key]:
            item, errs = parse(raw)
            items.append(item)
            per_item.append(errs)
        if any(per_item):
            field_errors[key] = per_item
        checked[key] = items
    if field_errors:
        raise AnnotationError(field_errors)

    problems: list[str] = []
    needs_id = action in ("update", "delete")
    held = _held_ids(state, jobs)
    for key in ("tags", "shapes", "tracks"):
        for item in checked[key]:
            if needs_id:
                if item.get("id") is None:
                    problems.append(f"{key}: every object to {action} needs its id")
                elif item["id"] not in held[key]:
                    where = f"job {scope.id}" if scope else f"task {task.id}"
                    problems.append(f"{key}: id {item['id']} is not in {where}")
            if action == "delete":
                continue
            problems += _semantic_problems(task, key, item, jobs)
    if problems:
        raise AnnotationError(problems)
    return checked


def _semantic_problems(task: Task, key: str, item: dict[str, Any], jobs: list[Job]) -> list[str]:
    problems = []
    label = task.label(item["label_id"])
    if label is None:
        return [f"label_id `{item['label_id']}` is invalid"]
    spec_ids = {a["id"] for a in label.attributes}
    for attr in item.get("attributes", []):
        if attr["spec_id"] not in spec_ids:
            problems.append(f"spec_id `{attr['spec_id']}` is invalid")
    frames = [item["frame"]]
    if key == "tracks":
        frames += [s["frame"] for s in item["shapes"]]
    for frame in frames:
        if not any(job.holds(frame) for job in jobs):
            ranges = ", ".join(_frames_of(j) for j in jobs)
            problems.append(f"{key}: frame {frame} is outside the frames written to ({ranges})")
    if key == "shapes" and not problems:
        problems += _points_problems(task, item)
    if key == "tracks" and not problems:
        problems += _track_problems(task, item, jobs)
    return problems


def _frames_of(job: Job) -> str:
    if job.type == "ground_truth":
        return f"job {job.id}: frames {list(job.frames)}"
    return f"job {job.id}: {job.start_frame}-{job.stop_frame}"


def _track_problems(task: Task, track: dict[str, Any], jobs: list[Job]) -> list[str]:
    """A track's shapes: one per frame, of one type, valid points, within one job."""
    problems = []
    frames = [s["frame"] for s in track["shapes"]]
    if len(set(frames)) != len(frames):
        # CVAT stores them, then fails interpolating (get_interpolated_shapes asserts
        # increasing frames): refused here.
        problems.append(f"tracks: a track has two shapes on one frame ({sorted(frames)})")
    if len({s["type"] for s in track["shapes"]}) > 1:
        problems.append("tracks: a track's shapes must all be of one type")
    if track["frame"] > min(frames):
        problems.append(f"tracks: the track's frame {track['frame']} is after its first shape")
    owners = {j.id for j in jobs if any(j.holds(f) for f in frames)}
    if len(owners) > 1:
        # CVAT slices a task-level track per job (AnnotationIR._slice_track); the
        # stand-in does not: write each job its part.
        problems.append(f"tracks: a track spans jobs {sorted(owners)}; write each job its part")
    label = task.label(track["label_id"])
    spec_ids = {a["id"] for a in label.attributes} if label else set()
    for shape in track["shapes"]:
        problems += [p.replace("shapes:", "tracks:", 1) for p in _points_problems(task, shape)]
        for attr in shape["attributes"]:
            if attr["spec_id"] not in spec_ids:
                problems.append(f"spec_id `{attr['spec_id']}` is invalid")
    return problems


def _points_problems(task: Task, shape: dict[str, Any]) -> list[str]:
    shape_type, points = shape["type"], shape["points"]
    if shape_type == "mask":
        frame = task.frames[shape["frame"]]
        try:
            decode_cvat_mask(points, frame.width, frame.height)
        except MaskError as exc:
            return [f"shapes: mask on frame {shape['frame']}: {exc}"]
        return []
    minimum, pairs = _POINT_RULES[shape_type]
    exact = shape_type in ("rectangle", "ellipse")
    if (exact and len(points) != minimum) or len(points) < minimum or (pairs and len(points) % 2):
        need = f"exactly {minimum}" if exact else f"at least {minimum} (x, y pairs)"
        return [f"shapes: a {shape_type} needs {need} point coordinates, got {len(points)}"]
    return []


def _held_ids(state: State, jobs: Iterable[Job]) -> dict[str, set[int]]:
    held: dict[str, set[int]] = {"tags": set(), "shapes": set(), "tracks": set()}
    for job in jobs:
        stored = state.annotations[job.id]
        held["tags"] |= {t["id"] for t in stored.tags}
        held["shapes"] |= {s["id"] for s in stored.shapes}
        held["tracks"] |= {t["id"] for t in stored.tracks}
    return held


def _remove(state: State, jobs: Iterable[Job], checked: dict[str, list[dict[str, Any]]]) -> None:
    for job in jobs:
        stored = state.annotations[job.id]
        for key in ("tags", "shapes", "tracks"):
            ids = {item["id"] for item in checked[key]}
            setattr(stored, key, [x for x in getattr(stored, key) if x["id"] not in ids])


def _store(
    state: State, jobs: list[Job], checked: dict[str, list[dict[str, Any]]], *, keep_ids: bool
) -> dict[str, Any]:
    created = Annotations()
    counters = {"tags": state.tag_ids, "shapes": state.shape_ids, "tracks": state.track_ids}
    for key in ("tags", "shapes", "tracks"):
        for item in checked[key]:
            item = _copy(item)
            if not keep_ids:
                item["id"] = next(counters[key])
            if key == "tracks":
                item["shapes"].sort(key=lambda shape: shape["frame"])
                for tracked in item["shapes"]:
                    if not keep_ids or tracked.get("id") is None:
                        tracked["id"] = next(state.shape_ids)
            job = next(j for j in jobs if j.holds(item["frame"]))  # checked in _validate
            getattr(state.annotations[job.id], key).append(item)
            getattr(created, key).append(_copy(item))
    return empty_response(created)


# --- field-level parsing, as CVAT's serializers do it --------------------------------------


def _parse_common(raw: dict[str, Any], errs: dict[str, list[str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    out["id"] = _int(raw, "id", errs, required=False, default=None, nullable=True)
    out["frame"] = _int(raw, "frame", errs, required=True, minimum=0)
    out["label_id"] = _int(raw, "label_id", errs, required=True, minimum=0)
    out["group"] = _int(raw, "group", errs, required=False, default=0, nullable=True, minimum=0)
    if out["group"] is None:
        out["group"] = 0
    source = raw.get("source", "manual")
    if source not in SOURCES:
        errs["source"] = [f'"{source}" is not a valid choice.']
    out["source"] = source
    out["attributes"] = _parse_attributes(raw, errs)
    return out


def _parse_attributes(raw: dict[str, Any], errs: dict[str, list[str]]) -> list[dict[str, Any]]:
    attributes = raw.get("attributes", [])
    if not isinstance(attributes, list) or not all(
        isinstance(a, dict)
        and isinstance(a.get("spec_id"), int)
        and not isinstance(a.get("spec_id"), bool)
        and isinstance(a.get("value"), str)
        for a in attributes
    ):
        errs["attributes"] = ['Expected a list of {"spec_id": int, "value": str}.']
        attributes = []
    return [{"spec_id": a["spec_id"], "value": a["value"]} for a in attributes]


def _parse_geometry(raw: dict[str, Any], errs: dict[str, list[str]], out: dict[str, Any]) -> None:
    shape_type = raw.get("type")
    if shape_type is None:
        errs["type"] = ["This field is required."]
    elif shape_type == "skeleton":
        errs["type"] = ["skeleton shapes are not supported by the CVAT stand-in"]
    elif shape_type not in SHAPE_TYPES:
        errs["type"] = [f'"{shape_type}" is not a valid choice.']
    out["type"] = shape_type
    points = raw.get("points", [])
    if not isinstance(points, list) or not all(
        isinstance(p, int | float) and not isinstance(p, bool) for p in points
    ):
        errs["points"] = ["Expected a list of numbers."]
        points = []
    out["points"] = [float(p) for p in points]
    for name in ("occluded", "outside"):
        value = raw.get(name, False)
        if not isinstance(value, bool):
            errs[name] = ["Must be a valid boolean."]
        out[name] = bool(value)
    out["z_order"] = _int(raw, "z_order", errs, required=False, default=0)
    rotation = raw.get("rotation", 0.0)
    if isinstance(rotation, bool) or not isinstance(rotation, int | float):
        errs["rotation"] = ["A valid number is required."]
        rotation = 0.0
    out["rotation"] = float(rotation)


def _parse_shape(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    errs: dict[str, list[str]] = {}
    out = _parse_common(raw, errs)
    _parse_geometry(raw, errs, out)
    score = raw.get("score", 1.0)
    if isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1:
        errs["score"] = ["Ensure this value is a number between 0 and 1."]
        score = 1.0
    out["score"] = float(score)
    if raw.get("elements"):
        errs["elements"] = ["elements are only for skeletons, which the stand-in does not hold"]
    out["elements"] = []
    return out, errs


def _parse_tag(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    errs: dict[str, list[str]] = {}
    return _parse_common(raw, errs), errs


def _parse_track(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    errs: dict[str, list[str]] = {}
    out = _parse_common(raw, errs)
    shapes = raw.get("shapes")
    if not isinstance(shapes, list) or not shapes:
        errs["shapes"] = ["A track needs a non-empty list of shapes."]
        shapes = []
    tracked = []
    for i, shape in enumerate(shapes):
        shape_errs: dict[str, list[str]] = {}
        if not isinstance(shape, dict):
            errs[f"shapes[{i}]"] = ["Expected an object."]
            continue
        item: dict[str, Any] = {
            "id": _int(shape, "id", shape_errs, required=False, default=None, nullable=True),
            "frame": _int(shape, "frame", shape_errs, required=True, minimum=0),
            "attributes": _parse_attributes(shape, shape_errs),
        }
        _parse_geometry(shape, shape_errs, item)
        for name, msgs in shape_errs.items():
            errs[f"shapes[{i}].{name}"] = msgs
        tracked.append(item)
    out["shapes"] = tracked
    out["elements"] = []
    return out, errs


def _int(
    raw: dict[str, Any],
    name: str,
    errs: dict[str, list[str]],
    *,
    required: bool,
    default: int | None = None,
    nullable: bool = False,
    minimum: int | None = None,
) -> int | None:
    if name not in raw:
        if required:
            errs[name] = ["This field is required."]
        return default
    value = raw[name]
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        errs[name] = ["A valid integer is required."]
        return default
    if minimum is not None and value < minimum:
        errs[name] = [f"Ensure this value is greater than or equal to {minimum}."]
    return value


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value
