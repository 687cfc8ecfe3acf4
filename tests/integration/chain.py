"""The five services as their own processes, for the end-to-end tests of the whole chain.

``Chain`` starts ``preannotate run <service>`` (as ``python -m preannotate.cli.main``) for the gateway,
exporter, trainer, converter and inference service, all on one Kafka topic
prefix and one S3 bucket, with the CVAT stand-in as their CVAT. Each process
logs JSON to ``<tmp>/<service>-<n>.log``; ``wait_started`` reads the runner's
"started" line for the ports it bound (every port is 0: a free one).
``Chain.bus`` and ``Chain.view`` are the test's own bus and job-status view on
the same topics.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import yaml

from preannotate import topics
from preannotate.bus import Record, dlq_topic
from preannotate.v1 import events_pb2
from tests.platform.buses import drain, kafka_settings
from tests.platform.stage_process import BusSide, service_env, stop_processes

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("gateway", "exporter", "trainer", "converter", "inference")
TERMINAL = {
    events_pb2.JOB_STATE_SUCCEEDED,
    events_pb2.JOB_STATE_FAILED,
    events_pb2.JOB_STATE_CANCELLED,
}


class Chain(BusSide):
    """The five service processes over one topic prefix, one bucket and one CVAT."""

    def __init__(
        self,
        *,
        bootstrap: str,
        endpoint: str,
        bucket: str,
        cvat_url: str,
        cvat_token: str,
        webhook_secret: str,
        policy: dict[str, Any],
        namespace: str,
        tmp: Path,
    ) -> None:
        self.tmp = tmp
        self.prefix = f"c{uuid.uuid4().hex[:8]}."
        self.bootstrap = bootstrap
        policy_file = tmp / "policy.yaml"
        policy_file.write_text(yaml.safe_dump(policy))
        self.env = {
            **service_env(bootstrap, endpoint, bucket, self.prefix),
            "PREANNOTATE_NAMESPACE": namespace,
            "PREANNOTATE_LOG_FORMAT": "json",
            "PREANNOTATE_METRICS_PORT": "0",
            # gateway
            "PREANNOTATE_WEBHOOK_SECRET": webhook_secret,
            "PREANNOTATE_WEBHOOK_POLICY_FILE": str(policy_file),
            "PREANNOTATE_GATEWAY_GRPC_PORT": "0",
            "PREANNOTATE_GATEWAY_HTTP_PORT": "0",
            # exporter and inference
            "PREANNOTATE_CVAT_URL": cvat_url,
            "PREANNOTATE_CVAT_TOKEN": cvat_token,
            "PREANNOTATE_CVAT_POLL_INTERVAL_SECONDS": "0.05",
            "PREANNOTATE_EXPORT_WORK_DIR": str(tmp / "exporter"),
            # trainer
            "PREANNOTATE_TRAINER_PROGRESS_SECONDS": "0.2",
            "PREANNOTATE_TRAINER_SUMMARY_EVERY": "4",
            "PREANNOTATE_TRAINER_LEASE_SECONDS": "15",
            # converter: the parity check on one image (the product's check, fewer inputs)
            "PREANNOTATE_CONVERT_WORK_DIR": str(tmp / "converter"),
            "PREANNOTATE_CONVERT_PARITY_IMAGES": "1",
            # inference: TensorFlow in the process
            "PREANNOTATE_BACKEND": "inprocess",
            "PREANNOTATE_INFERENCE_MODEL_CACHE_DIR": str(tmp / "inference-cache"),
            "PREANNOTATE_INFERENCE_GRPC_PORT": "0",
            "PREANNOTATE_NUCLIO_PORT": "0",
        }
        self.procs: dict[str, list[subprocess.Popen]] = {name: [] for name in SERVICES}

    # --- processes ------------------------------------------------------------------

    def start(self, service: str) -> subprocess.Popen:
        n = len(self.procs[service])
        env = {**self.env, "PREANNOTATE_TRAINER_WORK_DIR": str(self.tmp / f"trainer-{n}")}
        with open(self.log_path(service, n), "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "preannotate.cli.main", "run", service],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self.procs[service].append(proc)
        return proc

    def log_path(self, service: str, n: int) -> Path:
        return self.tmp / f"{service}-{n}.log"

    def log_events(self, service: str, n: int = -1) -> list[dict[str, Any]]:
        """The JSON log lines of one process (the newest of the service by default)."""
        n = n if n >= 0 else len(self.procs[service]) - 1
        path = self.log_path(service, n)
        out = []
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("{"):
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError:
                        continue
        return out

    async def wait_started(self, service: str, timeout: float = 180) -> dict[str, Any]:
        """The runner's "started" line of the service's newest process (its ports)."""
        proc = self.procs[service][-1]

        def started() -> dict[str, Any] | None:
            return next((e for e in self.log_events(service) if e.get("event") == "started"), None)

        line = await wait_for(
            lambda: started() or (proc.poll() is not None and proc.returncode is not None),
            timeout,
            f"{service} to start",
            self,
        )
        if not isinstance(line, dict):
            raise AssertionError(f"{service} exited with {proc.returncode}\n{self.logs()}")
        return line

    def logs(self, tail: int = 4000) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-tail:]}"
            for p in sorted(self.tmp.glob("*.log"))
        )

    def stop(self) -> None:
        stop_processes([p for procs in self.procs.values() for p in procs], grace=30)

    # --- the test's side of the bus -------------------------------------------------

    async def open(self) -> None:
        """Create every topic (as each service does at start) and start the status view."""
        await super().open(kafka_settings(self.bootstrap, kafka_topic_prefix=self.prefix), 1)

    async def finished(self, job_id: str, timeout: float) -> events_pb2.JobStatus:
        """The job's status once it is terminal (SUCCEEDED, FAILED or CANCELLED)."""
        assert self.view is not None

        def done():
            status = self.view.get(job_id)
            return status if status is not None and status.state in TERMINAL else None

        return await wait_for(done, timeout, f"job {job_id} to end", self)

    async def records(self, names: list[str]) -> list[Record]:
        """Every record on the chain's topics ``names`` so far (read from the start)."""
        assert self.bus is not None
        reader = self.bus.consumer(names, None)
        await reader.start()
        try:
            return await drain(reader, 10_000, timeout=3)
        finally:
            await reader.stop()

    async def dead_letters(self) -> list[Record]:
        """Every record on any DLQ of the chain's topics."""
        return await self.records([dlq_topic(t) for t in topics.all_topics(["cpu"])])


async def wait_for(predicate, timeout: float, what: str, chain: Chain):
    """Poll ``predicate`` until it returns something truthy; that value, or AssertionError
    with the processes' logs."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{chain.logs()}")
        await asyncio.sleep(0.2)
