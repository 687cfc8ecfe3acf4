"""The names of a model's quality figures, as the trainer writes them and others read.

One version's figures travel as a name -> number map: ``metrics.json`` beside
its checkpoints, ``ModelTrained.metrics``, the serving manifest and the model
listings. The trainer computes them on the validation split
(``services.trainer.evaluation``); promotion compares ``MAP_50``; inference
takes ``SUGGESTED_THRESHOLD`` for a run that sets no threshold.
"""

from __future__ import annotations

#: COCO's AP at IoU 0.5 over the labels.
MAP_50 = "mAP@0.5"
#: The score threshold at the best F1 at IoU 0.5 (``services.trainer.evaluation``).
SUGGESTED_THRESHOLD = "suggested_threshold"
#: Of the boxes kept at that threshold, the share that is right.
PRECISION_AT_SUGGESTED = "precision@" + SUGGESTED_THRESHOLD
#: Of the objects, the share found at that threshold.
RECALL_AT_SUGGESTED = "recall@" + SUGGESTED_THRESHOLD
