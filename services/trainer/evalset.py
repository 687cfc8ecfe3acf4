"""The model's frozen evaluation set: one measuring stick for every version of a model.

The first training of a model (a name in a namespace) freezes its dataset's
validation split as the model's evaluation set, once it has evaluated the
version on it (``freeze``, before the manifest; a training that fails freezes
nothing): its record files are copied to
``<ns>/models/<name>/evaluation/<job_id>/`` and the record
``evaluation/set.json`` (``preannotate.layout``) is created once with
``put_if_absent``; of two first trainings at once one wins, the other drops
its copy, and its version counts as not measured on the set. The record names each frame by its CVAT
identity as the exporter records it: the task id and the frame's file name
(unique within a task; ``image/filename`` of the record).

Every later training of the model:
- evaluates on those stored records (the same frames and the same labels as
  when frozen), not on its dataset's own validation split;
- never trains on them: training records whose (task, file name) is in the set
  are dropped from the local training files before training starts (counted
  in the manifest's ``evaluation.excluded_from_training``);
- trains on its dataset's own validation split, less the set's frames, since
  that split measures nothing now (``train-val-*.tfrecord`` beside the training
  files; ``evaluation.dataset_val_images_trained_on``), so a retrain learns from
  everything annotated but the set. A validation split that is CVAT ground truth
  is never trained on (``dataset_val_images_unused``).

Where the frozen frames come from is the dataset's validation split, whatever
made it: a split by file name (``set.json`` ``source`` "validation-split"), or
a CVAT project's accepted Ground Truth jobs (``source`` "cvat-ground-truth",
with ``ground_truth_jobs``), whose frames the exporter makes the validation
split, with the Ground Truth job's labels, and keeps out of ``train``
(``services/exporter/ground_truth.py``; the manifest says so in
``splits.val.source``). So a project that has a Ground Truth job at its model's
first training is measured on it. One fixed measuring stick per model: a
Ground Truth job that appears (or changes) after the set was frozen replaces
nothing. Later trainings keep evaluating on the frozen set; the manifest's
``evaluation.note`` says that the dataset's Ground Truth was not used as the
set, and its frames stay out of training all the same (they are the dataset's
validation split). To measure on the new Ground Truth, train a new model name.

A dataset whose classes do not start with the set's classes (a label renamed
or removed: class ids would differ) is not measured on the set: the version is
evaluated on its own validation split, ``evaluation.set`` stays empty and the
promotion gate leaves it a candidate. Left open: frame numbers beside file
names.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from preannotate import layout
from preannotate.errors import FailedPrecondition
from preannotate.storage import Storage
from services.trainer.dataset import VAL_PATTERN, LocalDataset
from services.trainer.run import TrainingRun

#: ``set.json`` ``source``: the frames of a split by file name, or of CVAT Ground Truth
#: jobs (the exporter's ``splits.val.source`` "cvat-ground-truth").
SPLIT, GROUND_TRUTH = "validation-split", "cvat-ground-truth"


def val_source(manifest: dict[str, Any]) -> str:
    """Where a dataset's validation split comes from: ``GROUND_TRUTH`` or ``SPLIT``."""
    val = manifest.get("splits", {}).get("val", {})
    return GROUND_TRUTH if val.get("source") == GROUND_TRUTH else SPLIT


def _ground_truth_jobs(manifest: dict[str, Any]) -> str:
    source = manifest.get("source")
    return str(source.get("ground_truth_jobs", "")) if isinstance(source, dict) else ""


@dataclass(frozen=True)
class EvaluationSet:
    """The frozen set as this job uses it."""

    #: Its id: the job that froze it.
    id: str
    #: Frames by CVAT identity, ``"<task id>/<file name>"``.
    frames: frozenset[str]
    classes: tuple[str, ...]
    images: int
    #: This job froze it now.
    frozen_now: bool = False


@dataclass(frozen=True)
class Prepared:
    """The job's dataset with the set applied, and what that changed."""

    data: LocalDataset
    run: TrainingRun
    evaluation: EvaluationSet | None
    #: For the manifest's ``evaluation``.
    record: dict[str, Any]


def frame_key(task_id: int, file_name: str) -> str:
    """``"<task id>/<file name>"``. A dataset of several tasks (a CVAT project's: task
    id 0, ``services/exporter/project.py``) names each frame ``<task id>/<file name>``."""
    if not task_id:
        head, sep, rest = file_name.partition("/")
        if sep and head.isdigit() and rest:
            return f"{int(head)}/{rest}"
    return f"{int(task_id)}/{file_name}"


def _task_id(run: TrainingRun, data: LocalDataset) -> int:
    source = data.manifest.get("source")
    if isinstance(source, dict) and isinstance(source.get("task_id"), int):
        return int(source["task_id"])
    return int(run.request.origin.get("cvat_task_id", 0))


