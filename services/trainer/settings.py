"""The trainer's settings: its pool, local work folder, checkpoints, progress.

Every field is read from ``PREANNOTATE_<FIELD>`` (upper case), e.g.
``PREANNOTATE_MACHINE_TYPE=gpu-4``, ``PREANNOTATE_TRAINER_CHECKPOINT_EVERY=1000``.
The pools and their GPU counts (``PREANNOTATE_MACHINE_TYPES="cpu=0,gpu-4=4"``)
come from ``ServiceSettings``; ``machine_type`` says which pool this worker
serves, so its GPU count is the pool's.

The weights a model starts from come from the weights store
(``preannotate.weights``, storage's ``weights/<model-type>/``), configured by
``ServiceSettings``' ``weights_mirror``, ``weights_urls`` and
``weights_timeout_seconds``: one home for starting weights. An operator's own
checkpoint goes in with ``preannotate weights import MODEL FILE``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from preannotate.settings import ENV_PREFIX, ServiceSettings


class TrainerSettings(ServiceSettings):
    """Settings of one trainer worker (``PREANNOTATE_`` + field name in upper case)."""

    #: The pool this worker consumes: train.jobs.<machine_type>.
    machine_type: str = "cpu"
    #: Local cache of datasets and model folders (checkpoints, TensorBoard).
    trainer_work_dir: Path = Path("var/trainer")
    #: Steps between checkpoints (a job's checkpoint_every argument wins).
    trainer_checkpoint_every: int = Field(500, ge=1)
    #: Checkpoints kept per model version, locally and in storage.
    trainer_keep_checkpoints: int = Field(3, ge=1)
    #: Seconds between progress reports (job.status and the gauges).
    trainer_progress_seconds: float = Field(5.0, gt=0)
    #: Steps between TensorBoard points (loss, learning rate, images/s).
    trainer_summary_every: int = Field(10, ge=1)
    #: Training batches whose batch-norm statistics replace the moving averages
    #: before the last checkpoint (``services.trainer.batchnorm``; 0: keep the averages).
    trainer_norm_batches: int = Field(50, ge=0)
    #: Validation images per replica per evaluation step, at most: the batch is the
    #: largest from half of this up that divides the validation split, where one does
    #: (a last, partial batch would make TensorFlow trace the evaluation step again).
    trainer_eval_batch_per_replica: int = Field(2, ge=1)
    #: Keep the local copies (dataset, checkpoints) of a finished job.
    trainer_keep_local: bool = False
    #: Seconds a job's lease lasts without renewal (renewed every third of it while
    #: the job runs); a worker that died frees its job after this.
    trainer_lease_seconds: float = Field(60.0, gt=0)
    #: Seconds a delivery waits for another worker to let the job's lease go before
    #: it gives up with a retryable error.
    trainer_lease_wait_seconds: float = Field(120.0, ge=0)
    #: The promotion gate: a new version serves when its mAP@0.5 on the model's
    #: evaluation set is not below the promoted version's minus this.
    promotion_tolerance: float = Field(0.02, ge=0, le=1)

    @model_validator(mode="after")
    def _check_pool(self):
        if self.machine_type not in self.pools():
            raise ValueError(
                f"{ENV_PREFIX}MACHINE_TYPE {self.machine_type!r} is not one of "
                f"{ENV_PREFIX}MACHINE_TYPES {sorted(self.pools())}"
            )
        return self

    @property
    def machine_gpus(self) -> int:
        """GPUs of this worker's pool (0: a CPU pool, which trains on one device)."""
        return self.pools()[self.machine_type]
