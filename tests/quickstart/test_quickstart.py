"""``preannotate quickstart``: the README's first command, run small but whole.

The same loop as the default run (made-up shapes, export, training
ssd-mobilenet-v2-coco, conversion, pre-annotation of the held-out images,
scoring), with few images and steps so that it fits a test; the quality the
full run reaches is in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile

import pytest

pytestmark = pytest.mark.timeout(900)

QUICKSTART = [
    sys.executable,
    "-c",
    "import sys; from preannotate.cli.main import main; sys.exit(main())",
]


def _quickstart(*args: str, timeout: float = 840) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*QUICKSTART, "quickstart", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.tf
def test_quickstart_runs_the_whole_loop_and_scores_the_held_out_images(tmp_path):
    work = tmp_path / "qs"
    proc = _quickstart(
        "--workdir", str(work),
        "--images", "32",
        "--held-out", "4",
        "--size", "96",
        "--args", "epochs=12;batch_size=4;input_size=128;warmup_steps=2;checkpoint_every=6",
        "--threshold", "0.05",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    score = re.search(r"held-out mAP@0\.5: ([0-9.]+)", out)
    assert score and 0.0 <= float(score.group(1)) <= 1.0, out
    assert "pre-annotated 4 of 4 frames" in out, out

    # The scores it printed are the ones it saved, computed against the truth it made.
    scores = json.loads((work / "heldout-scores.json").read_text())
    assert f"{scores['mAP@0.5']:.3f}" == score.group(1)
    truth = json.loads((work / "data" / "heldout-truth.json").read_text())
    assert len(truth["images"]) == 4 and truth["annotations"]

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
    # 12 steps find little or nothing (the writing of shapes is tested in
    # tests/inference/test_folder_target.py); what is written is what was scored.
    assert len(coco["annotations"]) == scores["detections"]
    for ann in coco["annotations"]:
        assert ann["image_id"] in image_ids and ann["category_id"] in category_ids
        assert 0.05 <= ann["score"] <= 1 and ann["attributes"]["source"] == "auto"

    # Every artefact where it says: dataset, checkpoints, metrics, SavedModel, log.
    storage = work / "storage" / "quickstart"
    assert list((storage / "datasets").rglob("manifest.json"))
    model = storage / "models" / "shapes" / "1"
    assert list(model.rglob("ckpt-12.index")), sorted(p.name for p in model.rglob("*"))
    assert json.loads((model / "metrics.json").read_text())
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
