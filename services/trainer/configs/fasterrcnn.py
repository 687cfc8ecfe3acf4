"""The Faster R-CNN models: Model Garden's fasterrcnn_resnetfpn_coco with the entry's backbone.

ResNet-50 / -101 are Model Garden's own; Inception-ResNet-v2 and NASNet come
from ``preannotate.vision``. The low-proposal model differs only in the RPN
proposals it keeps (the plan's ``first_stage_max_proposals``).
"""

from __future__ import annotations

from preannotate.arguments import Plan
from preannotate.catalog import ModelEntry
from preannotate.vision import experiment
from services.trainer.configs import ExperimentInputs, common


def build(entry: ModelEntry, plan: Plan, inputs: ExperimentInputs):
    params = experiment.base(entry.experiment)
    model = params.task.model
    model.include_mask = False
    model.mask_head = None
    model.mask_sampler = None
    model.mask_roi_aligner = None
    common.apply(params, entry, plan, inputs)
    return common.rcnn(params, plan)
