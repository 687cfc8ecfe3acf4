"""``preannotate quickstart``: the README's first command, run small but whole.

The same loop as the default run (made-up shapes, export, training
ssd-mobilenet-v2-coco, conversion, pre-annotation of the held-out images,
scoring), with few images and steps so that it fits a test, and a quality floor:
the short run must reach ``MAP_FLOOR`` held-out mAP@0.5, which a recipe that
learns nothing misses. The quality the full run reaches is in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile

import pytest

from preannotate.modelmetrics import RECALL_AT_SUGGESTED, SUGGESTED_THRESHOLD

pytestmark = pytest.mark.timeout(900)

#: Held-out mAP@0.5 the short run below must reach. At 250 steps the run wrote no
#: shape at score >= 0.05 (mAP 0); at 600 steps on 200 training images it scored 0.64
#: (0.46 to 0.54 on 64 images), 0.52 in a clean CI run; an untrained model scores 0.
MAP_FLOOR = 0.3

# Whether the short run knows the classes is not asserted: at 600 steps it varies
# from run to run. Of the held-out objects its best class per object found, it
# named 59 % right in two runs here and 39 % in a clean CI run, which named almost
# every object "triangle" (mAP@0.5 0.52 all the same). The classes' path (label
# map, classes.csv, CVAT labels) is checked by tests/converter and tests/inference;
# the full quickstart (1500 steps) reaches 0.95 held-out mAP@0.5.

QUICKSTART = [
    sys.executable,
    "-c",
    "import sys; from preannotate.cli.main import main; sys.exit(main())",
]


#: A short run of the quickstart's recipe (its learning rate, batch and input size;
#: pretrained=false as the quickstart has, so it needs no fetched weights).
TRAIN, HELD_OUT, STEPS = 200, 48, 600
SHORT_ARGS = (
    f"epochs={STEPS};batch_size=8;input_size=128;initial_learning_rate=0.02;warmup_steps=25;"
    f"checkpoint_every={STEPS};pretrained=false"
)


def _quickstart(*args: str, timeout: float = 840) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*QUICKSTART, "quickstart", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.tf
def test_quickstart_runs_the_whole_loop_and_scores_the_held_out_images(tmp_path):
    work = tmp_path / "qs"
    proc = _quickstart(
        "--workdir", str(work),
        "--images", str(TRAIN + HELD_OUT),
        "--held-out", str(HELD_OUT),
        "--size", "128",
        "--args", SHORT_ARGS,
        "--threshold", "0.05",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    score = re.search(r"held-out mAP@0\.5: ([0-9.]+)", out)
    assert score, out
    assert float(score.group(1)) >= MAP_FLOOR, out
    assert f"pre-annotated {HELD_OUT} of {HELD_OUT} frames" in out, out

    # The scores it printed are the ones it saved, computed against the truth it made.
    scores = json.loads((work / "heldout-scores.json").read_text())
    assert f"{scores['mAP@0.5']:.3f}" == score.group(1)
    truth = json.loads((work / "data" / "heldout-truth.json").read_text())
    assert len(truth["images"]) == HELD_OUT and truth["annotations"]
    # each right box found one object: right boxes = objects found
    assert scores["objects"] == len(truth["annotations"])
    right = scores["precision@0.5"] * scores["detections"]
    assert right > 0 and round(right) == round(scores["recall@0.5"] * scores["objects"])
    assert f"of the boxes written, {scores['precision@0.5']:.0%} are right" in out, out
    # A COCO 1.0 zip as CVAT imports it: the held-out images and their predictions.
    bundle = work / "heldout-preannotated-coco.zip"
    with zipfile.ZipFile(bundle) as zf:
        names = zf.namelist()
        coco = json.loads(zf.read("annotations/instances_default.json"))
    assert sorted(n for n in names if n.startswith("images/")) == sorted(
        f"images/default/{image['file_name']}" for image in truth["images"]
    )
    assert {c["name"] for c in coco["categories"]} == {c["name"] for c in truth["categories"]}
    assert sorted(i["file_name"] for i in coco["images"]) == sorted(
        i["file_name"] for i in truth["images"]
    )
    image_ids = {image["id"] for image in coco["images"]}
    category_ids = {c["id"] for c in coco["categories"]}
    # What is written is what was scored.
    assert len(coco["annotations"]) == scores["detections"] > 0
    for ann in coco["annotations"]:
        assert ann["image_id"] in image_ids and ann["category_id"] in category_ids
        assert 0.05 <= ann["score"] <= 1 and ann["attributes"]["source"] == "auto"

    # Every artefact where it says: dataset, checkpoints, metrics, SavedModel, log.
    storage = work / "storage" / "quickstart"
    assert list((storage / "datasets").rglob("manifest.json"))
    model = storage / "models" / "shapes" / "1"
    assert list(model.rglob(f"ckpt-{STEPS}.index")), sorted(p.name for p in model.rglob("*"))
    trained = json.loads((model / "metrics.json").read_text())["metrics"]
    # the suggested threshold: where the validation split's best F1 is, shown with the metrics
    suggested = trained[SUGGESTED_THRESHOLD]
    assert 0 < suggested < 1 and 0 < trained[RECALL_AT_SUGGESTED] <= 1, trained
    assert f"suggested threshold {suggested:g}" in out, out
    assert list(work.glob("storage/**/saved_model.pb"))
    assert (work / "quickstart.log").stat().st_size > 0


def test_cvat_url_needs_both_tasks(tmp_path):
    proc = _quickstart("--workdir", str(tmp_path), "--cvat-url", "http://cvat.local", timeout=120)
    assert proc.returncode == 2
    assert "--cvat-url needs --task" in proc.stdout


def test_too_few_training_images_are_refused(tmp_path):
    proc = _quickstart("--workdir", str(tmp_path), "--images", "20", "--held-out", "5", timeout=120)
    assert proc.returncode == 2
    assert "at least 20 training images" in proc.stdout
