"""A learning-loop campaign on synthetic data: what continuous training saves a person.

    .venv/bin/python -m bench.campaign                     # 5 rounds of 40 shapes frames
    .venv/bin/python -m bench.campaign --rounds 3 --images 20 --args "epochs=200;..."
    .venv/bin/python -m bench.campaign --data mixed        # bench/datasets/mixed.py frames

One CVAT project (the CVAT stand-in, tests/standins/cvat) watched by the five
services in one process (the embedded mode: memory bus, local storage,
in-process TensorFlow) under a webhook policy that retrains the project's
model after every completed job (``retrain_after_jobs: 1``) and pre-annotates
its new tasks. Then, round by round:

- round 0: a task of ``--images`` frames arrives annotated (the truth, drawn
  by hand: 100 corrections per 100 objects) and its job is completed. The
  gateway hears ``update:job``, asks for the project's first retrain, the
  exporter exports the project's completed jobs, the trainer trains the first
  version (from random weights: no fetched weights here), freezes its
  validation split as the model's evaluation set, and the gate promotes it;
  the converter exports it for serving.
- round k >= 1: a new task is created in CVAT's order (``create:task``, then
  its data). The gateway pre-annotates it with the promoted version and keeps
  the proposal; a simulated person corrects the job to the truth in CVAT
  (``person_edits``: a proposed box that overlaps a true object is edited in place,
  so CVAT keeps its shape id, as the UI does; the others are deleted; the
  missed objects are drawn) and completes it. The gateway measures the
  corrections (stored with the version that proposed them) and retrains from
  the promoted version on every completed job so far; the gate promotes the
  new version or refuses it. The last round's version is not converted
  (nothing pre-annotates after it): the campaign ends at its gate decision.

Everything above is the product's code on its real path: webhooks signed by
the stand-in and verified by the gateway, the retrain policy and its records,
the project export, real TensorFlow training and evaluation on the frozen set,
the gate and its log, conversion, pre-annotation written into CVAT, and the
corrections measure (services/gateway/corrections.py). Simulated: CVAT itself
(the stand-in, which the tests also use), the data (made-up frames) and the
person, who corrects everything exactly to the truth and never misses an
error. The person pairs proposed and true boxes as the measure pairs boxes
without ids (``preannotate.corrections``: greedy by IoU, at least
``MATCH_IOU``, whatever the labels) and snaps each kept box to the truth,
so the job's boxes end equal to the truth; a box still at IoU >= 0.9 is not
counted as moved (``MOVED_IOU``), as a person would leave it alone.

Each round prints one JSON line to stdout (the version trained, its mAP@0.5 on
the frozen set, the gate's decision and reason, the round's corrections per
100 objects and their kinds, times, the machine's load); a Markdown table and
the count of promotions and refusals follow.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from preannotate import layout, promotion
from preannotate.corrections import MATCH_IOU, Box, iou
from preannotate.storage.manifest import read_manifest

MODEL_TYPE = "ssd-mobilenet-v2-coco"
NAMESPACE = "campaign"
MODEL_NAME = "shapes"
PROJECT_ID = 1
TOKEN = "campaign-cvat-token"
SECRET = "campaign-webhook-secret"
#: The quickstart's recipe, with a step budget that lets 5 rounds finish in about
#: 20 minutes on two cores (each retrain starts from the promoted version).
DEFAULT_ARGS = (
    "epochs=500;batch_size=8;input_size=128;initial_learning_rate=0.02;warmup_steps=50;"
    "checkpoint_every=500;pretrained=false"
)
BY_HAND = 100.0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="rounds, the first by hand (default 5)")
    p.add_argument("--images", type=int, default=40, help="frames per round's task (default 40)")
    p.add_argument("--data", choices=("shapes", "mixed"), default="shapes")
    p.add_argument("--size", type=int, default=128, help="--data shapes: frame side (px)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--args", default=DEFAULT_ARGS, help="training arguments of every retrain")
    p.add_argument("--threshold", type=float, default=0.5, help="pre-annotation score threshold")
    p.add_argument("--tolerance", type=float, default=promotion.DEFAULT_TOLERANCE)
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.25,
        help="the exporter's validation split; round 0's becomes the frozen evaluation set",
    )
    p.add_argument("--workdir", type=Path, default=None, help="kept; default: a temporary one")
    p.add_argument("--timeout", type=float, default=3600, help="seconds for one job")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.images < 2:
        p.error("--rounds must be at least 1 and --images at least 2")
    return args


# --- the data ------------------------------------------------------------------------


def make_samples(data: str, n: int, seed: int, size: int = 128):
    """(samples, classes): ``n`` frames with unique names (one generator run)."""
    if data == "mixed":
        from bench.datasets import mixed

        return mixed.make_dataset(n, seed=seed), mixed.CLASSES
    from preannotate.quickstart import shapes

    return shapes.make_dataset(n, size=size, seed=seed), shapes.CLASSES


def truth_shapes(samples) -> list[dict[str, Any]]:
    """The samples' objects as CVAT rectangles drawn by hand (frame = index in the task)."""
    out = []
    for frame, sample in enumerate(samples):
        for shape in sample.shapes:
            x, y, w, h = shape.box
            points = [round(v, 2) for v in (x, y, x + w, y + h)]
            out.append(
                {"frame": frame, "label": shape.label, "type": "rectangle", "points": points}
            )
    return out


