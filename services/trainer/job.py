"""One training job, start to finish (blocking; the handler runs it in a thread).

1. Claim the model's version (``claim``, with ``versions``): the next free
   integer under ``<ns>/models/<name>/``, or the one this job claimed before.
   The ``TrainingRun`` it returns names the version and its storage keys; a
   version whose manifest exists is finished (``find_finished``).
2. Download the dataset (``dataset``) and resolve the plan (steps, batch, ...).
3. Resume from the newest stored checkpoint, or decide how the model starts
   (``initialisation``: base model, the model type's published weights from
   the weights store, or random with ``pretrained=false``).
4. Build the Model Garden experiment (``configs``), write ``experiment.yaml``
   and ``classes.csv``, train (``training``) while checkpoints and TensorBoard
   files go up to storage after every save (``checkpoints``).
5. Evaluate on the model's frozen evaluation set (``evalset``: the first
   training's validation split, never trained on by later ones), write
   ``metrics.json``, and the model prefix's ``manifest.json`` last: only that
   marks the version finished.

A cancel, or a failure no retry can fix, deletes the version's prefix
(nothing half-written stays); a shutdown or a retryable failure keeps it, so
the redelivered job resumes from its last checkpoint.

``fence`` (the handler passes ``Lease.check``) runs before every write to
storage: the job's files, each checkpoint upload, the manifest. Once another
worker holds the job it raises ``LeaseLost`` (an ``Interrupted``), and this
worker writes and deletes nothing more; the record stays uncommitted.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from preannotate import arguments as arguments_lib
from preannotate.arguments import Plan
from preannotate.catalog import Catalog
from preannotate.classes import classes_csv
from preannotate.errors import Interrupted, NotFound, is_retryable
from preannotate.keys import check_name
from preannotate.storage import PrefixWriter, Storage, read_manifest
from services.trainer import checkpoints, dataset, evalset, initialisation, versions
from services.trainer.dataset import LocalDataset
from services.trainer.initialisation import InitSpec
from services.trainer.progress import TrainProgress
from services.trainer.run import TrainingRequest, TrainingRun
from services.trainer.settings import TrainerSettings

MANIFEST_KIND = "model"


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


def claim(*, storage: Storage, request: TrainingRequest) -> TrainingRun:
    """The run of ``request``: the version this job claimed before, or a fresh one."""
    version = versions.claim(
        storage,
        request.namespace,
        request.model_name,
        request.job_id,
        {"model_type": request.entry.name},
    )
    return TrainingRun(request=request, version=version)


def find_finished(*, storage: Storage, run: TrainingRun) -> TrainedModel | None:
    """The finished model of this run, if an earlier delivery made it."""
    manifest = read_manifest(storage, run.prefix)
    return trained_from_manifest(manifest, run.prefix) if manifest else None


class _Folder:
    """The job's local work folder."""

    def __init__(self, settings: TrainerSettings, run: TrainingRun) -> None:
        request = run.request
        self.root = (
            Path(settings.trainer_work_dir)
            / check_name(request.namespace)
            / check_name(request.job_id)
        )
        self.dataset = self.root / "dataset"
        self.model = self.root / "model"
        self.checkpoints = self.model / "checkpoints"
        self.tensorboard = self.model / "tensorboard"
        self.cache = self.root / "cache"


class _TensorBoardSync:
    """Uploads the local TensorBoard folder's new or grown files (after ``fence``)."""

    def __init__(
        self, storage: Storage, local: Path, prefix: str, fence: Callable[[], None]
    ) -> None:
        self.storage, self.local, self.prefix, self.fence = storage, local, prefix, fence
        self.sent: dict[str, tuple[int, float]] = {}

    def __call__(self) -> None:
        if not self.local.is_dir():
            return
        changed = []
        for path in sorted(p for p in self.local.rglob("*") if p.is_file()):
            stat = path.stat()
            mark = (stat.st_size, stat.st_mtime)
            rel = path.relative_to(self.local).as_posix()
            if self.sent.get(rel) != mark:
                changed.append((rel, path, mark))
        if changed:
            self.fence()  # one lease read per sync, not one per file
        for rel, path, mark in changed:
            self.storage.upload_file(self.prefix + rel, path)
            self.sent[rel] = mark


def train(
    *,
    storage: Storage,
    settings: TrainerSettings,
    run: TrainingRun,
    catalog: Catalog,
    reporter: Reporter,
    should_stop: Callable[[], bool] = lambda: False,
    should_interrupt: Callable[[], bool] = lambda: False,
    fence: Callable[[], None] = lambda: None,
) -> TrainedModel:
    """Train ``run`` to a finished model version (or return the one made before)."""
    found = find_finished(storage=storage, run=run)
    if found is not None:
        return found
    folder = _Folder(settings, run)
    try:
        return _train(
            storage=storage,
            settings=settings,
            run=run,
            catalog=catalog,
            reporter=reporter,
            folder=folder,
            should_stop=should_stop,
            should_interrupt=should_interrupt,
            fence=fence,
        )
    except BaseException as exc:
        if not (isinstance(exc, Interrupted) or is_retryable(exc)):
            fence()  # a worker that lost the job deletes nothing either
            storage.delete_prefix(run.prefix)  # cancelled or failed for good: nothing half-written
            shutil.rmtree(folder.root, ignore_errors=True)
        raise


