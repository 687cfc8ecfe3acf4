"""Fixtures of the gateway tests: a running gateway (in-process bus or real Kafka), and
helpers to sign CVAT deliveries, call TrainingService and read what was published."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import yaml

from preannotate import events, topics
from preannotate.bus import MemoryBus
from preannotate.runner import Runtime
from preannotate.storage import LocalStorage, PrefixWriter
from preannotate.v1 import training_pb2_grpc
from services.gateway.service import build
from services.gateway.settings import GatewaySettings
from tests.platform.buses import drain

SECRET = "webhook-secret-for-tests"
TOKEN_A = "token-of-alice-0123456789"
TOKEN_B = "token-of-bob-0123456789ab"
TOKEN_ALL = "token-of-admin-0123456789"

#: Project 3 trains per task, project 4 per job; both in namespace team-a.
POLICY = {
    # one secret for every project, tasks not confirmed (tests/security covers both)
    "global_secret": True,
    "confirm_tasks": False,
    "projects": [
        {
            "project_id": 3,
            "namespace": "team-a",
            "trigger": "task",
            "model_type": "ssd-mobilenet-v2-coco",
            "arguments": "epochs=200;batch_size=8",
            "model_name": "birds",
        },
        {
            "project_id": 4,
            "namespace": "team-a",
            "trigger": "job",
            "model_type": "frcnn-res50-coco",
            "arguments": "epochs=100",
            "machine_type": "gpu-2",
            "model_name": "cars",
            "organization": "lab",
            "threshold": 0.3,
            "label_thresholds": {"car": 0.6},
            "review_issues": 2,
        },
    ],
}

TOKENS = {
    "tokens": [
        {"name": "alice", "token": TOKEN_A, "namespaces": ["team-a"]},
        {
            "name": "bob",
            "sha256": hashlib.sha256(TOKEN_B.encode()).hexdigest(),
            "namespaces": ["team-b"],
        },
        {"name": "admin", "token": TOKEN_ALL, "namespaces": ["*"]},
    ]
}


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def write_model(
    storage, namespace: str, name: str, version: int, area: str = "serving", **manifest: Any
) -> str:
    """A finished model version in storage (files, then the manifest)."""
    prefix = f"{namespace}/{area}/{name}/{version}/"
    with PrefixWriter(storage, prefix) as out:
        out.put("saved_model.pb" if area == "serving" else "classes.csv", b"x")
        out.commit(manifest)
    return prefix


@dataclass
class Gateway:
    """A started gateway runtime and what a test needs to talk to it."""

    runtime: Runtime
    settings: GatewaySettings
    storage: LocalStorage
    _readers: dict[str, Any] = field(default_factory=dict)

    @property
    def bus(self):
        return self.runtime.bus

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.runtime.http_ports['gateway']}/webhooks/cvat"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.runtime.grpc_ports['gateway']}"

    async def post(
        self,
        payload: dict[str, Any] | bytes,
        *,
        signature: str | bool | None = True,
        secret: str = SECRET,
    ) -> tuple[int, dict[str, Any]]:
        """POST a delivery as CVAT does; ``signature=True`` signs it, None sends none."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if signature is True:
            headers["X-Signature-256"] = sign(body, secret)
        elif isinstance(signature, str):
            headers["X-Signature-256"] = signature
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.http_url, data=body, headers=headers) as response,
        ):
            return response.status, await response.json()

    def channel(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(self.grpc_address)

    async def published(self, topic: str, expect: int = 1, timeout: float = 5.0) -> list:
        """Every event on ``topic`` so far (waits up to ``timeout`` for ``expect`` of them)."""
        if isinstance(self.bus, MemoryBus):
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while len(self.bus.records(topic)) < expect and loop.time() < deadline:
                await asyncio.sleep(0.02)
            return [events.decode(r) for r in self.bus.records(topic)]
        reader = self._readers.get(topic)
        if reader is None:
            reader = self.bus.consumer([topic], None, from_beginning=True)
            await reader.start()
            self._readers[topic] = reader
            reader.seen = []
        reader.seen.extend(await drain(reader, expect - len(reader.seen), timeout))
        return [events.decode(r) for r in reader.seen]

    async def close_readers(self) -> None:
        for reader in self._readers.values():
            await reader.stop()
        self._readers.clear()


def write_yaml(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def gateway_factory(tmp_path) -> Callable[..., Any]:
    """``await make(bus="memory"|"kafka", ...)`` -> a started ``Gateway``; stopped at the end."""
    started: list[Gateway] = []

    async def make(
        *,
        kafka_bootstrap: str | None = None,
        topic_prefix: str | None = None,
        tokens: bool = False,
        policy: object = POLICY,
        storage: LocalStorage | None = None,
        **overrides: Any,
    ) -> Gateway:
        values: dict[str, Any] = {
            "machine_types": "cpu=0,gpu-2=2",
            "default_machine_type": "cpu",
            "namespace": "team-a",
            "webhook_secret": SECRET,
            "gateway_grpc_port": 0,
            "gateway_http_port": 0,
            "metrics_port": 0,
            "kafka_partitions": 1,
            "shutdown_grace_seconds": 2.0,
        }
        if policy is not None:
            values["webhook_policy_file"] = write_yaml(
                tmp_path / f"policy-{uuid.uuid4().hex[:6]}.yaml", policy
            )
        if tokens:
            values["tokens_file"] = write_yaml(tmp_path / "tokens.yaml", TOKENS)
        if kafka_bootstrap:
            values.update(
                bus="kafka",
                kafka_bootstrap=kafka_bootstrap,
                kafka_topic_prefix=topic_prefix or f"t{uuid.uuid4().hex[:8]}.",
                session_timeout_ms=6000,
            )
            if not tokens:
                values["auth"] = "none"
            bus = None
        else:
            values["bus"] = "memory"
            bus = MemoryBus(default_partitions=1)
        values.update(overrides)
        settings = GatewaySettings(**values)
        storage = storage or LocalStorage(tmp_path / "storage")
        runtime = Runtime([(build(settings), settings)], bus=bus, storage=storage)
        await runtime.start()
        gw = Gateway(runtime, settings, storage)
        started.append(gw)
        return gw

    make.started = started
    return make


@pytest.fixture
async def gateway_cleanup(gateway_factory):
    yield gateway_factory
    for gw in gateway_factory.started:
        await gw.close_readers()
        await gw.runtime.stop()


@pytest.fixture
async def gateway(gateway_cleanup):
    """A gateway over the in-process bus, open access, the test policy."""
    return await gateway_cleanup()


@pytest.fixture
async def stub(gateway):
    async with gateway.channel() as channel:
        yield training_pb2_grpc.TrainingServiceStub(channel)


def statuses(gw: Gateway, job_id: str | None = None) -> list:
    """job.status records on the in-process bus (for the job, or all)."""
    out = [events.decode(r) for r in gw.bus.records(topics.JOB_STATUS)]
    return [s for s in out if job_id is None or s.job_id == job_id]
