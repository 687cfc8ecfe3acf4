"""Faults on the whole chain, one at a time: how long it takes to recover, and what is left.

    .venv/bin/python bench/chaos.py --fault kill-trainer [--seed 1]
    .venv/bin/python bench/chaos.py --all                 # every fault, then the table
    .venv/bin/python bench/chaos.py --fault none          # the reference run, no fault

The chain is tests/integration's (``Chain`` and the steps of ``flow``): the
five ``preannotate run <service>`` processes with their real handlers, a Kafka
broker and moto's S3 server started here for the bench, and the CVAT stand-in
in this process. Each fault gets its own chain (topic prefix, bucket, CVAT
project): a training task completed in CVAT (signed webhook), a tiny SSD
trained, converted, and a held-out task pre-annotated with it. The fault is
injected once, at a point drawn from ``--seed``:

- ``kill-<service>``: SIGKILL of that service while it works on the job, at a
  random point of its work, and a new process started (what Kubernetes does);
- ``broker-down``: the broker stopped (SIGTERM) mid-training and started again
  ``--outage`` seconds later on the same port and data;
- ``s3-down``: a TCP proxy in front of the S3 server refuses every connection
  (and drops the open ones) for ``--outage`` seconds mid-training;
- ``scale-trainer``: a second trainer started mid-training (the group rebalances);
- ``poison``: an undecodable value on task.annotated before the training task.

A service process that exits on its own is started again (as Kubernetes
would) and said so in the row. Per fault, the row gives: when it was injected,
the time to recover (from injection until the job's work went past the point
the fault hit: the next stage, or for faults during training the training
step reached at the fault reported again), the training job's time end to end,
and the outcome checks: one model version (models and serving areas), the step
training resumed from against the newest checkpoint stored at the fault, one
set of automatic shapes per frame of the held-out task, what the DLQs hold,
and the jobs (the training and annotation jobs SUCCEEDED, none left open).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from preannotate.v1 import events_pb2  # noqa: E402
from tests.integration import flow  # noqa: E402
from tests.integration.chain import TERMINAL, Chain, wait_for  # noqa: E402
from tests.standins.cvat import CvatStandIn  # noqa: E402

if TYPE_CHECKING:
    from preannotate.storage import S3Storage

FAULTS = (
    "none",
    "kill-gateway",
    "kill-exporter",
    "kill-trainer",
    "kill-converter",
    "kill-inference",
    "broker-down",
    "s3-down",
    "scale-trainer",
    "poison",
)
#: Faults whose check includes "training resumed from the newest checkpoint".
TRAINER_FAULTS = ("kill-trainer", "scale-trainer")
#: Twice the test's epochs: training lasts long enough to be hit mid-way.
ARGUMENTS = flow.ARGUMENTS.replace("epochs=8", "epochs=16")
CHECKPOINT_EVERY = 4


def scripts():
    from tests.conftest import script

    return script("localkafka"), script("locals3")


# --- the dependencies, with their faults -------------------------------------------


class Broker:
    """A Kafka broker of its own (scripts/localkafka.py) that can be stopped and
    started again on the same port and data."""

    def __init__(self) -> None:
        localkafka, _ = scripts()
        self.lib = localkafka
        self.broker = localkafka.KafkaBroker()

    def start(self) -> str:
        return self.broker.start()

    def halt(self) -> None:
        b = self.broker
        self.lib.terminate(b.proc.pid, grace=20.0, proc=b.proc)

    def resume(self) -> None:
        b = self.broker
        config = b.data_dir / "server.properties"
        cmd = b._java_cmd(self.lib.fetch(b.version), "kafka.Kafka", str(config), heap=b.heap)
        with (b.data_dir / "broker.log").open("ab") as out:
            b.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=self.lib._die_with_parent,
            )
        deadline = time.monotonic() + 60
        while not self.lib.answers(b.bootstrap, timeout=2.0):
            if time.monotonic() > deadline or b.proc.poll() is not None:
                raise RuntimeError(f"the broker did not come back on {b.bootstrap}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.broker.stop()


class Blackout:
    """A TCP proxy in front of the S3 server; ``refuse`` closes it (connections
    refused, open ones dropped) for a while, then listens again on the same port."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.server: asyncio.Server | None = None
        self.open: set[asyncio.StreamWriter] = set()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self.open |= {writer, up_writer}
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self.open -= {writer, up_writer}
            writer.transport.abort()
            up_writer.transport.abort()

    async def refuse(self, seconds: float) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.open):
            w.transport.abort()
        await asyncio.sleep(seconds)
        await self.start()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for w in list(self.open):
            w.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()


