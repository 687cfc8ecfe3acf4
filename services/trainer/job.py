"""One training job, start to finish (blocking; the handler runs it in a thread).

1. Claim the model's version (``versions``): the next free integer under
   ``<ns>/models/<name>/``, or the one this job claimed before. A version
   whose manifest exists is finished: return it and do nothing.
2. Download the dataset (``dataset``) and resolve the plan (steps, batch, ...).
3. Resume from the newest stored checkpoint, or decide how the model starts
   (``initialisation``: base model, COCO checkpoint, random).
4. Build the Model Garden experiment (``configs``), write ``experiment.yaml``
   and ``classes.csv``, train (``training``) while checkpoints and TensorBoard
   files go up to storage after every save (``checkpoints``).
5. Evaluate on the validation split, write ``metrics.json``, and the model
   prefix's ``manifest.json`` last: only that marks the version finished.

A cancel, or a failure no retry can fix, deletes the version's prefix
(nothing half-written stays); a shutdown or a retryable failure keeps it, so
the redelivered job resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from preannotate import arguments as arguments_lib
from preannotate.arguments import Arguments, BaseModelRef, Plan
from preannotate.catalog import Catalog, ModelEntry
from preannotate.classes import classes_csv
from preannotate.errors import Interrupted, is_retryable
from preannotate.keys import check_name, model_prefix
from preannotate.storage import PrefixWriter, Storage, read_manifest
from services.trainer import checkpoints, dataset, initialisation, versions
from services.trainer.initialisation import InitSpec
from services.trainer.progress import TrainProgress
from services.trainer.settings import TrainerSettings

MANIFEST_KIND = "model"
TRAINING_FILE = "training.json"


@dataclass(frozen=True)
class JobSpec:
    """What the trainer was asked, validated (see ``handlers.validate``)."""

    job_id: str
    namespace: str
    entry: ModelEntry
    arguments: Arguments
    base: BaseModelRef | None
    model_name: str
    dataset_prefix: str
    classes: tuple[str, ...]
    train_images: int
    val_images: int
    has_masks: bool
    #: Extra facts for the manifest (CVAT task, ...).
    origin: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainedModel:
    namespace: str
    name: str
    version: int
    prefix: str
    model_type: str
    checkpoint: str
    classes: tuple[str, ...]
    metrics: dict[str, float]
    steps: int
    input_size: int
    manifest: dict[str, Any]


class Reporter(Protocol):
    """How the job tells the world how it goes (the handler puts it on job.status)."""

    def status(self, message: str, details: dict[str, str]) -> None: ...

    def progress(self, progress: TrainProgress, details: dict[str, str]) -> None: ...


def trained_from_manifest(manifest: dict[str, Any], prefix: str) -> TrainedModel:
    return TrainedModel(
        namespace=manifest["namespace"],
        name=manifest["name"],
        version=int(manifest["version"]),
        prefix=prefix,
        model_type=manifest["model_type"],
        checkpoint=manifest["checkpoint"],
        classes=tuple(manifest["classes"]),
        metrics={k: float(v) for k, v in manifest.get("metrics", {}).items()},
        steps=int(manifest["steps"]),
        input_size=int(manifest["input_size"]),
        manifest=manifest,
    )


def find_finished(storage: Storage, spec: JobSpec) -> TrainedModel | None:
    """The finished model of this job, if an earlier delivery made it."""
    version = versions.find_claim(storage, spec.namespace, spec.model_name, spec.job_id)
    if version is None:
        return None
    prefix = model_prefix(spec.namespace, spec.model_name, version)
    manifest = read_manifest(storage, prefix)
    return trained_from_manifest(manifest, prefix) if manifest else None


class _Folder:
    """The job's local work folder."""

    def __init__(self, settings: TrainerSettings, spec: JobSpec) -> None:
        self.root = (
            Path(settings.trainer_work_dir) / check_name(spec.namespace) / check_name(spec.job_id)
        )
        self.dataset = self.root / "dataset"
        self.model = self.root / "model"
        self.checkpoints = self.model / "checkpoints"
        self.tensorboard = self.model / "tensorboard"
        self.cache = self.root / "cache"


class _TensorBoardSync:
    """Uploads the local TensorBoard folder's new or grown files."""

    def __init__(self, storage: Storage, local: Path, prefix: str) -> None:
        self.storage, self.local, self.prefix = storage, local, prefix + "tensorboard/"
        self.sent: dict[str, tuple[int, float]] = {}

    def __call__(self) -> None:
        if not self.local.is_dir():
            return
        for path in sorted(p for p in self.local.rglob("*") if p.is_file()):
            rel = path.relative_to(self.local).as_posix()
            stat = path.stat()
            mark = (stat.st_size, stat.st_mtime)
            if self.sent.get(rel) != mark:
                self.storage.upload_file(self.prefix + rel, path)
                self.sent[rel] = mark