def file_names(files: tuple[Path, ...] | list[Path]) -> list[str]:
    """``image/filename`` of every record of ``files``, in order."""
    import tensorflow as tf

    names = []
    for raw in tf.data.TFRecordDataset([str(f) for f in files]):
        example = tf.train.Example.FromString(raw.numpy())
        values = example.features.feature["image/filename"].bytes_list.value
        names.append(values[0].decode("utf-8") if values else "")
    return names


def drop_frames(
    files: tuple[Path, ...],
    out_dir: Path,
    task_id: int,
    frames: frozenset[str],
    *,
    prefix: str = "",
) -> tuple[list[Path], int, int]:
    """Copy ``files`` into ``out_dir`` (named ``prefix`` + their name) without the
    records of ``frames``; (files, kept, dropped). A file left with no record is not
    written."""
    import tensorflow as tf

    out_dir.mkdir(parents=True, exist_ok=True)
    written, kept, dropped = [], 0, 0
    for path in files:
        target = out_dir / (prefix + path.name)
        count = 0
        with tf.io.TFRecordWriter(str(target)) as writer:
            for raw in tf.data.TFRecordDataset([str(path)]):
                data = raw.numpy()
                values = (
                    tf.train.Example.FromString(data)
                    .features.feature["image/filename"]
                    .bytes_list.value
                )
                name = values[0].decode("utf-8") if values else ""
                if frame_key(task_id, name) in frames:
                    dropped += 1
                    continue
                writer.write(data)
                count += 1
        if count:
            written.append(target)
            kept += count
        else:
            target.unlink()
    return written, kept, dropped


def _freeze(
    storage: Storage, run: TrainingRun, data: LocalDataset, task_id: int, fence
) -> dict[str, Any] | None:
    """Store this job's validation split as the set; the record that won (this or another's)."""
    request = run.request
    ns, name = request.namespace, request.model_name
    prefix = layout.evaluation_files_prefix(ns, name, request.job_id)
    names = file_names(data.val_files)
    fence()
    files = []
    for path in data.val_files:
        storage.upload_file(prefix + path.name, path)
        files.append({"name": path.name, "size": path.stat().st_size})
    record = {
        "id": request.job_id,
        "frozen_by_job": request.job_id,
        "frozen_at": datetime.now(UTC).isoformat(),
        "frozen_with_version": run.version,
        "source": val_source(data.manifest),
        "dataset": request.dataset_prefix,
        "frames": [_frame(frame_key(task_id, n)) for n in names],
        "images": len(names),
        "classes": list(request.classes),
        "files": files,
    }
    if record["source"] == GROUND_TRUTH:
        record["ground_truth_jobs"] = _ground_truth_jobs(data.manifest)
    fence()
    if layout.create_evaluation_set(storage, ns, name, record):
        return record
    storage.delete_prefix(prefix)  # another first training froze it a moment before
    return layout.read_evaluation_set(storage, ns, name)


def _frame(key: str) -> dict[str, Any]:
    task, _, name = key.partition("/")
    return {"task_id": int(task), "file_name": name}


def _download(storage: Storage, run: TrainingRun, record: dict[str, Any], folder: Path) -> None:
    request = run.request
    prefix = layout.evaluation_files_prefix(
        request.namespace, request.model_name, record["frozen_by_job"]
    )
    for info in record["files"]:
        target = folder / info["name"]  # val-*.tfrecord, as the exporter named them
        if not (target.is_file() and target.stat().st_size == int(info.get("size", -1))):
            tmp = folder / f".part-{target.name}"
            storage.download_file(prefix + info["name"], tmp)
            os.replace(tmp, target)