def _train(
    *,
    storage: Storage,
    settings: TrainerSettings,
    run: TrainingRun,
    catalog: Catalog,
    reporter: Reporter,
    folder: _Folder,
    should_stop: Callable[[], bool],
    should_interrupt: Callable[[], bool],
    fence: Callable[[], None],
) -> TrainedModel:
    prefix = run.prefix
    details: dict[str, str] = {"model": str(run), "version": str(run.version)}
    reporter.status(f"downloading dataset {run.request.dataset_prefix}", details)
    data = dataset.fetch(storage, run.request.dataset_prefix, folder.dataset)
    # The model's frozen evaluation set: frozen now, or left out of training and
    # used for evaluation (the run's image counts follow).
    prepared = evalset.prepare(storage, run, data, folder.root / "split")
    data, run = prepared.data, prepared.run
    request, entry = run.request, run.request.entry
    details["evaluation_set"] = prepared.record.get("set") or "none"
    plan = arguments_lib.resolve(
        request.arguments, entry, request.train_images, median_long_side=data.median_long_side
    )
    details.update(plan.details())

    # Resume from storage's newest checkpoint, else decide how the model starts.
    shutil.rmtree(folder.model, ignore_errors=True)
    folder.checkpoints.mkdir(parents=True, exist_ok=True)
    resume = checkpoints.download_latest(storage, prefix, folder.checkpoints)
    previous = _read_json(storage, run.training_key)
    if resume is not None and previous.get("init"):
        # How the interrupted run started; its weights are in the checkpoint.
        init = InitSpec.from_record(previous["init"])
    else:
        weights = None
        if request.base is None and plan.pretrained:  # else the store is not touched
            reporter.status(f"getting the starting weights of {entry.name}", details)
            weights = _weights_store(storage, settings)
        init = initialisation.choose(
            storage,
            entry=entry,
            catalog=catalog,
            classes=list(request.classes),
            base=request.base,
            pretrained=plan.pretrained,
            weights=weights,
            cache_dir=folder.cache,
        )
    details.update(init.details())
    if resume is not None:
        details["resumed_from_step"] = str(resume.step)
    fence()
    storage.put(
        run.training_key,
        json.dumps(
            {
                "job_id": request.job_id,
                "init": init.record(),
                "plan": plan.details(),
                "arguments": request.arguments.text,
            },
            indent=2,
            sort_keys=True,
        ).encode(),
    )

    # The experiment, and what travels beside the checkpoints.
    params, inputs = _experiment(run=run, plan=plan, data=data, settings=settings, folder=folder)
    from preannotate.vision import experiment as experiment_lib

    experiment_text = experiment_lib.dump(params)
    fence()
    storage.put(prefix + "experiment.yaml", experiment_text.encode())
    storage.put(prefix + "classes.csv", classes_csv(request.classes).encode())

    from services.trainer import training
    from services.trainer.configs import common as configs_common

    strategy = training.make_strategy(plan.num_clones)
    details["devices"] = ",".join(strategy.extended.worker_devices)
    session = training.Session(
        params,
        strategy,
        folder.checkpoints,
        keep_checkpoints=settings.trainer_keep_checkpoints,
        train_params=configs_common.training_view(params, plan) if plan.crop_size else None,
    )
    resumed_from = session.restore_latest()
    if resumed_from is None:
        session.initialise(init)
    uploaded = checkpoints.adopt(storage, prefix, resume.step if resume else None, fence)
    tensorboard = _TensorBoardSync(storage, folder.tensorboard, run.tensorboard_prefix, fence)

    def on_checkpoint(step: int) -> None:
        checkpoints.upload(storage, folder.checkpoints, prefix, uploaded, fence)
        tensorboard()

    def on_progress(progress: TrainProgress) -> None:
        if progress.stage:
            details["stage"] = progress.stage
        reporter.progress(progress, dict(details))

    reporter.status(
        f"training {entry.name} {run}: {plan.steps} steps"
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
        checkpoint_every=inputs.checkpoint_every,
        summary_dir=folder.tensorboard / "train",
        summary_every=settings.trainer_summary_every,
        progress_seconds=settings.trainer_progress_seconds,
        resumed_from=resumed_from,
        norm_batches=settings.trainer_norm_batches,
    )
    if outcome.norms_recomputed:
        details["batchnorm"] = (
            f"{outcome.norms_recomputed} layers' averages from "
            f"{settings.trainer_norm_batches} training batches"
        )
    checkpoints.upload(storage, folder.checkpoints, prefix, uploaded, fence)

    raw: dict[str, float] = {}
    if plan.evaluate and request.val_images > 0 and data.val_files:
        reporter.status(f"evaluating {run} on {request.val_images} validation images", details)
        raw = session.evaluate(folder.tensorboard / "eval")
    tensorboard()
    from services.trainer import evaluation

    metrics = evaluation.summary(raw)
    if raw:
        metrics["loss"] = outcome.loss
    manifest = _manifest(
        run=run,
        plan=plan,
        init=init,
        step=outcome.step,
        checkpoint=checkpoints.checkpoint_key(prefix, outcome.step),
        metrics=metrics,
        evaluation=evalset.freeze(storage, prepared, fence)
        if raw
        else {**prepared.record, "set": "", "note": "not evaluated (eval=false)"},
    )
    manifest = _finish(
        storage=storage,
        run=run,
        folder=folder,
        experiment_text=experiment_text,
        coco=raw,
        manifest=manifest,
        fence=fence,
    )
    if not settings.trainer_keep_local:
        shutil.rmtree(folder.root, ignore_errors=True)
    return trained_from_manifest(manifest, prefix)