def run(
    storage: Storage,
    settings: TrainerSettings,
    spec: JobSpec,
    catalog: Catalog,
    reporter: Reporter,
    *,
    should_stop=lambda: False,
    should_interrupt=lambda: False,
) -> TrainedModel:
    """Train ``spec`` to a finished model version (or return the one made before)."""
    entry = spec.entry
    version = versions.claim(
        storage, spec.namespace, spec.model_name, spec.job_id, {"model_type": entry.name}
    )
    prefix = model_prefix(spec.namespace, spec.model_name, version)
    found = read_manifest(storage, prefix)
    if found is not None:
        return trained_from_manifest(found, prefix)
    try:
        return _train(
            storage,
            settings,
            spec,
            catalog,
            reporter,
            version,
            prefix,
            should_stop,
            should_interrupt,
        )
    except BaseException as exc:
        if not (isinstance(exc, Interrupted) or is_retryable(exc)):
            storage.delete_prefix(prefix)  # cancelled or failed for good: nothing half-written
            shutil.rmtree(_Folder(settings, spec).root, ignore_errors=True)
        raise


def _train(
    storage: Storage,
    settings: TrainerSettings,
    spec: JobSpec,
    catalog: Catalog,
    reporter: Reporter,
    version: int,
    prefix: str,
    should_stop,
    should_interrupt,
) -> TrainedModel:
    entry = spec.entry
    folder = _Folder(settings, spec)
    model_ref = f"{spec.namespace}/{spec.model_name}/{version}"
    details: dict[str, str] = {"model": model_ref, "version": str(version)}
    reporter.status(f"downloading dataset {spec.dataset_prefix}", details)
    data = dataset.fetch(storage, spec.dataset_prefix, folder.dataset)
    plan = arguments_lib.resolve(spec.arguments, entry, spec.train_images)
    details.update(plan.details())

    # Resume from storage's newest checkpoint, else decide how the model starts.
    shutil.rmtree(folder.model, ignore_errors=True)
    folder.checkpoints.mkdir(parents=True, exist_ok=True)
    resume = checkpoints.download_latest(storage, prefix, folder.checkpoints)
    previous = _read_json(storage, prefix + TRAINING_FILE)
    if resume is not None and previous.get("init"):
        first = previous[
            "init"
        ]  # how the interrupted run started; its weights are in the checkpoint
        init = InitSpec(
            str(first.get("kind", "")),
            None,
            tuple(first.get("modules", ())),
            first.get("source", ""),
        )
    else:
        init = initialisation.choose(
            storage,
            entry=entry,
            catalog=catalog,
            classes=list(spec.classes),
            base=spec.base,
            coco=settings.trainer_coco_checkpoints.get(entry.name),
            cache_dir=folder.cache,
        )
    details.update(init.details())
    if resume is not None:
        details["resumed_from_step"] = str(resume.step)
    storage.put(
        prefix + TRAINING_FILE,
        json.dumps(
            {
                "job_id": spec.job_id,
                "init": {"kind": init.kind, "modules": list(init.modules), "source": init.source},
                "plan": plan.details(),
                "arguments": spec.arguments.text,
            },
            indent=2,
            sort_keys=True,
        ).encode(),
    )

    # The experiment, and what travels beside the checkpoints.
    params, session_inputs = _experiment(entry, plan, data, spec, settings, folder)
    from preannotate.vision import experiment as experiment_lib

    experiment_text = experiment_lib.dump(params)
    storage.put(prefix + "experiment.yaml", experiment_text.encode())
    storage.put(prefix + "classes.csv", classes_csv(spec.classes).encode())

    from services.trainer import training

    strategy = training.make_strategy(plan.num_clones)
    details["devices"] = ",".join(strategy.extended.worker_devices)
    session = training.Session(
        params, strategy, folder.checkpoints, keep_checkpoints=settings.trainer_keep_checkpoints
    )
    resumed_from = session.restore_latest()
    if resumed_from is None:
        session.initialise(init)
    uploaded: set[int] = set(checkpoints.stored_steps(storage, prefix)) & (
        {resume.step} if resume else set()
    )
    tensorboard = _TensorBoardSync(storage, folder.tensorboard, prefix)

    def on_checkpoint(step: int) -> None:
        checkpoints.upload(storage, folder.checkpoints, prefix, uploaded)
        tensorboard()

    def on_progress(progress: TrainProgress) -> None:
        if progress.stage:
            details["stage"] = progress.stage
        reporter.progress(progress, dict(details))

    reporter.status(
        f"training {entry.name} {model_ref}: {plan.steps} steps"
        + (f", resuming at step {resumed_from}" if resumed_from else ""),
        details,
    )
    outcome = session.train(
        plan,
        training.Callbacks(
            should_stop=should_stop,
            should_interrupt=should_interrupt,
            on_progress=on_progress,
            on_checkpoint=on_checkpoint,
        ),
        checkpoint_every=session_inputs.checkpoint_every,
        summary_dir=folder.tensorboard / "train",
        summary_every=settings.trainer_summary_every,
        progress_seconds=settings.trainer_progress_seconds,
        resumed_from=resumed_from,
    )
    checkpoints.upload(storage, folder.checkpoints, prefix, uploaded)

    raw: dict[str, float] = {}
    if plan.evaluate and spec.val_images > 0 and data.val_files:
        reporter.status(f"evaluating {model_ref} on {spec.val_images} validation images", details)
        raw = session.evaluate(folder.tensorboard / "eval")
    tensorboard()
    from services.trainer import evaluation

    metrics = evaluation.summary(raw)
    if raw:
        metrics["loss"] = outcome.loss
    step = outcome.step
    ckpt_key = checkpoints.checkpoint_key(prefix, step)
    manifest = _finish(
        storage,
        spec,
        plan,
        init,
        version,
        prefix,
        step,
        ckpt_key,
        metrics,
        raw,
        experiment_text,
        folder,
    )
    if not settings.trainer_keep_local:
        shutil.rmtree(folder.root, ignore_errors=True)
    return trained_from_manifest(manifest, prefix)


