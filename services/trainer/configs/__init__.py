"""Builders: a catalog entry, a plan and a dataset -> a Model Garden experiment config.

One module per model family, named as the catalog's ``family``
(``retinanet``, ``fasterrcnn``, ``maskrcnn``); ``common`` holds what they
share (data, runtime, optimizer, backbones). The converter has no such
modules: one export (``services/converter/module.py``) serves every family,
telling RetinaNet from the R-CNNs by the experiment's model config.
Importing this package imports no TensorFlow; ``build_experiment`` does.
"""

from __future__ import annotations

from dataclasses import dataclass

from preannotate.arguments import Plan
from preannotate.catalog import ModelEntry


@dataclass(frozen=True)
class ExperimentInputs:
    """What the builders need from the dataset and the trainer."""

    #: Classes + 1 (0 is the background).
    num_classes: int
    train_pattern: str
    val_pattern: str
    #: COCO ground truth of the validation split (None: no evaluation).
    annotation_file: str | None
    #: True when the records' image/source_id cannot serve as COCO image ids.
    regenerate_source_id: bool
    eval_batch_size: int
    val_images: int
    checkpoint_every: int


def build_experiment(entry: ModelEntry, plan: Plan, inputs: ExperimentInputs):
    """The validated, locked ``ExperimentConfig`` that trains ``entry`` by ``plan``."""
    from services.trainer.configs import fasterrcnn, maskrcnn, retinanet

    builders = {
        "retinanet": retinanet.build,
        "fasterrcnn": fasterrcnn.build,
        "maskrcnn": maskrcnn.build,
    }
    params = builders[entry.family](entry, plan, inputs)
    params.validate()
    params.lock()
    return params
