"""The latency the event chain adds, and webhook ingest, through the real Kafka broker.

    .venv/bin/python bench/chain.py [--events 300] [--rate 20] [--deliveries 2000]

Two measurements, each run on the real Kafka broker (started here from
scripts/localkafka.py) and on the in-process bus as the baseline, in this
same process:

1. chain: four stages with instant handlers (export, train, convert,
   annotate) run by the real runner; a TaskAnnotated is published at a steady
   rate and the time until its TaskPreannotated arrives is recorded:
   p50 / p99 / max in ms. Target (Kafka): p99 under 250 ms.
2. ingest: the real gateway receives signed CVAT ``update:job`` deliveries
   over HTTP from concurrent clients (each becomes a TaskAnnotated on the
   bus and a job status): deliveries per second and the p99 latency of a
   delivery, per concurrency. Target (Kafka): at least 500 deliveries/s.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import importlib.util
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from preannotate import events, topics  # noqa: E402
from preannotate.bus import MemoryBus  # noqa: E402
from preannotate.handler import Outcome, Route  # noqa: E402
from preannotate.runner import Runtime  # noqa: E402
from preannotate.service import ServiceSpec  # noqa: E402
from preannotate.settings import ServiceSettings  # noqa: E402
from preannotate.storage import LocalStorage  # noqa: E402
from preannotate.telemetry.logging import configure  # noqa: E402
from preannotate.v1 import common_pb2, events_pb2  # noqa: E402

SECRET = "bench-secret"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def settings_for(bus: str, bootstrap: str, **extra) -> dict:
    return {
        "bus": bus,
        "kafka_bootstrap": bootstrap,
        "kafka_topic_prefix": f"b{uuid.uuid4().hex[:6]}.",
        "kafka_partitions": 3,
        "kafka_fetch_max_wait_ms": 100,
        "log_level": "warning",
        **extra,
    }


# --- 1. the chain ------------------------------------------------------------


def stage(produced: str, build):
    async def handle(msg, _ctx):
        return Outcome.emit(produced, build(msg))

    return handle


def chain_specs() -> list[ServiceSpec]:
    ref = common_pb2.ModelRef(namespace="bench", name="m", version=1)
    steps = [
        (
            "export",
            topics.TASK_ANNOTATED,
            events_pb2.JOB_STAGE_EXPORT,
            topics.train_jobs("cpu"),
            lambda m: events_pb2.DatasetExported(job_id=m.job_id, namespace=m.namespace),
        ),
        (
            "train",
            topics.train_jobs("cpu"),
            events_pb2.JOB_STAGE_TRAIN,
            topics.MODEL_TRAINED,
            lambda m: events_pb2.ModelTrained(job_id=m.job_id, namespace=m.namespace, model=ref),
        ),
        (
            "convert",
            topics.MODEL_TRAINED,
            events_pb2.JOB_STAGE_CONVERT,
            topics.MODEL_CONVERTED,
            lambda m: events_pb2.ModelConverted(
                job_id=m.job_id, namespace=m.namespace, model=m.model
            ),
        ),
        (
            "annotate",
            topics.MODEL_CONVERTED,
            events_pb2.JOB_STAGE_ANNOTATE,
            topics.TASK_PREANNOTATED,
            lambda m: events_pb2.TaskPreannotated(job_id=m.job_id, namespace=m.namespace),
        ),
    ]
    return [
        ServiceSpec(name=name, routes=[Route(consumed, stage(produced, build), stage=st)])
        for name, consumed, st, produced, build in steps
    ]


async def run_chain(kind: str, bootstrap: str, n: int, rate: float, tmp: Path) -> list[float]:
    settings = ServiceSettings(**settings_for(kind, bootstrap))
    bus = MemoryBus() if kind == "memory" else None
    runtime = Runtime(
        [(spec, settings) for spec in chain_specs()],
        bus=bus,
        storage=LocalStorage(tmp / f"chain-{kind}"),
    )
    await runtime.start()
    reader = runtime.bus.consumer([topics.TASK_PREANNOTATED], None, from_beginning=False)
    await reader.start()
    sent: dict[str, float] = {}
    latencies: list[float] = []

    async def receive() -> None:
        while len(latencies) < n:
            for record in await reader.poll(timeout=0.5):
                t0 = sent.pop(record.key, None)
                if t0 is not None:
                    latencies.append((time.perf_counter() - t0) * 1000)

    receiver = asyncio.create_task(receive())
    try:
        # warm-up: groups joined, connections open
        for i in range(5):
            job = f"warm-{i}"
            sent[job] = time.perf_counter()
            await events.publish(
                runtime.bus,
                topics.TASK_ANNOTATED,
                events_pb2.TaskAnnotated(job_id=job, namespace="bench"),
                source="b",
            )
        while len(latencies) < 5:
            await asyncio.sleep(0.05)
        latencies.clear()
        gap = 1.0 / rate
        start = time.perf_counter()
        for i in range(n):
            job = f"job-{i}"
            due = start + i * gap
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            sent[job] = time.perf_counter()
            await events.publish(
                runtime.bus,
                topics.TASK_ANNOTATED,
                events_pb2.TaskAnnotated(job_id=job, namespace="bench"),
                source="b",
            )
        await asyncio.wait_for(receiver, timeout=120)
    finally:
        receiver.cancel()
        await reader.stop()
        await runtime.stop()
    return latencies


# --- 2. webhook ingest -------------------------------------------------------


def delivery(i: int) -> bytes:
    job = {
        "url": f"http://cvat.local/api/jobs/{i}",
        "id": i,
        "task_id": 1000 + i,
        "project_id": 4,
        "stage": "annotation",
        "state": "completed",
        "status": "annotation",
        "updated_date": f"2026-01-01T00:00:{i % 60:02d}.{i:06d}Z",
        "start_frame": 0,
        "stop_frame": 9,
        "frame_count": 10,
        "type": "annotation",
        "organization": None,
    }
    payload = {
        "event": "update:job",
        "job": job,
        "webhook_id": 1,
        "changes": {"state": {"from": "in progress", "to": "completed"}},
        "sender": {"id": 1, "username": "bench", "url": "http://cvat.local/api/users/1"},
    }
    return json.dumps(payload).encode()


async def run_ingest(kind: str, bootstrap: str, total: int, concurrency: int, tmp: Path):
    import yaml

    from services.gateway.service import build
    from services.gateway.settings import GatewaySettings

    policy = tmp / "policy.yaml"
    policy.write_text(
        yaml.safe_dump(
            {
                "projects": [
                    {
                        "project_id": 4,
                        "namespace": "bench",
                        "trigger": "job",
                        "model_type": "ssd-mobilenet-v2-coco",
                        "arguments": "epochs=100;pretrained=false",
                        "model_name": "m",
                    }
                ]
            }
        )
    )
    settings = GatewaySettings(
        **settings_for(
            kind,
            bootstrap,
            webhook_secret=SECRET,
            webhook_policy_file=policy,
            gateway_http_port=0,
            gateway_grpc_port=0,
            namespace="bench",
        )
    )
    bus = MemoryBus() if kind == "memory" else None
    runtime = Runtime(
        [(build(settings), settings)],
        bus=bus,
        storage=LocalStorage(tmp / f"ingest-{kind}-{concurrency}"),
    )
    await runtime.start()
    url = f"http://127.0.0.1:{runtime.http_ports['gateway']}/webhooks/cvat"
    bodies = [delivery(i + 1) for i in range(total)]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue = iter(range(total))
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:

            async def client() -> None:
                for i in queue:
                    body = bodies[i]
                    sig = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                    t0 = time.perf_counter()
                    async with s.post(
                        url,
                        data=body,
                        headers={
                            "Content-Type": "application/json",
                            "X-Signature-256": f"sha256={sig}",
                        },
                    ) as resp:
                        await resp.read()
                        statuses[resp.status] = statuses.get(resp.status, 0) + 1
                    latencies.append((time.perf_counter() - t0) * 1000)

            await asyncio.gather(*(client() for _ in range(min(concurrency, 4))))  # warm-up
            latencies.clear()
            statuses.clear()
            bodies = [delivery(total + i + 1) for i in range(total)]
            queue = iter(range(total))
            start = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            elapsed = time.perf_counter() - start
    finally:
        await runtime.stop()
    return total / elapsed, latencies, statuses


def pct(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


async def main_async(args) -> None:
    configure("bench", "warning", "console")
    localkafka = load_script("localkafka")
    with tempfile.TemporaryDirectory() as tmpdir, localkafka.KafkaBroker() as broker:
        tmp = Path(tmpdir)
        print(f"Kafka broker {broker.bootstrap}; {args.events} events at {args.rate}/s\n")
        print("chain: task.annotated -> 4 stages -> task.preannotated (ms)")
        print(f"{'bus':8} {'p50':>8} {'p99':>8} {'max':>8}")
        for kind in ("memory", "kafka"):
            lat = await run_chain(kind, broker.bootstrap, args.events, args.rate, tmp)
            print(f"{kind:8} {pct(lat, 50):8.1f} {pct(lat, 99):8.1f} {max(lat):8.1f}")
        print("\ningest: signed update:job deliveries to the gateway")
        print(f"{'bus':8} {'clients':>7} {'deliv/s':>9} {'p50 ms':>8} {'p99 ms':>8}  answers")
        for kind in ("memory", "kafka"):
            for conc in args.concurrency:
                rate, lat, statuses = await run_ingest(
                    kind, broker.bootstrap, args.deliveries, conc, tmp
                )
                print(
                    f"{kind:8} {conc:7d} {rate:9.0f} {pct(lat, 50):8.1f} {pct(lat, 99):8.1f}  {statuses}"
                )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=300)
    p.add_argument("--rate", type=float, default=20.0, help="events per second into the chain")
    p.add_argument("--deliveries", type=int, default=2000)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
