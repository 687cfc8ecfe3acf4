"""How well the review ranking sends a reviewer to the model's mistakes first.

    .venv/bin/python -m bench.review --workdir /tmp/review/qs       # a kept quickstart run
    .venv/bin/python -m bench.review --workdir /tmp/recipe --run mixed   # train it first

A pre-annotation run with truth: the held-out frames' predictions at a low score
(``heldout/annotations/instances_default.json``, scores kept) and their truth
(``data/heldout-truth.json``), as ``preannotate quickstart`` and ``bench.recipe``
leave them in their work folder (``--run mixed|shapes`` makes one with bench.recipe
first, writing every detection at score >= 0.05).

At the operating threshold (``--threshold``, default 0.5) each frame's mistakes
are counted: boxes written that match no true object of their class at IoU 0.5
(a person deletes them) and true objects no written box matches (a person draws
them). The frames are then ranked by ``services.inference.review`` (and by the
variants below, for comparison), and the share of all mistakes that lie in the
top 10 % (and 20 %) of frames is reported, against the same share in random
order (its mean over 1000 shuffles) and the best any ranking could reach
(frames sorted by their mistakes). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from services.inference import review
from services.inference.postprocess import Detected

IOU = 0.5


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--run", choices=("mixed", "shapes"), help="make the run first (bench.recipe)")
    p.add_argument("--args", default="", help="training arguments for --run (its default)")
    p.add_argument("--threshold", type=float, default=0.5, help="the operating threshold")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _corners(bbox, width: int, height: int) -> tuple[float, float, float, float]:
    x, y, w, h = bbox
    return (x / width, y / height, (x + w) / width, (y + h) / height)


def load(workdir: Path) -> tuple[dict[int, list[Detected]], dict[int, list], dict[int, tuple]]:
    """(detections per frame, true boxes per frame as (label, corners), frame sizes);
    frames are numbered by the truth's image order."""
    truth = json.loads((workdir / "data" / "heldout-truth.json").read_text())
    predicted = json.loads(
        (workdir / "heldout" / "annotations" / "instances_default.json").read_text()
    )
    names = {c["id"]: c["name"] for c in truth["categories"]}
    pred_names = {c["id"]: c["name"] for c in predicted["categories"]}
    frame_of = {img["file_name"]: i for i, img in enumerate(truth["images"])}
    sizes = {i: (img["width"], img["height"]) for i, img in enumerate(truth["images"])}
    by_truth_id = {img["id"]: frame_of[img["file_name"]] for img in truth["images"]}
    by_pred_id = {img["id"]: frame_of[img["file_name"]] for img in predicted["images"]}
    objects: dict[int, list] = {i: [] for i in sizes}
    for ann in truth["annotations"]:
        frame = by_truth_id[ann["image_id"]]
        objects[frame].append((names[ann["category_id"]], _corners(ann["bbox"], *sizes[frame])))
    found: dict[int, list[Detected]] = {i: [] for i in sizes}
    for ann in predicted["annotations"]:
        frame = by_pred_id[ann["image_id"]]
        label = pred_names[ann["category_id"]]
        box = _corners(ann["bbox"], *sizes[frame])
        found[frame].append(Detected(label, 0, float(ann["score"]), box))
    return found, objects, sizes


def mistakes(found: list[Detected], objects: list, threshold: float) -> int:
    """Boxes written that match nothing plus true objects nothing written matches."""
    written = sorted((d for d in found if d.score >= threshold), key=lambda d: -d.score)
    unmatched = list(objects)
    wrong = 0
    for d in written:
        best = max(
            (o for o in unmatched if o[0] == d.label),
            key=lambda o: _iou(d.box, o[1]),
            default=None,
        )
        if best is not None and _iou(d.box, best[1]) >= IOU:
            unmatched.remove(best)
        else:
            wrong += 1
    return wrong + len(unmatched)


def share_in_top(order: list[int], errors: dict[int, int], fraction: float) -> float:
    top = order[: max(1, round(len(order) * fraction))]
    total = sum(errors.values())
    return sum(errors[f] for f in top) / total if total else 0.0


def measure(workdir: Path, threshold: float, seed: int = 0) -> dict:
    found, objects, _ = load(workdir)
    errors = {f: mistakes(found[f], objects[f], threshold) for f in found}
    frames = sorted(found)
    rankings: dict[str, Callable[[], list[int]]] = {
        "review (band 0.25, empty 0.5)": lambda: [d.frame for d in review.rank(found, threshold)],
        "band only (no empty term)": lambda: [
            d.frame for d in review.rank(found, threshold, empty=0.0)
        ],
        "lowest written score": lambda: sorted(
            frames,
            key=lambda f: min((d.score for d in found[f] if d.score >= threshold), default=0),
        ),
        "most detections": lambda: sorted(frames, key=lambda f: -len(found[f])),
        "oracle (by mistakes)": lambda: sorted(frames, key=lambda f: -errors[f]),
    }
    rng = random.Random(seed)
    shuffles = []
    for _ in range(1000):
        order = list(frames)
        rng.shuffle(order)
        shuffles.append(order)
    out = {
        "workdir": str(workdir),
        "threshold": threshold,
        "frames": len(frames),
        "frames_with_mistakes": sum(1 for f in frames if errors[f]),
        "mistakes": sum(errors.values()),
        "objects": sum(len(o) for o in objects.values()),
    }
    for fraction in (0.1, 0.2):
        key = f"top_{round(fraction * 100)}pct"
        shares = {name: round(share_in_top(make(), errors, fraction), 3)
                  for name, make in rankings.items()}  # fmt: skip
        shares["random (mean of 1000)"] = round(
            sum(share_in_top(o, errors, fraction) for o in shuffles) / len(shuffles), 3
        )
        out[key] = shares
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.run:
        command = [sys.executable, "-m", "bench.recipe", "--data", args.run, "--threshold",
                   "0.05", "--workdir", str(args.workdir)]  # fmt: skip
        if args.args:
            command += ["--args", args.args]
        subprocess.run(command, check=True)
    print(json.dumps(measure(args.workdir, args.threshold, args.seed)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