def _weights_store(storage: Storage, settings: TrainerSettings):
    """The deployment's weights store (``weights/<model-type>/``), from the settings."""
    from preannotate.weights import WeightsStore

    return WeightsStore(
        storage,
        mirror=settings.weights_mirror,
        urls=settings.weights_urls,
        timeout=settings.weights_timeout_seconds,
    )


def _experiment(
    *, run: TrainingRun, plan: Plan, data: LocalDataset, settings: TrainerSettings, folder: _Folder
):
    """The locked experiment config and the inputs it was built from."""
    from services.trainer import evaluation
    from services.trainer.configs import ExperimentInputs, build_experiment

    request = run.request
    regenerate = not evaluation.numeric_source_ids(data.val_files or data.train_files)
    annotation = None
    if plan.evaluate and request.val_images > 0 and data.val_files:
        annotation = str(
            evaluation.write_annotations(
                data.val_pattern,
                folder.cache / "val_annotations.json",
                include_mask=request.entry.has_masks,
                regenerate_source_id=regenerate,
            )
        )
    inputs = ExperimentInputs(
        num_classes=len(request.classes) + 1,
        train_pattern=data.train_pattern,
        val_pattern=data.val_pattern if data.val_files else data.train_pattern,
        annotation_file=annotation,
        regenerate_source_id=regenerate,
        eval_batch_size=evaluation.batch_size(
            request.val_images, settings.trainer_eval_batch_per_replica * plan.num_clones
        ),
        val_images=request.val_images,
        checkpoint_every=plan.checkpoint_every or settings.trainer_checkpoint_every,
    )
    return build_experiment(request.entry, plan, inputs), inputs


def _manifest(
    *,
    run: TrainingRun,
    plan: Plan,
    init: InitSpec,
    step: int,
    checkpoint: str,
    metrics: dict[str, float],
    evaluation: dict[str, Any],
) -> dict[str, Any]:
    """The model version's manifest (``PrefixWriter.commit`` adds its files)."""
    request, entry = run.request, run.request.entry
    return {
        "kind": MANIFEST_KIND,
        "job_id": request.job_id,
        "namespace": request.namespace,
        "name": request.model_name,
        "version": run.version,
        "model_type": entry.name,
        "family": entry.family,
        "experiment": entry.experiment,
        "backbone": entry.backbone,
        "classes": list(request.classes),
        "num_classes": len(request.classes) + 1,
        "has_masks": entry.has_masks,
        "input_size": plan.input_size,
        "steps": step,
        "checkpoint": checkpoint,
        "metrics": metrics,
        "evaluation": evaluation,
        "init": init.details(),
        "plan": plan.details(),
        "arguments": request.arguments.text,
        "dataset_prefix": request.dataset_prefix,
        "base_model": str(request.base) if request.base else "",
        **({"origin": request.origin} if request.origin else {}),
    }


def _finish(
    *,
    storage: Storage,
    run: TrainingRun,
    folder: _Folder,
    experiment_text: str,
    coco: dict[str, float],
    manifest: dict[str, Any],
    fence: Callable[[], None],
) -> dict[str, Any]:
    """metrics.json, then the manifest last (with every file of the version)."""
    request, step = run.request, manifest["steps"]
    fence()
    writer = PrefixWriter(storage, run.prefix)
    writer.put("experiment.yaml", experiment_text.encode())
    writer.put("classes.csv", classes_csv(request.classes).encode())
    writer.put(
        "metrics.json",
        json.dumps(
            {
                "metrics": manifest["metrics"],
                "coco": coco,
                "step": step,
                "val_images": request.val_images,
                "evaluation": manifest["evaluation"],
                "init": manifest["init"],
            },
            indent=2,
            sort_keys=True,
        ).encode(),
    )
    checkpoint_folder = manifest["checkpoint"].rsplit("/", 1)[0] + "/"
    for path in sorted(folder.checkpoints.glob(f"ckpt-{step}.*")):
        writer.record(checkpoint_folder[len(run.prefix) :] + path.name, path)
    fence()  # the manifest publishes the version: only while this worker holds the job
    return writer.commit(manifest)


def _read_json(storage: Storage, key: str) -> dict[str, Any]:
    try:
        return json.loads(storage.get(key))
    except (NotFound, json.JSONDecodeError):
        return {}
