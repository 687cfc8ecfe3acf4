"""bench/campaign.py: the simulated person on the CVAT stand-in, and a tiny campaign
through the whole loop (webhooks, retrain policy, project export, training, the
frozen evaluation set, the gate, conversion, pre-annotation, corrections).

The campaign test lives with the quickstart's (a heavy area: it trains and converts
real models, so it runs after the light areas, tests/conftest.py).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from bench import campaign
from preannotate import layout
from preannotate.corrections import Box, Corrections, compare
from preannotate.storage import LocalStorage
from services.trainer import evalset
from tests.standins.cvat import CvatStandIn, make_shapes_dataset, shapes_labels


@pytest.fixture
async def cvat():
    server = CvatStandIn(tokens={campaign.TOKEN})
    await server.start()
    yield server
    await server.stop()


def _boxes(shapes: list[dict], frames: range, *, ids: bool = True) -> dict[int, list[Box]]:
    out: dict[int, list[Box]] = {}
    for shape in shapes:
        if shape["frame"] in frames and shape["type"] == "rectangle":
            box = Box.from_shape(shape, str(shape["label_id"]))
            out.setdefault(shape["frame"], []).append(box if ids else replace(box, shape_id=None))
    return out


def _as_truth(boxes: dict[int, list[Box]]) -> dict[int, list[tuple]]:
    """frame -> sorted (label, points), ids dropped."""
    return {
        f: sorted((b.label, (b.xtl, b.ytl, b.xbr, b.ybr)) for b in bs)
        for f, bs in boxes.items()
        if bs
    }


def _auto(frame: int, label: int, points: list[float]) -> dict:
    return {
        "type": "rectangle",
        "frame": frame,
        "label_id": label,
        "points": points,
        "source": "auto",
        "score": 0.9,
        "occluded": False,
        "z_order": 0,
        "rotation": 0.0,
        "attributes": [],
        "group": 0,
    }


@pytest.mark.timeout(60)
async def test_the_person_corrects_to_the_truth_and_cvat_keeps_the_ids(cvat):
    """A hand-made job: one box nearly right, one moved, one relabelled, one false,
    one missed, one exact. The person's edits end on the truth, keep the ids of the
    boxes edited in place, and the measure by id equals the measure by IoU."""
    images, _ = make_shapes_dataset(3, size=(96, 96))
    task_id = cvat.add_task("t", shapes_labels(), images, [], project_id=1, segment_size=3)
    [job] = cvat.jobs(task_id)
    c, s = (str(lb["id"]) for lb in cvat.labels(task_id))
    truth = {
        0: [Box(c, 10, 10, 30, 30), Box(s, 50, 50, 80, 80)],
        1: [Box(c, 5, 5, 25, 25), Box(s, 60, 60, 90, 90)],
        2: [Box(s, 30, 30, 60, 60)],
    }
    await campaign._patch(
        cvat.url,
        job["id"],
        "create",
        [
            _auto(0, int(c), [10, 10, 30, 31]),  # IoU 0.95: snapped, not counted
            _auto(0, int(c), [50, 50, 80, 80]),  # relabelled
            _auto(1, int(c), [10, 10, 30, 30]),  # IoU 0.39: moved
            _auto(2, int(s), [0, 0, 20, 20]),  # false: deleted
            _auto(2, int(s), [30, 30, 60, 60]),  # exact: left alone
        ],
    )  # frame 1's square is missed: drawn
    proposed = cvat.annotations(task_id)
    edits = await campaign.correct_job(cvat, job, truth)
    assert (len(edits.update), len(edits.delete), len(edits.create)) == (3, 1, 1)

    final = cvat.annotations(task_id)
    frames = range(3)
    assert _as_truth(_boxes(final, frames)) == _as_truth(truth)
    false_id = next(p["id"] for p in proposed if p["points"] == [0, 0, 20, 20])
    assert {p["id"] for p in proposed} - {f["id"] for f in final} == {false_id}

    expected = Corrections(frames=3, proposed=5, final=5, deleted=1, drawn=1, moved=1, relabelled=1)
    by_id = compare(_boxes(proposed, frames), _boxes(final, frames), frames)
    by_iou = compare(_boxes(proposed, frames, ids=False), truth, frames)
    assert by_id == by_iou == expected
    assert by_id.per_100_objects == 80.0


#: A tiny run of the campaign's recipe: a few steps, 8 frames of 96 px a round. The
#: threshold is low so that the weak model proposes what it can (often nothing).
TINY = [
    "--rounds", "2", "--images", "8", "--size", "96", "--threshold", "0.05",
    "--args", "epochs=20;batch_size=4;input_size=128;warmup_steps=2;checkpoint_every=20;"
    "pretrained=false",
]  # fmt: skip


@pytest.mark.tf
@pytest.mark.timeout(900)
async def test_a_tiny_campaign_retrains_from_the_promoted_model_and_measures(
    cvat, tmp_path, monkeypatch
):
    """Two rounds (8 frames each, 20 steps a training; about 3 minutes on two cores,
    most of it the first version's conversion): round 1's task is pre-annotated by the
    promoted version 1, corrected and completed; its retrain starts from version 1,
    its corrections are stored, and the frozen set never reaches training."""
    trained_on: list[tuple[int, list[str], frozenset[str]]] = []
    drop_frames = evalset.drop_frames

    def spy(files, out_dir, task_id, frames, *more, **kw):
        """What the trainer is left to train on once the set's frames are dropped."""
        written, kept, dropped = drop_frames(files, out_dir, task_id, frames, *more, **kw)
        trained_on.append((task_id, evalset.file_names(written), frozenset(frames)))
        return written, kept, dropped

    monkeypatch.setattr(evalset, "drop_frames", spy)
    args = campaign._parse(TINY)
    work = tmp_path / "campaign"
    first, second = await campaign.run_campaign(args, work, cvat=cvat)
    storage = LocalStorage(work / "storage")
    ns, name = campaign.NAMESPACE, campaign.MODEL_NAME

    # round 0: the first training starts from random weights, freezes the set, is promoted
    assert (first["version"], first["base"], first["gate"]) == (1, "random", "promoted")
    assert first["evaluation_set"] == first["retrain_job"]
    # round 1: pre-annotated by version 1, retrained from it (the promoted one)
    assert first["promoted_after"] == 1 and second["preannotated_by"] == 1
    assert second["base"] == f"base {ns}/{name}/1"
    started = layout.read_retrain_records(storage, ns, name, "started")
    assert started[2]["base_version"] == 1
    assert second["version"] == 2 and second["evaluation_set"] == first["retrain_job"]

    # the corrections of round 1's job: stored with version 1, equal to the measure
    # recomputed from the stored proposal and the truth (no ids: paired by IoU), and
    # the job ends on the truth
    [record] = layout.read_corrections(storage, ns, name)[1]
    assert record["cvat_job_id"] == second["cvat_job"] == second["corrections"]["cvat_job_id"]
    proposal = layout.read_proposal(storage, ns, name, second["task"])
    assert proposal is not None and len(proposal["shapes"]) == second["proposed"]
    samples, _ = campaign.make_samples(args.data, 2 * args.images, args.seed, args.size)
    labels = {lb["name"]: lb["id"] for lb in cvat.labels(second["task"])}
    truth = campaign.truth_boxes(samples[args.images :], labels)
    frames = range(args.images)
    recomputed = compare(_boxes(proposal["shapes"], frames, ids=False), truth, frames)
    assert Corrections.from_dict(record) == recomputed
    assert record["final"] == second["objects"] == sum(map(len, truth.values()))
    final = _boxes(cvat.annotations(second["task"]), frames)
    assert _as_truth(final) == _as_truth(truth)

    # the evaluation set's frames never reach training: round 1 trained on files
    # without them, though its dataset (the whole project) holds round 0's frames
    record = layout.read_evaluation_set(storage, ns, name)
    assert record is not None and record["frozen_by_job"] == first["retrain_job"]
    frozen = {evalset.frame_key(f["task_id"], f["file_name"]) for f in record["frames"]}
    assert frozen and all(key.startswith(f"{first['task']}/") for key in frozen)
    # two calls: the training split, then the dataset's own validation split (trained
    # on too once the set measures), each less the set
    assert [dropped_set for _, _, dropped_set in trained_on] == [frozen, frozen]
    used = {evalset.frame_key(t, n) for t, names, _ in trained_on for n in names}
    assert used and not used & frozen
    dataset = work / "storage" / ns / "datasets" / second["retrain_job"]
    listed = evalset.file_names(sorted(dataset.glob("*.tfrecord")))
    assert used == {evalset.frame_key(0, n) for n in listed} - frozen
    assert any(key.startswith(f"{first['task']}/") for key in used)  # round 0's frames too