@dataclass
class Infra:
    broker: Broker
    s3: Any  # scripts/locals3.py's S3Server
    proxy: Blackout
    cvat: CvatStandIn
    root: Path
    projects: int = 100

    def storage(self) -> S3Storage:
        from preannotate.storage import S3Storage
        from tests.conftest import S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY

        return S3Storage(
            bucket=f"chaos-{uuid.uuid4().hex[:8]}",
            endpoint_url=self.s3.endpoint,  # the bench's own reads go around the proxy
            region=S3_REGION,
            access_key=S3_ACCESS_KEY,
            secret_key=S3_SECRET_KEY,
            create_bucket=True,
        )


# --- one run -------------------------------------------------------------------------


@dataclass
class Row:
    fault: str
    injected: str = "-"
    recovery: float | None = None
    job_seconds: float | None = None
    versions: str = ""
    resumed: str = "-"
    shapes: str = ""
    dlq: str = ""
    jobs: str = ""
    restarts: list[str] = field(default_factory=list)
    error: str = ""

    def cells(self) -> list[str]:
        def s(x: float | None) -> str:
            return "-" if x is None else f"{x:.0f}"

        return [
            self.fault,
            self.injected,
            s(self.recovery),
            s(self.job_seconds),
            self.versions,
            self.resumed,
            self.shapes,
            self.dlq,
            self.jobs + (f"; {self.error}" if self.error else ""),
            ", ".join(self.restarts) or "-",
        ]


HEADER = [
    "fault",
    "injected",
    "recovered (s)",
    "training job (s)",
    "model versions",
    "resumed from",
    "held-out shapes",
    "DLQ",
    "jobs",
    "restarted on exit",
]


class Background:
    """A loop of the bench's own that runs inside a ``with`` block."""

    task: asyncio.Task | None = None

    async def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        self.task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()


class Supervisor(Background):
    """Starts again a service process that exited without being killed by the bench
    (what Kubernetes does), and remembers it."""

    def __init__(self, chain: Chain, row: Row) -> None:
        self.chain, self.row = chain, row
        self.retired: set[int] = set()

    def kill(self, service: str) -> None:
        proc = self.chain.procs[service][-1]
        self.retired.add(proc.pid)
        flow.kill(self.chain, service)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(1)
            for service, procs in self.chain.procs.items():
                for proc in list(procs):
                    if proc.pid not in self.retired and proc.poll() is not None:
                        self.retired.add(proc.pid)
                        self.row.restarts.append(f"{service} (exit {proc.returncode})")
                        self.chain.start(service)


class Timeline(Background):
    """Every status snapshot the bench's view showed for the chain's jobs, timed."""

    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        self.seen: dict[str, list[tuple[float, events_pb2.JobStatus]]] = {}

    async def _run(self) -> None:
        while True:
            assert self.chain.view is not None
            for job_id, status in list(self.chain.view.jobs.items()):
                history = self.seen.setdefault(job_id, [])
                if not history or history[-1][1] != status:
                    copy = events_pb2.JobStatus()
                    copy.CopyFrom(status)
                    history.append((time.monotonic(), copy))
            await asyncio.sleep(0.1)

    def first(self, job_id: str, after: float, predicate) -> float | None:
        for t, status in self.seen.get(job_id, []):
            if t >= after and predicate(status):
                return t
        return None

    def resumed(self, job_id: str) -> set[str]:
        return {
            s.details["resumed_from_step"]
            for _, s in self.seen.get(job_id, [])
            if "resumed_from_step" in s.details
        }


def step_of(chain: Chain, job_id: str) -> int:
    status = chain.view.get(job_id)
    if status is None or status.stage != events_pb2.JOB_STAGE_TRAIN:
        return 0
    return status.progress.step


async def mid_training(chain: Chain, job_id: str, rng: random.Random) -> int:
    """Wait for a random step past the first checkpoint; that step."""
    await flow.wait_stage(chain, job_id, events_pb2.JOB_STAGE_TRAIN)
    total = await wait_for(
        lambda: chain.view.get(job_id).progress.total, 600, "the training's total steps", chain
    )
    target = rng.randint(CHECKPOINT_EVERY + 1, max(CHECKPOINT_EVERY + 1, int(total * 0.7)))
    return await wait_for(
        lambda: (
            (step_of(chain, job_id) >= target and step_of(chain, job_id))
            or (chain.view.get(job_id).stage > events_pb2.JOB_STAGE_TRAIN and -1)
        ),
        900,
        f"step {target} of {total}",
        chain,
    )


