"""The training loop: a Model Garden task under a distribution strategy, step by step.

``Session`` builds the task, model and optimizer from a locked experiment
config under ``tf.distribute.MirroredStrategy`` over the plan's GPUs (one CPU
device when there is none), restores the newest local checkpoint (resume: the
step counter goes on) or initialises from a base model or published weights,
and runs the steps itself rather than through Orbit, so that between any two
steps it can:

- stop on a cancel (``errors.Cancelled``) or a shutdown (checkpoint, then
  ``errors.Interrupted``: the record is redelivered and resumes);
- report progress (step, loss, learning rate, images/s, ETA) every few seconds;
- write TensorBoard scalars every few steps;
- save a checkpoint every N steps and at the end, and hand it to a callback
  (which uploads it);
- change which layers train at a Mask R-CNN stage boundary.

The checkpoint holds ``model``, ``optimizer`` and ``global_step`` (the
optimizer's iteration counter), as Model Garden's own trainer writes them, so
Model Garden's export restores ``model`` from it.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from preannotate.arguments import Plan
from preannotate.errors import Cancelled, FailedPrecondition, Interrupted
from preannotate.telemetry.logging import get_logger
from preannotate.vision.registry import register
from services.trainer import batchnorm, evaluation, stages
from services.trainer.initialisation import KERAS_H5, InitSpec
from services.trainer.progress import ProgressClock, TrainProgress


@dataclass
class Callbacks:
    #: A user asked to cancel the job.
    should_stop: Callable[[], bool] = lambda: False
    #: The service is shutting down: checkpoint and leave the job for redelivery.
    should_interrupt: Callable[[], bool] = lambda: False
    on_progress: Callable[[TrainProgress], None] = lambda progress: None
    #: Called with the step after each checkpoint is saved locally.
    on_checkpoint: Callable[[int], None] = lambda step: None


@dataclass(frozen=True)
class TrainOutcome:
    #: The step reached (the plan's total).
    step: int
    #: Local path prefix of the last checkpoint ("<dir>/ckpt-<step>").
    checkpoint: Path
    #: The step the run resumed from (None: it started fresh).
    resumed_from: int | None
    loss: float
    #: Batch-norm layers whose averages were recomputed before the last checkpoint.
    norms_recomputed: int = 0


def make_strategy(num_clones: int) -> tf.distribute.Strategy:
    """MirroredStrategy over the first ``num_clones`` GPUs; one CPU device without GPUs.

    Without GPUs, ``num_clones > 1`` runs over logical CPU devices when the process
    has split its CPU into that many (``tf.config.set_logical_device_configuration``):
    the same replicated step as on GPUs, which is how the tests check it.
    """
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        if num_clones == 1:
            return tf.distribute.OneDeviceStrategy("/cpu:0")
        cpus = tf.config.list_logical_devices("CPU")
        if len(cpus) < num_clones:
            raise FailedPrecondition(
                f"num_clones={num_clones}, and this trainer sees no GPU: check the machine type "
                "of the pool (PREANNOTATE_MACHINE_TYPES) against the worker's hardware"
            )
        return tf.distribute.MirroredStrategy(devices=[d.name for d in cpus[:num_clones]])
    if num_clones > len(gpus):
        raise FailedPrecondition(
            f"num_clones={num_clones}, and this trainer sees {len(gpus)} GPU(s)"
        )
    for gpu in gpus:  # take GPU memory as needed (the embedded mode shares the process)
        with contextlib.suppress(RuntimeError):  # already initialised: keep as it is
            tf.config.experimental.set_memory_growth(gpu, True)
    return tf.distribute.MirroredStrategy(devices=[f"/gpu:{i}" for i in range(num_clones)])


def _learning_rate(optimizer, step) -> float:
    lr = optimizer.learning_rate
    value = lr(step) if callable(lr) else lr
    return float(tf.convert_to_tensor(value))


def load_keras_h5(backbone, path: str, what: str) -> None:
    """A Keras Applications weights file (.h5) into ``backbone``, layer by layer in order.

    Loaded the way Keras loads ``weights="imagenet"``: by position, not by name
    (the file's auto-generated layer names are not this process's, and a load
    by name would skip them silently). The backbones of
    ``preannotate.vision.backbones`` keep the application's layers in the
    application's order; another layer count or shape is refused.
    """
    try:
        backbone.load_weights(path)
    except (OSError, ValueError) as exc:
        raise FailedPrecondition(
            f"{what} do not fit the backbone of this model ({backbone.name}): {exc}"
        ) from exc


class Session:
    """One model being trained: task, model, optimizer, checkpoints."""

    def __init__(
        self,
        params,
        strategy,
        model_dir: Path,
        *,
        keep_checkpoints: int = 3,
        train_params=None,
    ) -> None:
        """``params`` is the experiment evaluated and exported; ``train_params``, when
        given, the one the training steps run (``configs.common.training_view``: crops of
        another input size). The model then takes any input size."""
        from official.core import task_factory

        register()
        self.params = params
        self.train_params = train_params if train_params is not None else params
        self.strategy = strategy
        self.model_dir = Path(model_dir)
        self.model_dir.mkdir(parents=True, exist_ok=True)
        with strategy.scope():
            self.task = task_factory.get_task(params.task, logging_dir=str(self.model_dir))
            self.train_task = (
                self.task
                if train_params is None
                else task_factory.get_task(train_params.task, logging_dir=str(self.model_dir))
            )
            self.model = self._build_model()
            self.optimizer = self.task.create_optimizer(
                params.trainer.optimizer_config, params.runtime
            )
            self.checkpoint = tf.train.Checkpoint(
                global_step=self.optimizer.iterations, model=self.model, optimizer=self.optimizer
            )
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, str(self.model_dir), max_to_keep=keep_checkpoints
        )
        self._init_status = None
        self._init_spec: InitSpec | None = None

    def _build_model(self):
        """The task's model; of any input size when training runs on crops of another size."""
        if self.train_params is self.params:
            return self.task.build_model()
        from official.core import task_factory

        from preannotate.vision import experiment

        free = experiment.editable_copy(self.params)
        free.task.model.input_size = [None, None, 3]
        return task_factory.get_task(free.task).build_model()

    @property
    def step(self) -> int:
        return int(self.optimizer.iterations.numpy())

    # --- start: resume or initialise -------------------------------------------

    def restore_latest(self) -> int | None:
        """Restore the newest checkpoint of the model folder; its step, or None."""
        latest = self.manager.latest_checkpoint
        if not latest:
            return None
        self.checkpoint.restore(latest).expect_partial().assert_existing_objects_matched()
        return self.step

    def initialise(self, init: InitSpec) -> None:
        """Load the starting weights (base model, published weights) into the model.

        A TensorFlow checkpoint restores ``init.modules`` of the model (not the
        optimizer); a Keras .h5 file (ImageNet weights of a Keras Applications
        backbone) is loaded into the backbone.
        """
        if init.kind == "random" or init.checkpoint is None:
            return
        path = str(init.checkpoint)
        if init.format == KERAS_H5:
            load_keras_h5(self.model.backbone, path, f"the {init.kind} weights {init.source}")
            return
        try:
            saved = [name for name, _ in tf.train.list_variables(path)]
        except (tf.errors.OpError, ValueError) as exc:
            raise FailedPrecondition(
                f"cannot read the {init.kind} checkpoint {init.source}: {exc}"
            ) from exc
        if "all" in init.modules:
            reader = tf.train.Checkpoint(model=self.model)
        else:
            reader = self._partial_reader(init, saved)
        self._init_status = reader.read(path).expect_partial()
        self._init_spec = init

    def _partial_reader(self, init: InitSpec, saved: list[str]) -> tf.train.Checkpoint:
        """A reader that restores only ``init.modules`` of the model, wherever the file keeps them."""
        nested: dict[str, object] = {}
        flat: dict[str, object] = {}
        for module in init.modules:
            layer = getattr(self.model, module, None)
            if layer is None:
                continue
            for child in (module, "_" + module):
                if any(name.startswith(f"model/{child}/") for name in saved):
                    nested[child] = layer
                    break
            else:
                if any(name.startswith(f"{module}/") for name in saved):
                    flat[module] = layer  # Model Garden's checkpoint_items layout
        if "backbone" not in {name.lstrip("_") for name in (*nested, *flat)}:
            raise FailedPrecondition(
                f"the {init.kind} checkpoint {init.source} holds no backbone this model can use"
            )
        if nested:
            return tf.train.Checkpoint(model=tf.train.Checkpoint(**nested), **flat)
        return tf.train.Checkpoint(**flat)

    def _check_init(self) -> None:
        """After the first step every variable exists: the restored ones must have matched."""
        if self._init_status is None:
            return
        status, self._init_status = self._init_status, None
        try:
            status.assert_existing_objects_matched()
        except AssertionError as exc:
            spec = self._init_spec
            raise FailedPrecondition(
                f"the {spec.kind} checkpoint {spec.source} does not fit this model: {exc}"
            ) from exc

    # --- the loop ----------------------------------------------------------------

    def _make_step(self) -> Callable:
        """The training step, a ``tf.function``; every optimizer slot exists before it runs.

        A slot made inside the first call would make TensorFlow trace the step
        twice (variables may only be made on the first trace, which is then
        redone without them): a second trace of the whole model, tens of
        seconds on a CPU.
        """
        self.create_slots()
        task, model, optimizer, strategy = (
            self.train_task,
            self.model,
            self.optimizer,
            self.strategy,
        )

        @tf.function
        def train_step(iterator):
            def replica(inputs):
                return task.train_step(inputs, model, optimizer, None)

            logs = strategy.run(replica, args=(next(iterator),))
            return strategy.reduce(tf.distribute.ReduceOp.MEAN, logs[task.loss], axis=None)

        return train_step

    def _stage_bounds(self, plan: Plan) -> list[tuple[int, int, str]]:
        bounds, end = [], 0
        for stage in plan.stages:
            end += stage.steps
            bounds.append((stage.number, end, stage.trains))
        return bounds

    def create_slots(self) -> None:
        """Create the optimizer's slots of every trainable variable (a no-op for those made).

        ``train`` calls it while all layers are trainable, before stages freeze some."""
        create = getattr(self.optimizer, "_create_all_weights", None)
        if create is not None:
            with self.strategy.scope():
                create(self.model.trainable_variables)

    def train(
        self,
        plan: Plan,
        callbacks: Callbacks,
        *,
        checkpoint_every: int,
        summary_dir: Path,
        summary_every: int = 10,
        progress_seconds: float = 5.0,
        resumed_from: int | None = None,
        norm_batches: int = 0,
    ) -> TrainOutcome:
        """Train from the current step to ``plan.steps``.

        Before the last checkpoint, the batch-norm averages are recomputed over
        ``norm_batches`` training batches (``batchnorm.recompute``; 0: not).
        """
        total = plan.steps
        step = self.step
        dataset = self.strategy.distribute_datasets_from_function(
            lambda context: self.train_task.build_inputs(self.train_params.task.train_data, context)
        )
        iterator = iter(dataset)
        writer = tf.summary.create_file_writer(str(summary_dir))
        bounds = self._stage_bounds(plan)
        if bounds:
            self.create_slots()
        clock = ProgressClock(progress_seconds, plan.batch_size)
        clock.start(step)
        summary_time, summary_step = time.monotonic(), step
        current_stage = None
        train_step = None
        last_saved = step if resumed_from is not None else None
        loss = math.nan
        first = True
        norms = 0
        while step < total:
            if callbacks.should_stop():
                raise Cancelled(f"cancelled at step {step} of {total}")
            if callbacks.should_interrupt():
                if last_saved != step and step > 0:
                    self.manager.save(checkpoint_number=step)
                    callbacks.on_checkpoint(step)
                raise Interrupted(
                    f"the trainer is shutting down; stopped at step {step} of {total}"
                )
            stage_label = ""
            if bounds:
                number, trains = stages.stage_at(step, bounds)
                stage_label = f"{number}/{len(bounds)}"
                if number != current_stage:
                    stages.set_stage(self.model, trains)
                    train_step, current_stage = None, number
            if train_step is None:
                train_step = self._make_step()
            loss = float(train_step(iterator))
            step = self.step
            if first:
                self._check_init()
            if not math.isfinite(loss):
                raise FailedPrecondition(
                    f"the loss became {loss} at step {step}: lower initial_learning_rate "
                    f"(now {plan.learning_rate:g}) or check the dataset's boxes"
                )
            lr = None  # read from the schedule only on the steps that report it
            if step % summary_every == 0 or step == total:
                lr = _learning_rate(self.optimizer, step)
                now = time.monotonic()
                images = (step - summary_step) * plan.batch_size / max(now - summary_time, 1e-9)
                summary_time, summary_step = now, step
                with writer.as_default(step=step):
                    tf.summary.scalar("loss", loss)
                    tf.summary.scalar("learning_rate", lr)
                    tf.summary.scalar("images_per_second", images)
                writer.flush()
            if step == total and norm_batches:
                norms = self._recompute_norms(iterator, norm_batches)
            if step % checkpoint_every == 0 or step == total:
                self.manager.save(checkpoint_number=step)
                last_saved = step
                callbacks.on_checkpoint(step)
            if clock.due(step, total, first=first):
                if lr is None:
                    lr = _learning_rate(self.optimizer, step)
                images_per_second, eta = clock.measure(step, total)
                callbacks.on_progress(
                    TrainProgress(step, total, loss, lr, images_per_second, eta, stage_label)
                )
            first = False
        writer.close()
        latest = self.manager.latest_checkpoint
        if latest is None:
            raise FailedPrecondition("training ended without a checkpoint")
        return TrainOutcome(step, Path(latest), resumed_from, loss, norms)

    def _recompute_norms(self, iterator, batches: int) -> int:
        """The batch-norm averages from ``batches`` batches of ``iterator`` (training inputs)."""
        task, model = self.train_task, self.model
        started = time.monotonic()
        layers = batchnorm.recompute(
            model,
            self.strategy,
            lambda inputs: batchnorm.forward(task, model, inputs),
            iterator,
            batches,
        )
        get_logger(component="trainer").info(
            "batch-norm averages recomputed",
            layers=layers,
            batches=batches,
            seconds=round(time.monotonic() - started, 1),
        )
        return layers

    # --- evaluation ------------------------------------------------------------

    def evaluate(self, summary_dir: Path | None = None) -> dict[str, float]:
        """COCO metrics (pycocotools, through the task's evaluator) on the validation split.

        pycocotools prints its progress and tables; they go to the log, not stdout.
        """
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            result = self._evaluate(summary_dir)
        get_logger(component="trainer").info("COCO evaluation", output=printed.getvalue().strip())
        return result

    def _evaluate(self, summary_dir: Path | None) -> dict[str, float]:
        task, model, strategy = self.task, self.model, self.strategy
        if strategy.num_replicas_in_sync > 1:
            # Evaluate on one device: the last, partial batch split over several replicas
            # leaves some of them an empty batch, which the models' batch norm refuses.
            # (The default strategy, outside any scope: reads the mirrored variables.)
            strategy = tf.distribute.get_strategy()
        metrics = task.build_metrics(training=False)
        dataset = strategy.distribute_datasets_from_function(
            lambda context: task.build_inputs(self.params.task.validation_data, context)
        )

        @tf.function
        def eval_step(inputs):
            return strategy.run(
                lambda batch: task.validation_step(batch, model, metrics or None), args=(inputs,)
            )

        state = None
        for inputs in dataset:
            logs = eval_step(inputs)
            logs = tf.nest.map_structure(strategy.experimental_local_results, logs)
            state = task.aggregate_logs(state=state, step_outputs=logs)
        if state is None:
            return {}
        suggested = evaluation.suggest(task)  # before the evaluator reports and forgets
        raw = task.reduce_aggregated_logs(state)
        result = {k: float(v) for k, v in raw.items() if _is_scalar(v)} | suggested
        if summary_dir is not None:
            writer = tf.summary.create_file_writer(str(summary_dir))
            with writer.as_default(step=self.step):
                for key, value in result.items():
                    tf.summary.scalar(key, value)
            writer.close()
        return result


def _is_scalar(value) -> bool:
    try:
        return tf.size(value) == 1
    except (TypeError, ValueError):
        return False