def prepare(storage: Storage, run: TrainingRun, data: LocalDataset, work: Path) -> Prepared:
    """Apply the model's set to this job's dataset: a model without one (its first
    training) evaluates on its own validation split, which ``freeze`` stores at the
    end; every later training leaves the set's frames out and evaluates on it."""
    request = run.request
    record = layout.read_evaluation_set(storage, request.namespace, request.model_name)
    if record is None or record.get("frozen_by_job") == request.job_id:
        if not data.val_files:
            return Prepared(data, run, None, {"set": "", "note": "no validation split to freeze"})
        evaluation = EvaluationSet(
            id=request.job_id,
            frames=frozenset(),
            classes=request.classes,
            images=request.val_images,
            frozen_now=True,
        )
        summary = {**_summary(evaluation, 0, 0), "source": val_source(data.manifest)}
        return Prepared(data, run, evaluation, summary)

    evaluation = _set(record)
    if tuple(request.classes[: len(evaluation.classes)]) != evaluation.classes:
        return Prepared(
            data,
            run,
            None,
            {
                "set": "",
                "note": f"classes {list(request.classes)} do not start with the evaluation "
                f"set's {list(evaluation.classes)}: measured on the dataset's own validation "
                "split instead",
            },
        )
    task_id = _task_id(run, data)
    folder = Path(work)
    shutil.rmtree(folder, ignore_errors=True)
    train, kept, dropped = drop_frames(data.train_files, folder, task_id, evaluation.frames)
    # The dataset's own validation split measures nothing now (the set does): it is
    # trained on, less the set's frames; CVAT ground truth never is.
    from_val, val_kept, val_dropped = [], 0, 0
    if data.val_files and val_source(data.manifest) == SPLIT:
        from_val, val_kept, val_dropped = drop_frames(
            data.val_files, folder, task_id, evaluation.frames, prefix="train-"
        )
    train, kept, dropped = [*train, *from_val], kept + val_kept, dropped + val_dropped
    if not train:
        raise FailedPrecondition(
            f"every training image of {request.dataset_prefix} is in the evaluation set of "
            f"{request.namespace}/{request.model_name}: annotate more images to train on"
        )
    _download(storage, run, record, folder)
    val = tuple(sorted(folder.glob(VAL_PATTERN)))
    new_data = LocalDataset(data.prefix, folder, tuple(sorted(train)), val, data.manifest)
    new_run = TrainingRun(
        replace(request, train_images=kept, val_images=evaluation.images), run.version
    )
    unused = 0 if val_source(data.manifest) == SPLIT else int(request.val_images)
    summary = {
        **_summary(evaluation, dropped, unused),
        "dataset_val_images_trained_on": val_kept,
        # sets frozen before sources were recorded said "validation split of <prefix>"
        "source": GROUND_TRUTH if record.get("source") == GROUND_TRUTH else SPLIT,
    }
    note = _later_ground_truth(record, data.manifest)
    if note:
        summary["note"] = note
    return Prepared(new_data, new_run, evaluation, summary)


def _later_ground_truth(record: dict[str, Any], manifest: dict[str, Any]) -> str:
    """A note when the dataset's validation split is CVAT Ground Truth the frozen set is
    not (one appeared, or another, after the set was frozen): the set stays."""
    if val_source(manifest) != GROUND_TRUTH:
        return ""
    jobs = _ground_truth_jobs(manifest)
    if record.get("source") == GROUND_TRUTH and record.get("ground_truth_jobs") == jobs:
        return ""
    was = (
        f"CVAT ground truth jobs {record.get('ground_truth_jobs')}"
        if record.get("source") == GROUND_TRUTH
        else "a validation split"
    )
    return (
        f"the dataset's validation split is CVAT ground truth (jobs {jobs}), but the model's "
        f"evaluation set {record.get('id')} was frozen from {was}: it stays the measuring "
        "stick, and the ground truth frames are not trained on"
    )


def freeze(storage: Storage, prepared: Prepared, fence=lambda: None) -> dict[str, Any]:
    """The manifest's ``evaluation`` record, once the version is evaluated: the first
    training stores its validation split as the model's set now (the set of a training
    that failed is never frozen); if another training froze one meanwhile, this
    version was not measured on it (``set`` empty, and a note)."""
    evaluation = prepared.evaluation
    if evaluation is None or not evaluation.frozen_now:
        return prepared.record
    request = prepared.run.request
    record = layout.read_evaluation_set(storage, request.namespace, request.model_name)
    if record is None:
        record = _freeze(
            storage, prepared.run, prepared.data, _task_id(prepared.run, prepared.data), fence
        )
    if record is not None and record.get("frozen_by_job") == request.job_id:
        return prepared.record
    other = record.get("frozen_by_job") if record else "another job"
    return {
        "set": "",
        "note": f"the model's evaluation set was frozen by {other} while this version "
        "trained; it was measured on its own validation split",
    }


def _set(record: dict[str, Any], *, frozen_now: bool = False) -> EvaluationSet:
    frames = frozenset(
        frame_key(int(f["task_id"]), str(f["file_name"])) for f in record.get("frames", [])
    )
    return EvaluationSet(
        id=str(record["id"]),
        frames=frames,
        classes=tuple(record.get("classes", [])),
        images=int(record.get("images", len(frames))),
        frozen_now=frozen_now,
    )


def _summary(evaluation: EvaluationSet, dropped: int, unused: int) -> dict[str, Any]:
    return {
        "set": evaluation.id,
        "images": evaluation.images,
        "frozen_now": evaluation.frozen_now,
        "excluded_from_training": dropped,
        "dataset_val_images_unused": unused,
    }