async def run_fault(fault: str, infra: Infra, seed: int, outage: float) -> Row:
    row = Row(fault)
    rng = random.Random(f"{seed}-{fault}")
    infra.projects += 1
    project_id, model_name = infra.projects, f"m{infra.projects}"
    bucket = infra.storage()
    tmp = Path(tempfile.mkdtemp(prefix=f"chaos-{fault}-", dir=infra.root))
    chain = Chain(
        bootstrap=infra.broker.broker.bootstrap,
        endpoint=infra.proxy.endpoint,
        bucket=bucket.bucket,
        cvat_url=infra.cvat.url,
        cvat_token=flow.TOKEN,
        webhook_secret=flow.SECRET,
        policy=flow.policy({fault: (project_id, model_name)}, ARGUMENTS),
        namespace=flow.NAMESPACE,
        tmp=tmp,
    )
    # A fixed HTTP port: a gateway started again gets the CVAT's retries.
    chain.env["PREANNOTATE_GATEWAY_HTTP_PORT"] = str(scripts()[0].free_port())
    cvat = infra.cvat
    try:
        await flow.start_chain(chain, cvat, [project_id])
        with Supervisor(chain, row) as sup, Timeline(chain) as timeline:
            run = Run(fault, infra, chain, bucket, model_name, project_id, rng, outage)
            await one_flow(run, row, sup, timeline)
    except Exception as exc:  # the row says what broke; the next fault still runs
        row.error = f"FAILED: {str(exc).splitlines()[0][:200]}"
        (tmp / "bench-error.txt").write_text(traceback.format_exc())
        print(f"{fault}: {row.error} (logs in {tmp})", file=sys.stderr)
    finally:
        await chain.close()
    return row


@dataclass
class Run:
    """One fault's chain and what its flow needs."""

    fault: str
    infra: Infra
    chain: Chain
    bucket: S3Storage
    model_name: str
    project_id: int
    rng: random.Random
    outage: float


async def one_flow(run: Run, row: Row, sup: Supervisor, timeline: Timeline) -> None:
    fault, chain, cvat, bucket = run.fault, run.chain, run.infra.cvat, run.bucket
    model_name, project_id, rng = run.model_name, run.project_id, run.rng
    began = time.monotonic()
    poison_at = None
    if fault == "poison":
        poison_at = time.time()
        await flow.publish_poison(chain)
        row.injected = "before the training task"

    task_id = flow.add_training_task(cvat, project_id, seed=21)
    slow = cvat.export_seconds
    if fault == "kill-exporter":
        cvat.export_seconds = 2.0  # an export of a few seconds, to be killed in
    flow.complete(cvat, task_id)
    if fault == "kill-gateway":
        await asyncio.sleep(rng.uniform(0.0, 0.5))
        took = bool(flow.accepted_job(cvat, "update:task", task_id))
        fault_at = time.monotonic()
        sup.kill("gateway")
        chain.start("gateway")
        row.injected = "after it answered" if took else "before it answered the webhook"
    job_id = await flow.wait_accepted(chain, cvat, "update:task", task_id)
    if fault == "kill-gateway":
        row.recovery = time.monotonic() - fault_at

    if fault == "kill-exporter":
        await wait_for(lambda: flow.export_requests(cvat, task_id), 120, "the export", chain)
        await asyncio.sleep(rng.uniform(0.0, 4.0))
        cvat.export_seconds = slow
        stage = chain.view.get(job_id).stage
        fault_at = time.monotonic()
        sup.kill("exporter")
        chain.start("exporter")
        row.injected = "during the export" if stage <= events_pb2.JOB_STAGE_EXPORT else "after it"
        t = await wait_stage_time(chain, timeline, job_id, fault_at, events_pb2.JOB_STAGE_TRAIN)
        row.recovery = t - fault_at

    stored_at_fault: list[int] = []
    if fault in ("kill-trainer", "broker-down", "s3-down", "scale-trainer"):
        step = await mid_training(chain, job_id, rng)
        stored_at_fault = flow.checkpoint_steps(bucket, model_name)
        fault_at = time.monotonic()
        row.injected = f"training step {step}" if step > 0 else "after training"
        if fault == "kill-trainer":
            sup.kill("trainer")
            chain.start("trainer")
        elif fault == "scale-trainer":
            chain.start("trainer")
        elif fault == "broker-down":
            await asyncio.to_thread(run.infra.broker.halt)
            await asyncio.sleep(run.outage)
            await asyncio.to_thread(run.infra.broker.resume)
        elif fault == "s3-down":
            await run.infra.proxy.refuse(run.outage)
        t = await wait_for(
            lambda: timeline.first(
                job_id,
                fault_at,
                lambda s: (
                    (s.stage == events_pb2.JOB_STAGE_TRAIN and s.progress.step > step)
                    or s.stage > events_pb2.JOB_STAGE_TRAIN
                    or s.state in TERMINAL
                ),
            ),
            900,
            "training to go past the fault",
            chain,
        )
        row.recovery = t - fault_at

    await flow.convert(chain, bucket, job_id, model_name)
    if fault == "kill-converter":
        await asyncio.sleep(rng.uniform(1.0, 10.0))
        done = chain.view.get(job_id).state in TERMINAL
        fault_at = time.monotonic()
        sup.kill("converter")
        chain.start("converter")
        row.injected = "after the conversion" if done else "during the conversion"
    status = await chain.finished(job_id, 900)
    row.job_seconds = time.monotonic() - began
    if fault == "kill-converter":
        row.recovery = time.monotonic() - fault_at

    heldout, annotation = await flow.start_heldout(chain, cvat, project_id, seed=99)
    if fault == "kill-inference":
        await flow.wait_stage(chain, annotation, events_pb2.JOB_STAGE_ANNOTATE, 300)
        await asyncio.sleep(rng.uniform(0.0, 3.0))
        done = chain.view.get(annotation).state in TERMINAL
        fault_at = time.monotonic()
        sup.kill("inference")
        chain.start("inference")
        row.injected = "after the annotation" if done else "during the annotation"
    annotated = await chain.finished(annotation, 600)
    if fault == "kill-inference":
        row.recovery = time.monotonic() - fault_at

    # --- the outcome -----------------------------------------------------------------
    models, serving = flow.model_versions(bucket, model_name)
    row.versions = "one" if (models, serving) == ([1], [1]) else f"{models} / {serving}"
    if fault in TRAINER_FAULTS or timeline.resumed(job_id):
        resumed = timeline.resumed(job_id)
        newest = max(stored_at_fault, default=None)
        if not resumed:
            row.resumed = "not resumed (kept its partition)" if fault == "scale-trainer" else "no"
        else:
            row.resumed = f"step {','.join(sorted(resumed))} (newest stored {newest})"
    shapes = cvat.annotations(heldout)
    extra = flow.duplicate_shapes(shapes)
    frames = len({s["frame"] for s in shapes})
    row.shapes = (
        f"one set ({len(shapes)} on {frames} frames)"
        if shapes and not extra
        else f"{len(shapes)} shapes, extra {extra}"
    )
    dead = await chain.dead_letters()
    row.dlq = ", ".join(f"{r.topic} {r.key}" for r in dead) or "empty"
    poison = [r for r in dead if r.key == flow.POISON_KEY]
    if poison_at is not None and poison:
        row.recovery = poison[0].timestamp_ms / 1000 - poison_at
    open_jobs = [s for s in chain.view.list() if s.state not in TERMINAL]
    trainings = [
        s
        for s in chain.view.list()
        if s.kind == events_pb2.JOB_KIND_TRAINING and s.cvat.task_id == task_id
    ]
    name = events_pb2.JobState.Name
    row.jobs = (
        f"training {name(status.state).removeprefix('JOB_STATE_')}"
        f" (x{len(trainings)}), annotation {name(annotated.state).removeprefix('JOB_STATE_')},"
        f" {len(open_jobs)} open"
    )