def truth_boxes(samples, label_ids: dict[str, int]) -> dict[int, list[Box]]:
    """frame -> the true boxes, labelled by CVAT label id (as the measure labels them)."""
    out: dict[int, list[Box]] = {}
    for shape in truth_shapes(samples):
        label = str(label_ids[shape["label"]])
        out.setdefault(shape["frame"], []).append(Box(label, *shape["points"]))
    return out


# --- the person ----------------------------------------------------------------------


@dataclass
class Edits:
    """What the person sends CVAT: shapes updated in place, deleted, drawn."""

    update: list[dict[str, Any]] = field(default_factory=list)
    delete: list[dict[str, Any]] = field(default_factory=list)
    create: list[dict[str, Any]] = field(default_factory=list)


def _pair(found: list[Box], truth: list[Box]) -> list[tuple[int, int]]:
    """Greedy pairs (found index, truth index) by IoU, highest first, at least MATCH_IOU."""
    candidates = sorted(
        (-iou(f, t), i, j)
        for i, f in enumerate(found)
        for j, t in enumerate(truth)
        if iou(f, t) >= MATCH_IOU
    )
    used_f: set[int] = set()
    used_t: set[int] = set()
    pairs = []
    for _, i, j in candidates:
        if i not in used_f and j not in used_t:
            used_f.add(i)
            used_t.add(j)
            pairs.append((i, j))
    return pairs


def person_edits(shapes: list[dict[str, Any]], truth: dict[int, list[Box]]) -> Edits:
    """Correct a job's ``shapes`` (as CVAT answers them) to ``truth`` (its frames only)."""
    edits = Edits()
    by_frame: dict[int, list[dict[str, Any]]] = {}
    for shape in shapes:
        by_frame.setdefault(shape["frame"], []).append(shape)
    for frame in sorted(set(by_frame) | set(truth)):
        found = by_frame.get(frame, [])
        true = truth.get(frame, [])
        boxes = [Box.from_shape(s, str(s["label_id"])) for s in found]
        pairs = _pair(boxes, true)
        for i, j in pairs:
            t = true[j]
            points = [t.xtl, t.ytl, t.xbr, t.ybr]
            if boxes[i].label != t.label or [float(v) for v in found[i]["points"]] != points:
                edits.update.append(
                    {**found[i], "points": points, "label_id": int(t.label), "source": "semi-auto"}
                )
        kept = {i for i, _ in pairs}
        drawn = {j for _, j in pairs}
        edits.delete.extend(s for i, s in enumerate(found) if i not in kept)
        edits.create.extend(
            {
                "type": "rectangle",
                "frame": frame,
                "label_id": int(t.label),
                "points": [t.xtl, t.ytl, t.xbr, t.ybr],
                "source": "manual",
                "occluded": False,
                "z_order": 0,
                "rotation": 0.0,
                "attributes": [],
                "group": 0,
            }
            for j, t in enumerate(true)
            if j not in drawn
        )
    return edits


async def _patch(url: str, job: int, action: str, shapes: list[dict[str, Any]]) -> None:
    if not shapes:
        return
    body = {"version": 0, "tags": [], "shapes": shapes, "tracks": []}
    path = f"{url}/api/jobs/{job}/annotations?action={action}"
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session,
        session.patch(path, json=body) as answer,
    ):
        if answer.status != 200:
            raise RuntimeError(f"PATCH {path} answered {answer.status}: {await answer.text()}")