def _experiment(entry, plan: Plan, data, spec: JobSpec, settings: TrainerSettings, folder):
    from services.trainer import evaluation
    from services.trainer.configs import ExperimentInputs, build_experiment

    regenerate = not evaluation.numeric_source_ids(data.val_files or data.train_files)
    annotation = None
    if plan.evaluate and spec.val_images > 0 and data.val_files:
        annotation = str(
            evaluation.write_annotations(
                data.val_pattern,
                folder.cache / "val_annotations.json",
                include_mask=entry.has_masks,
                regenerate_source_id=regenerate,
            )
        )
    inputs = ExperimentInputs(
        num_classes=len(spec.classes) + 1,
        train_pattern=data.train_pattern,
        val_pattern=data.val_pattern if data.val_files else data.train_pattern,
        annotation_file=annotation,
        regenerate_source_id=regenerate,
        eval_batch_size=settings.trainer_eval_batch_per_replica * plan.num_clones,
        val_images=spec.val_images,
        checkpoint_every=plan.checkpoint_every or settings.trainer_checkpoint_every,
    )
    return build_experiment(entry, plan, inputs), inputs


def _finish(
    storage: Storage,
    spec: JobSpec,
    plan: Plan,
    init: InitSpec,
    version: int,
    prefix: str,
    step: int,
    ckpt_key: str,
    metrics: dict[str, float],
    raw: dict[str, float],
    experiment_text: str,
    folder: _Folder,
) -> dict[str, Any]:
    """metrics.json, then the manifest last (with every file of the version)."""
    entry = spec.entry
    writer = PrefixWriter(storage, prefix)
    writer.put("experiment.yaml", experiment_text.encode())
    writer.put("classes.csv", classes_csv(spec.classes).encode())
    writer.put(
        "metrics.json",
        json.dumps(
            {"metrics": metrics, "coco": raw, "step": step, "val_images": spec.val_images},
            indent=2,
            sort_keys=True,
        ).encode(),
    )
    ckpt_folder = ckpt_key.rsplit("/", 1)[0] + "/"
    for path in sorted(folder.checkpoints.glob(f"ckpt-{step}.*")):
        writer.record(ckpt_folder[len(prefix) :] + path.name, path)
    return writer.commit(
        {
            "kind": MANIFEST_KIND,
            "job_id": spec.job_id,
            "namespace": spec.namespace,
            "name": spec.model_name,
            "version": version,
            "model_type": entry.name,
            "family": entry.family,
            "experiment": entry.experiment,
            "backbone": entry.backbone,
            "classes": list(spec.classes),
            "num_classes": len(spec.classes) + 1,
            "has_masks": entry.has_masks,
            "input_size": plan.input_size,
            "steps": step,
            "checkpoint": ckpt_key,
            "metrics": metrics,
            "init": init.details(),
            "plan": plan.details(),
            "arguments": spec.arguments.text,
            "dataset_prefix": spec.dataset_prefix,
            "base_model": str(spec.base) if spec.base else "",
            **({"origin": spec.origin} if spec.origin else {}),
        }
    )


def _read_json(storage: Storage, key: str) -> dict[str, Any]:
    from preannotate.errors import NotFound

    try:
        return json.loads(storage.get(key))
    except (NotFound, json.JSONDecodeError):
        return {}
