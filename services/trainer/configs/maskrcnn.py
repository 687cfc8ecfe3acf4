"""maskrcnn: Model Garden's maskrcnn_resnetfpn_coco, trained in three stages.

The config is one experiment for all three stages (the learning rate drops to
the last stage's fraction at its start, see ``common.optimizer``); which
layers train in each stage is the training loop's business
(``services/trainer/stages.py``).
"""

from __future__ import annotations

from preannotate.arguments import Plan
from preannotate.catalog import ModelEntry
from preannotate.vision import experiment
from services.trainer.configs import ExperimentInputs, common


def build(entry: ModelEntry, plan: Plan, inputs: ExperimentInputs):
    params = experiment.base(entry.experiment)
    params.task.model.include_mask = True
    common.apply(params, entry, plan, inputs)
    common.rcnn(params, plan)
    params.task.model.mask_sampler.num_sampled_masks = plan.num_sampled_masks
    return params