async def correct_job(cvat, job: dict[str, Any], truth: dict[int, list[Box]]) -> Edits:
    """The person's work on one CVAT job, sent as CVAT's UI sends it (PATCH by action)."""
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session,
        session.get(f"{cvat.url}/api/jobs/{job['id']}/annotations") as answer,
    ):
        answer.raise_for_status()
        shapes = [s for s in (await answer.json())["shapes"] if s["type"] == "rectangle"]
    frames = range(job["start_frame"], job["stop_frame"] + 1)
    edits = person_edits(shapes, {f: b for f, b in truth.items() if f in frames})
    await _patch(cvat.url, job["id"], "update", edits.update)
    await _patch(cvat.url, job["id"], "delete", edits.delete)
    await _patch(cvat.url, job["id"], "create", edits.create)
    return edits


# --- the campaign --------------------------------------------------------------------


def policy(args: argparse.Namespace) -> dict[str, Any]:
    """The gateway's webhook policy: retrain after every completed job, pre-annotate new tasks."""
    return {
        "global_secret": True,
        "confirm_tasks": True,
        "projects": [
            {
                "project_id": PROJECT_ID,
                "namespace": NAMESPACE,
                "model_type": MODEL_TYPE,
                "arguments": args.args,
                "model_name": MODEL_NAME,
                "retrain_after_jobs": 1,
                "annotate_new_tasks": True,
                "threshold": args.threshold,
            }
        ],
    }


