"""What one training job is about: the validated request, then the run with its version.

``TrainingRequest`` is a ``DatasetExported`` event once ``handlers.validate``
has checked it: nothing is read from storage to build it. ``TrainingRun`` is
that request plus the model version the job claimed (``job.claim``), and so
every storage key the job writes. Both are frozen; the handler builds the run
once and the job's functions take it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from preannotate.arguments import Arguments, BaseModelRef
from preannotate.catalog import ModelEntry
from preannotate.keys import check_version, model_prefix

#: Written before training: how the run started (a resumed run reads it back).
TRAINING_FILE = "training.json"
TENSORBOARD = "tensorboard/"


@dataclass(frozen=True)
class TrainingRequest:
    """What the trainer was asked, validated (see ``handlers.validate``)."""

    job_id: str
    namespace: str
    #: The model's name; its version is chosen when the job claims one.
    model_name: str
    #: The catalog entry of the model type.
    entry: ModelEntry
    arguments: Arguments
    #: The model this one starts from (same namespace; version 0: its newest).
    base: BaseModelRef | None
    #: Where the exporter left the dataset: ``<namespace>/datasets/<job_id>/``.
    dataset_prefix: str
    classes: tuple[str, ...]
    train_images: int
    val_images: int
    has_masks: bool
    #: Extra facts for the manifest (CVAT task, ...).
    origin: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingRun:
    """A request and the model version it trains: ``<namespace>/models/<name>/<version>/``."""

    request: TrainingRequest
    version: int

    def __post_init__(self) -> None:
        check_version(self.version)

    @property
    def prefix(self) -> str:
        """The model version's storage prefix."""
        return model_prefix(self.request.namespace, self.request.model_name, self.version)

    @property
    def training_key(self) -> str:
        return self.prefix + TRAINING_FILE

    @property
    def tensorboard_prefix(self) -> str:
        return self.prefix + TENSORBOARD

    def __str__(self) -> str:
        """``<namespace>/<name>/<version>``, for people (status lines and details)."""
        return f"{self.request.namespace}/{self.request.model_name}/{self.version}"
