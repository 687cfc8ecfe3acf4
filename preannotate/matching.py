"""Which boxes found an object, and what a score threshold makes of them.

A person correcting pre-annotations deletes every box that matches no object
and draws every object no box matched. ``match`` pairs detections with ground
truth as COCO's evaluation does at one IoU (pycocotools, a label's boxes with
that label's objects, best score first, at most 100 boxes an image);
``at`` gives the precision and recall of the boxes kept at a threshold, and
``best_f1`` the threshold where F1 peaks. The trainer suggests that threshold
for each model (on its validation split); the quickstart reports precision and
recall of what it wrote on the held-out images.
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Matches:
    """Detections' scores, highest first, whether each matched an object, and the
    number of objects to find."""

    scores: np.ndarray
    hits: np.ndarray
    objects: int


@dataclass(frozen=True)
class Point:
    """A threshold and the precision, recall and F1 of the boxes it keeps."""

    threshold: float
    precision: float
    recall: float
    f1: float


def match(truth: Any, detections: list[dict], iou: float = 0.5) -> Matches:
    """``detections`` (COCO results: ``image_id``, ``category_id``, ``bbox`` as x, y,
    w, h, ``score``) against ``truth`` (a pycocotools ``COCO``), over all its images."""
    from pycocotools.cocoeval import COCOeval

    empty = Matches(np.zeros(0), np.zeros(0, dtype=bool), 0)
    if not truth.getAnnIds():
        return empty
    if not detections:
        return Matches(empty.scores, empty.hits, len(truth.getAnnIds(iscrowd=False)))
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(truth, truth.loadRes(detections), iouType="bbox")
        params = evaluator.params
        params.imgIds = sorted(truth.getImgIds())
        params.iouThrs = np.array([iou])
        params.areaRng, params.areaRngLbl, params.maxDets = [[0, 1e10]], ["all"], [100]
        evaluator.evaluate()
    scores, hits, objects = [], [], 0
    for image in evaluator.evalImgs:
        if image is None:
            continue
        objects += int(np.count_nonzero(~np.asarray(image["gtIgnore"], dtype=bool)))
        counted = ~np.asarray(image["dtIgnore"][0], dtype=bool)
        scores.append(np.asarray(image["dtScores"], dtype=float)[counted])
        hits.append(np.asarray(image["dtMatches"][0])[counted] > 0)
    if not scores:
        return Matches(empty.scores, empty.hits, objects)
    score, hit = np.concatenate(scores), np.concatenate(hits)
    order = np.argsort(-score, kind="stable")
    return Matches(score[order], hit[order], objects)


def at(matches: Matches, threshold: float) -> Point:
    """The boxes scored at or above ``threshold``: right / kept, found / objects."""
    kept = matches.scores >= threshold
    right = int(np.count_nonzero(matches.hits[kept]))
    return _point(threshold, right, int(np.count_nonzero(kept)) - right, matches.objects)


def best_f1(matches: Matches) -> Point | None:
    """The threshold with the best F1: the lowest score it keeps, rounded down to a
    thousandth so that a box scored exactly there is kept. A threshold keeps every
    box of its score, so equal scores count together. None when no box is right."""
    if not matches.objects or not matches.hits.any():
        return None
    right, wrong = np.cumsum(matches.hits), np.cumsum(~matches.hits)
    scores = matches.scores
    last = np.append(scores[1:] != scores[:-1], True)
    f1 = np.where(last, 2 * right / (right + wrong + matches.objects), -1.0)
    best = int(np.argmax(f1))
    threshold = math.floor(float(scores[best]) * 1000) / 1000
    return _point(threshold, int(right[best]), int(wrong[best]), matches.objects)


def _point(threshold: float, right: int, wrong: int, objects: int) -> Point:
    precision = right / (right + wrong) if right + wrong else 0.0
    recall = right / objects if objects else 0.0
    f1 = 2 * right / (2 * right + wrong + (objects - right)) if objects + wrong else 0.0
    return Point(threshold, precision, recall, f1)