@dataclass
class Campaign:
    """The running services, the stand-in and what the rounds found."""

    args: argparse.Namespace
    work: Path
    runtime: Any
    cvat: Any
    console: Any
    samples: list
    classes: tuple[str, ...]
    rounds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def storage(self):
        return self.runtime.storage

    async def follow(self, job_id: str, title: str, *, until_trained: bool = False):
        """Wait for ``job_id`` to end, or with ``until_trained`` for its training stage to
        end (the gate has decided); a line on stderr at each stage and every 30 s."""
        from preannotate.status import TERMINAL, stage_name, state_name
        from preannotate.v1 import events_pb2

        async def watch():
            t0, shown, last = time.monotonic(), (None, 0.0), None
            async for status in self.runtime.status_view.watch(job_id):
                last = status
                step, now = (status.stage, status.state), time.monotonic()
                if step != shown[0] or now - shown[1] > 30:
                    shown = (step, now)
                    self.console.print(
                        f"{title}: {stage_name(status.stage)} {state_name(status.state)}, "
                        f"{status.message[:160]} ({now - t0:.0f} s)",
                        markup=False,
                        highlight=False,
                        soft_wrap=True,
                    )
                if status.state in TERMINAL:
                    break
                if until_trained and status.stage == events_pb2.JOB_STAGE_CONVERT:
                    break
            return last

        status = await asyncio.wait_for(watch(), self.args.timeout)
        failed = status is None or (
            status.state in TERMINAL and status.state != events_pb2.JOB_STATE_SUCCEEDED
        )
        if failed:
            said = f"{state_name(status.state)}: {status.message}" if status else "nothing"
            raise RuntimeError(f"job {job_id} ended {said}")
        return status

    async def answer(self, event: str, resource: str, rid: int) -> dict[str, Any]:
        """The gateway's answer to the newest delivery of ``event`` about ``resource`` ``rid``."""
        await self.cvat.wait_for_webhooks(timeout=60)
        for delivery in reversed(self.cvat.webhook_deliveries):
            if delivery.event == event and delivery.payload.get(resource, {}).get("id") == rid:
                if delivery.status != 200:
                    raise RuntimeError(f"{event} {rid}: the gateway answered {delivery.status}")
                return json.loads(delivery.response)
        raise RuntimeError(f"no {event} delivery for {resource} {rid}")

    async def wait_for_proposal(self, task_id: int, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = await asyncio.to_thread(
                layout.read_proposal, self.storage, NAMESPACE, MODEL_NAME, task_id
            )
            if found is not None:
                return found
            await asyncio.sleep(0.1)
        raise RuntimeError(f"the gateway kept no proposal for task {task_id}")

    async def run_round(self, k: int) -> dict[str, Any]:
        from tests.standins.cvat import shapes_labels

        n = self.args.images
        batch = self.samples[k * n : (k + 1) * n]
        images = [(s.name, s.data) for s in batch]
        labels = shapes_labels(self.classes, label_type="rectangle")
        started = time.monotonic()
        load = os.getloadavg()[0]
        row: dict[str, Any] = {"round": k, "images_annotated": (k + 1) * n}
        annotate_s = 0.0
        if k == 0:  # an older task, annotated by hand
            task_id = self.cvat.add_task(
                f"round-{k}", labels, images, truth_shapes(batch), PROJECT_ID, segment_size=n
            )
            await self.answer("create:task", "task", task_id)  # ignored: no model yet
        else:  # a new task in CVAT's order: the row (create:task), then its data
            task_id = self.cvat.create_task(f"round-{k}", labels, PROJECT_ID, segment_size=n)
            reply = await self.answer("create:task", "task", task_id)
            if reply.get("status") != "accepted":
                raise RuntimeError(f"task {task_id} was not pre-annotated: {reply}")
            self.cvat.upload_data(task_id, images)
            await self.follow(reply["job_id"], f"round {k} pre-annotate")
            proposal = await self.wait_for_proposal(task_id)
            annotate_s = time.monotonic() - started
            row["preannotated_by"] = proposal["model"]["version"]
            row["proposed"] = len(proposal["shapes"])
        [job] = self.cvat.jobs(task_id)
        label_ids = {lb["name"]: lb["id"] for lb in self.cvat.labels(task_id)}
        truth = truth_boxes(batch, label_ids)
        row.update(task=task_id, cvat_job=job["id"], objects=sum(map(len, truth.values())))
        if k:
            edits = await correct_job(self.cvat, job, truth)
            row["edits"] = {
                "updated": len(edits.update),
                "deleted": len(edits.delete),
                "drawn": len(edits.create),
            }
        t_done = time.monotonic()
        self.cvat.set_job_state(job["id"], state="completed")
        reply = await self.answer("update:job", "job", job["id"])
        if reply.get("status") != "accepted":
            raise RuntimeError(f"job {job['id']} completed, no retrain started: {reply}")
        # The last version is not converted: nothing pre-annotates after it.
        last = k == self.args.rounds - 1
        status = await self.follow(reply["job_id"], f"round {k} retrain", until_trained=last)
        row.update(await self._outcome(k, reply["job_id"], status, job["id"]), converted=not last)
        row.update(
            retrain_s=round(time.monotonic() - t_done, 1),  # export, training, conversion
            annotate_s=round(annotate_s, 1),
            round_s=round(time.monotonic() - started, 1),
            load_avg_1m=[round(load, 2), round(os.getloadavg()[0], 2)],
        )
        return row

    async def _outcome(self, k: int, job_id: str, status, cvat_job: int) -> dict[str, Any]:
        """What the round's retrain made and the gate said; the round's corrections."""

        def read() -> dict[str, Any]:
            version = int(status.details.get("version") or 0) or max(
                layout.finished_versions(self.storage, NAMESPACE, MODEL_NAME)
            )
            _, manifest = layout.resolve(self.storage, NAMESPACE, MODEL_NAME, version)
            state = promotion.read(self.storage, NAMESPACE, MODEL_NAME)
            entry = state.gate_entry(version) or {}
            measured = [
                r
                for records in layout.read_corrections(self.storage, NAMESPACE, MODEL_NAME).values()
                for r in records
                if r.get("cvat_job_id") == cvat_job
            ]
            evaluation = manifest.get("evaluation") or {}
            splits = (read_manifest(self.storage, manifest["dataset_prefix"]) or {})["splits"]
            return {
                "retrain_job": job_id,
                "base": status.details.get("init") or (manifest.get("init") or {}).get("init", ""),
                "version": version,
                "map50": round(float((manifest.get("metrics") or {}).get(promotion.METRIC, 0)), 4),
                "evaluation_set": evaluation.get("set", ""),
                "evaluation_images": evaluation.get("images", 0),
                "excluded_from_training": evaluation.get("excluded_from_training", 0),
                # the dataset's validation split goes unused once the set is frozen
                "trained_on_images": splits["train"]["images"]
                - evaluation.get("excluded_from_training", 0),
                "steps": manifest.get("steps"),
                "gate": "promoted" if entry.get("action") == promotion.GATE_PROMOTED else "refused",
                "reason": entry.get("reason", ""),
                "promoted_after": state.promoted,
                "corrections": measured[0] if measured else None,
            }

        out = await asyncio.to_thread(read)
        per_100 = out["corrections"]["per_100_objects"] if out["corrections"] else BY_HAND
        out["corrections_per_100"] = round(per_100, 1) if k else BY_HAND
        out["by_hand_per_100"] = BY_HAND
        return out


def table(rows: list[dict[str, Any]]) -> str:
    """The rounds as a Markdown table."""
    head = (
        "| round | images annotated (trained on) | pre-annotated by | corrections / 100 objects "
        "(deleted, drawn, moved, relabelled) | by hand | version (from) | mAP@0.5 frozen set "
        "| gate |\n|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        c = r.get("corrections")
        kinds = f" ({c['deleted']}, {c['drawn']}, {c['moved']}, {c['relabelled']})" if c else ""
        by = f"v{r['preannotated_by']}" if r.get("preannotated_by") else "- (by hand)"
        start = r["base"].removeprefix(f"base {NAMESPACE}/{MODEL_NAME}/") or "-"
        start = f"v{start}" if start.isdigit() else start
        lines.append(
            f"| {r['round']} | {r['images_annotated']} ({r['trained_on_images']}) | {by} | "
            f"{r['corrections_per_100']:.1f}{kinds} | {r['by_hand_per_100']:.0f} | "
            f"v{r['version']} ({start}) | {r['map50']:.3f} | {r['gate']} |"
        )
    promoted = sum(1 for r in rows if r["gate"] == "promoted")
    lines.append(f"\npromotions {promoted}, refusals {len(rows) - promoted}")
    return "\n".join(lines)


async def run_campaign(
    args: argparse.Namespace, work: Path, emit=None, cvat=None
) -> list[dict[str, Any]]:
    """Run the campaign in ``work``; each round's row goes to ``emit`` as it ends.
    ``cvat``: a started stand-in accepting ``TOKEN`` (left running; default: one of
    its own, stopped at the end)."""
    from rich.console import Console

    from preannotate.bus import MemoryBus
    from preannotate.cli.up import embedded_settings
    from preannotate.quickstart.embedded import work_overrides
    from preannotate.runner import Runtime
    from preannotate.telemetry.logging import configure
    from tests.standins.cvat import CvatStandIn

    console = Console(file=sys.stderr)
    # Prints markup before TensorFlow loads (see bench/recipe.py).
    console.print(
        f"[bold]campaign[/bold]: {args.rounds} rounds of {args.images} {args.data} frames"
    )
    samples, classes = make_samples(args.data, args.rounds * args.images, args.seed, args.size)
    work.mkdir(parents=True, exist_ok=True)
    policy_file = work / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy(args)))
    log_file = open(work / "campaign.log", "a")  # noqa: SIM115 - the logs' stream from now on
    configure("campaign", "info", "json", stream=log_file)
    logging.captureWarnings(True)
    own_cvat = cvat is None
    if own_cvat:
        cvat = CvatStandIn(tokens={TOKEN})
        await cvat.start()
    overrides = {
        **work_overrides(work, NAMESPACE),
        "cvat_url": cvat.url,
        "cvat_token": TOKEN,
        "webhook_secret": SECRET,
        "webhook_policy_file": policy_file,
        "promotion_tolerance": args.tolerance,
        "export_val_fraction": args.val_fraction,
    }
    runtime = Runtime(embedded_settings(work / "storage", **overrides), bus=MemoryBus())
    try:
        await runtime.start()
        hook = f"http://127.0.0.1:{runtime.http_ports['gateway']}/webhooks/cvat"
        cvat.add_webhook(hook, SECRET, events=("create:task", "update:job"), project_id=PROJECT_ID)
        campaign = Campaign(args, work, runtime, cvat, console, samples, tuple(classes))
        for k in range(args.rounds):
            row = await campaign.run_round(k)
            campaign.rounds.append(row)
            if emit is not None:
                emit(row)
        return campaign.rounds
    finally:
        await runtime.stop()
        if own_cvat:
            await cvat.stop()
        log_file.flush()


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args = _parse(argv)

    def emit(row: dict[str, Any]) -> None:
        print(json.dumps(row), flush=True)

    if args.workdir is not None:
        rows = asyncio.run(run_campaign(args, args.workdir.resolve(), emit))
    else:
        with tempfile.TemporaryDirectory(prefix="campaign-") as tmp:
            rows = asyncio.run(run_campaign(args, Path(tmp), emit))
    print(table(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
