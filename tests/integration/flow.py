"""The product's path through a running ``Chain``, step by step, and the faults injected on it.

Shared by tests/integration/test_chain_kafka.py and bench/chaos.py:

- ``policy`` / ``start_chain``: the webhook policy of the watched projects and
  the five processes started (the converter later: see ``convert``), the CVAT
  stand-in's webhooks pointed at the gateway;
- ``train``: a training task completed in CVAT, the gateway's job id;
- ``convert``: once the job waits for the converter, the threshold opened in
  the version's experiment.yaml and the converter started;
- ``preannotate_heldout``: a held-out task created in CVAT's order, its
  annotation job's end;
- the outcome checks (``assert_model_shapes``, ``duplicate_shapes``) and the
  faults (``publish_poison``, ``train_killing_the_exporter``).

The tiny model is weak, so the threshold is opened (see test_chain_kafka's
docstring): the checks are on the write path, not on the shapes' quality.
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from preannotate import layout, topics
from preannotate.v1 import events_pb2
from tests.integration.chain import SERVICES, Chain, wait_for
from tests.standins.cvat import CvatStandIn, make_shapes_dataset, shapes_labels

SECRET = "chain-webhook-secret"
TOKEN = "chain-cvat-token"
NAMESPACE = "team-a"
CLASSES = ("circle", "square")
SIZE = (96, 96)
#: A tiny SSD from a random start (no published weights offline).
ARGUMENTS = (
    "epochs=8;batch_size=2;input_size=128;checkpoint_every=4;warmup_steps=2;"
    "eval=false;pretrained=false"
)
#: Detections the opened model keeps per image.
MAX_DETECTIONS = 5
#: The value of the poison record: no TaskAnnotated decodes from it.
POISON = b"\xff\xfe not a protobuf message"
POISON_KEY = "poison-record"


def policy(projects: dict[str, tuple[int, str]], arguments: str = ARGUMENTS) -> dict:
    """The gateway's webhook policy: every (project id, model name) watched, trained
    on a completed task and pre-annotating its new tasks."""
    return {
        "global_secret": True,  # one webhook secret; tasks confirmed with the stand-in
        "projects": [
            {
                "project_id": project_id,
                "namespace": NAMESPACE,
                "trigger": "task",
                "model_type": "ssd-mobilenet-v2-coco",
                "arguments": arguments,
                "model_name": name,
                "annotate_new_tasks": True,
                "threshold": 0.001,
            }
            for project_id, name in projects.values()
        ],
    }


async def start_chain(chain: Chain, cvat: CvatStandIn, project_ids: list[int]) -> None:
    """Open the chain's bus side, start every service but the converter and point
    each project's webhooks at the gateway."""
    await chain.open()
    early = [s for s in SERVICES if s != "converter"]
    for service in early:
        chain.start(service)
    started = {s: await chain.wait_started(s) for s in early}
    port = started["gateway"]["http"]["gateway"]
    for project_id in project_ids:
        cvat.add_webhook(
            f"http://127.0.0.1:{port}/webhooks/cvat",
            SECRET,
            events=("update:task", "create:task"),
            project_id=project_id,
        )


def accepted_jobs(cvat: CvatStandIn, event: str, resource_id: int) -> list[str]:
    """The job ids the gateway answered for the task's deliveries of ``event``."""
    out = []
    for d in cvat.webhook_deliveries:
        task = d.payload.get("task", {})
        if d.event == event and task.get("id") == resource_id and d.status == 200:
            body = json.loads(d.response)
            if body.get("status") == "accepted":
                out.append(body["job_id"])
    return out


def accepted_job(cvat: CvatStandIn, event: str, resource_id: int) -> str | None:
    """The job id the gateway answered for the task's delivery of ``event``, once accepted."""
    return next(iter(accepted_jobs(cvat, event, resource_id)), None)


def add_training_task(cvat: CvatStandIn, project_id: int, seed: int) -> int:
    images, shapes = make_shapes_dataset(
        12, size=SIZE, classes=CLASSES, seed=seed, kind="rectangle"
    )
    return cvat.add_task(
        "train",
        labels=shapes_labels(CLASSES),
        images=images,
        shapes=shapes,
        project_id=project_id,
        segment_size=6,
    )


def complete(cvat: CvatStandIn, task_id: int) -> None:
    """Every job of the task turns completed (the task then turns completed: update:task)."""
    for job in cvat.jobs(task_id):
        cvat.set_job_state(job["id"], state="completed")


async def wait_accepted(chain: Chain, cvat: CvatStandIn, event: str, task_id: int) -> str:
    return await wait_for(
        lambda: accepted_job(cvat, event, task_id),
        60,
        f"the gateway to accept {event} of task {task_id}",
        chain,
    )


async def train(chain: Chain, cvat: CvatStandIn, project_id: int, seed: int) -> tuple[int, str]:
    """A training task completed in ``project_id``: (task id, the gateway's job id)."""
    task_id = add_training_task(cvat, project_id, seed)
    complete(cvat, task_id)
    return task_id, await wait_accepted(chain, cvat, "update:task", task_id)


async def preannotate_heldout(
    chain: Chain, cvat: CvatStandIn, project_id: int, seed: int, timeout: float = 300
) -> tuple[int, events_pb2.JobStatus]:
    """A held-out task created in ``project_id`` in CVAT's order (``create:task``
    first, the data uploaded once the gateway took it): (task id, its annotation
    job's end status)."""
    task_id, job_id = await start_heldout(chain, cvat, project_id, seed)
    return task_id, await chain.finished(job_id, timeout)