async def wait_stage_time(chain, timeline, job_id, after, stage) -> float:
    return await wait_for(
        lambda: timeline.first(job_id, after, lambda s: s.stage >= stage or s.state in TERMINAL),
        900,
        f"job {job_id} to reach stage {stage}",
        chain,
    )


def table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines)


async def main_async(faults: list[str], seed: int, outage: float) -> list[Row]:
    _, locals3 = scripts()
    root = Path(tempfile.mkdtemp(prefix="chaos-"))
    broker = Broker()
    s3 = locals3.S3Server()
    await asyncio.to_thread(broker.start)
    await asyncio.to_thread(s3.start)
    proxy = Blackout(s3.port)
    await proxy.start()
    cvat = CvatStandIn(tokens={flow.TOKEN}, webhook_retry_intervals=(1, 2, 4, 8, 16, 32))
    await cvat.start()
    rows = []
    print(f"the chains' logs: {root}/chaos-<fault>-*/", file=sys.stderr, flush=True)
    try:
        infra = Infra(broker, s3, proxy, cvat, root)
        for fault in faults:
            print(f"--- {fault}", file=sys.stderr, flush=True)
            row = await run_fault(fault, infra, seed, outage)
            print(table([row]), file=sys.stderr, flush=True)
            rows.append(row)
    finally:
        await cvat.stop()
        await proxy.stop()
        s3.stop()
        broker.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--fault", action="append", choices=FAULTS, help="repeatable")
    which.add_argument("--all", action="store_true", help="every fault, in the table's order")
    p.add_argument("--seed", type=int, default=1, help="draws the point of each fault")
    p.add_argument("--outage", type=float, default=20.0, help="seconds broker / S3 are down")
    ns = p.parse_args(argv)
    faults = list(FAULTS) if ns.all else ns.fault
    began = time.monotonic()
    rows = asyncio.run(main_async(faults, ns.seed, ns.outage))
    print(table(rows))
    print(f"\n{len(rows)} runs in {time.monotonic() - began:.0f} s (seed {ns.seed})")
    return 0 if all(not r.error for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