async def start_heldout(
    chain: Chain, cvat: CvatStandIn, project_id: int, seed: int
) -> tuple[int, str]:
    """The held-out task created and its data uploaded: (task id, annotation job id)."""
    images, _ = make_shapes_dataset(4, size=SIZE, classes=CLASSES, seed=seed, kind="rectangle")
    task_id = cvat.create_task("heldout", labels=shapes_labels(CLASSES), project_id=project_id)
    job_id = await wait_accepted(chain, cvat, "create:task", task_id)
    cvat.upload_data(task_id, images)
    return task_id, job_id


def assert_model_shapes(cvat: CvatStandIn, task_id: int) -> list[dict]:
    shapes = cvat.annotations(task_id)
    assert shapes, "the model wrote no shape into the held-out task"
    labels = {lb["id"]: lb["name"] for lb in cvat.labels(task_id)}
    assert {labels[s["label_id"]] for s in shapes} <= set(CLASSES)
    assert all(s["source"] == "auto" for s in shapes), {s["source"] for s in shapes}
    return shapes


def duplicate_shapes(shapes: list[dict[str, Any]]) -> dict[int, int]:
    """Per frame, how many shapes exceed one set: the same shape written twice, or
    more shapes than the model keeps per image (a second run's set)."""
    per_frame = Counter(s["frame"] for s in shapes)
    same = Counter(
        (s["frame"], s["label_id"], tuple(round(p, 2) for p in s["points"])) for s in shapes
    )
    out: dict[int, int] = {}
    for (frame, *_), n in same.items():
        if n > 1:
            out[frame] = out.get(frame, 0) + n - 1
    for frame, n in per_frame.items():
        if n > MAX_DETECTIONS:
            out[frame] = max(out.get(frame, 0), n - MAX_DETECTIONS)
    return out


def open_threshold(bucket, model_name: str) -> None:
    """Keep the best boxes whatever their score (see test_chain_kafka's docstring)."""
    key = f"{NAMESPACE}/models/{model_name}/1/experiment.yaml"
    document = yaml.safe_load(bucket.get(key))
    generator = document["task"]["model"]["detection_generator"]
    generator["pre_nms_score_threshold"] = 0.0
    generator["max_num_detections"] = MAX_DETECTIONS
    bucket.put(key, yaml.safe_dump(document, sort_keys=True).encode())


async def wait_stage(chain: Chain, job_id: str, stage: int, timeout: float = 600) -> None:
    """Until the job's status reaches ``stage`` (AssertionError if it fails first)."""

    def reached():
        status = chain.view.get(job_id)
        if status is not None and status.state == events_pb2.JOB_STATE_FAILED:
            raise AssertionError(f"{status}\n{chain.logs()}")
        return status is not None and status.stage >= stage

    await wait_for(reached, timeout, f"job {job_id} to reach stage {stage}", chain)


async def convert(chain: Chain, bucket, job_id: str, model_name: str) -> None:
    """Once the job waits for the converter: open the threshold, start the converter."""
    await wait_stage(chain, job_id, events_pb2.JOB_STAGE_CONVERT)
    open_threshold(bucket, model_name)
    if not chain.procs["converter"]:
        chain.start("converter")
        await chain.wait_started("converter")


def model_versions(bucket, model_name: str) -> tuple[list[int], list[int]]:
    """(finished versions in the model area, versions in the serving area)."""
    return (
        layout.finished_versions(bucket, NAMESPACE, model_name),
        layout.finished_versions(bucket, NAMESPACE, model_name, area=layout.SERVING),
    )


# --- faults -------------------------------------------------------------------------


async def publish_poison(chain: Chain) -> str:
    """An undecodable value on task.annotated (the gateway's topic); its key."""
    assert chain.bus is not None
    await chain.bus.send(topics.TASK_ANNOTATED, POISON, key=POISON_KEY)
    return POISON_KEY


def export_requests(cvat: CvatStandIn, task_id: int) -> int:
    """How many exports of the task CVAT was asked for."""
    path = f"/api/tasks/{task_id}/dataset/export"
    return sum(1 for r in cvat.request_log if r.method == "POST" and r.path == path)


async def train_killing_the_exporter(
    chain: Chain, cvat: CvatStandIn, project_id: int, seed: int
) -> tuple[int, str]:
    """``train``, with the exporter SIGKILLed while CVAT prepares the task's export
    (made slow until then), and a new exporter started: the record was not
    committed, so the new one exports again. (task id, job id)."""
    slow, cvat.export_seconds = cvat.export_seconds, 5.0
    try:
        task_id, job_id = await train(chain, cvat, project_id, seed)
        await wait_for(
            lambda: export_requests(cvat, task_id) >= 1,
            60,
            f"the exporter to ask CVAT for task {task_id}'s export",
            chain,
        )
        kill(chain, "exporter")
    finally:
        cvat.export_seconds = slow
    chain.start("exporter")
    await chain.wait_started("exporter")
    return task_id, job_id


def kill(chain: Chain, service: str) -> None:
    """SIGKILL the service's newest process and reap it."""
    proc = chain.procs[service][-1]
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)


def checkpoint_steps(bucket, model_name: str) -> list[int]:
    """The steps of the complete checkpoints stored for the model's training (any version)."""
    steps = set()
    for key in bucket.list(f"{NAMESPACE}/"):
        name = Path(key).name
        if f"/{model_name}/" in key and name.startswith("ckpt-") and name.endswith(".index"):
            steps.add(int(name[len("ckpt-") : -len(".index")]))
    return sorted(steps)
