"""A serving backend stand-in and the inference service on the real runner, for the
security tests: everything between a request and the backend is the service's own
code; the backend answers one box per image (the real ones need trained models)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import yaml
from PIL import Image

from preannotate.bus import MemoryBus
from preannotate.runner import Runtime
from preannotate.storage import LocalStorage
from preannotate.v1 import common_pb2, inference_pb2_grpc, training_pb2_grpc
from services.gateway.service import build as build_gateway
from services.gateway.settings import GatewaySettings
from services.inference import app as inference_app
from services.inference.backends.base import ImageInput, RawOutput
from services.inference.service import build as build_inference
from tests.inference.helpers import TOKEN as CVAT_TOKEN
from tests.inference.helpers import make_settings, publish_model
from tests.standins.cvat import CvatStandIn

SHAPES = common_pb2.ModelRef(namespace="default", name="shapes")


class GatedBackend:
    """A serving backend that answers one box (class 1, score 0.9) per image; while
    ``gate`` is cleared every call waits, so that requests stay in flight."""

    name = "gated"

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = asyncio.Event()
        self.images = 0
        self.calls = 0

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def sync(self) -> None: ...

    async def prepare(self, model: Any) -> None: ...

    async def predict(self, model: Any, images: Sequence[ImageInput]) -> list[RawOutput]:
        self.calls += 1
        self.images += len(images)
        self.waiting.set()
        await self.gate.wait()
        box = RawOutput(
            boxes=np.array([[0.25, 0.25, 0.75, 0.75]], np.float32),
            scores=np.array([0.9], np.float32),
            classes=np.array([1], np.int64),
        )
        return [box for _ in images]

    def describe(self) -> dict[str, Any]:
        return {"calls": self.calls, "images": self.images}


def small_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((40, 60, 3), 128, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


async def start_inference(tmp_path: Path, monkeypatch, **overrides: Any):
    """(runtime, channel, stub, backend): the inference service on the real runner."""
    source = tmp_path / "savedmodel"
    source.mkdir(parents=True)
    (source / "saved_model.pb").write_bytes(b"stand-in")
    storage = LocalStorage(tmp_path / "storage")
    publish_model(storage, source, namespace="default", name="shapes")
    backend = GatedBackend()
    monkeypatch.setattr(inference_app, "make_backend", lambda *a, **k: backend)
    settings = make_settings(tmp_path, metrics_port=0, **overrides)
    runtime = Runtime([(build_inference(settings), settings)], bus=MemoryBus(), storage=storage)
    await runtime.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{runtime.grpc_ports['inference']}")
    return runtime, channel, inference_pb2_grpc.InferenceServiceStub(channel), backend


@dataclass
class Services:
    """A gateway and an inference service on the real runner, as ``two_services`` starts
    them: their buses (one shared, or one each), storage, gRPC stubs, the backend
    stand-in and the CVAT stand-in."""

    gateway_bus: MemoryBus
    inference_bus: MemoryBus
    gateway: Runtime
    inference: Runtime
    training: training_pb2_grpc.TrainingServiceStub
    annotating: inference_pb2_grpc.InferenceServiceStub
    backend: GatedBackend
    cvat: CvatStandIn


@asynccontextmanager
async def two_services(
    tmp_path: Path,
    monkeypatch,
    tokens: dict[str, Any],
    *,
    model: tuple[str, str],
    namespace: str = "team-a",
    shared_bus: bool = True,
    gateway_cvat: bool = False,
) -> AsyncIterator[Services]:
    """A gateway (``namespace`` its default) and an inference service sharing storage
    (and, with ``shared_bus``, one bus: the distributed mode's Kafka), both checking
    ``tokens``; ``model`` (namespace, name) is published for the backend stand-in.
    ``gateway_cvat``: the gateway talks to the CVAT stand-in too (it asks CVAT about
    tasks)."""
    source = tmp_path / "savedmodel"
    source.mkdir()
    (source / "saved_model.pb").write_bytes(b"stand-in")
    storage = LocalStorage(tmp_path / "storage")
    publish_model(storage, source, namespace=model[0], name=model[1])
    backend = GatedBackend()
    monkeypatch.setattr(inference_app, "make_backend", lambda *a, **k: backend)
    tokens_file = tmp_path / "tokens.yaml"
    tokens_file.write_text(yaml.safe_dump(tokens))
    gw_bus = MemoryBus(default_partitions=1)
    inf_bus = gw_bus if shared_bus else MemoryBus(default_partitions=1)
    async with CvatStandIn(tokens={CVAT_TOKEN}) as cvat:
        cvat_settings = {"cvat_url": cvat.url, "cvat_token": CVAT_TOKEN} if gateway_cvat else {}
        gw_settings = GatewaySettings(
            bus="memory",
            namespace=namespace,
            machine_types="cpu=0",
            tokens_file=tokens_file,
            gateway_grpc_port=0,
            gateway_http_port=0,
            metrics_port=0,
            kafka_partitions=1,
            shutdown_grace_seconds=2.0,
            **cvat_settings,
        )
        inf_settings = make_settings(
            tmp_path, cvat_url=cvat.url, tokens_file=tokens_file, metrics_port=0, kafka_partitions=1
        )
        gateway = Runtime([(build_gateway(gw_settings), gw_settings)], bus=gw_bus, storage=storage)
        inference = Runtime(
            [(build_inference(inf_settings), inf_settings)], bus=inf_bus, storage=storage
        )
        await gateway.start()
        await inference.start()
        gw = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_ports['gateway']}")
        inf = grpc.aio.insecure_channel(f"127.0.0.1:{inference.grpc_ports['inference']}")
        try:
            yield Services(
                gateway_bus=gw_bus,
                inference_bus=inf_bus,
                gateway=gateway,
                inference=inference,
                training=training_pb2_grpc.TrainingServiceStub(gw),
                annotating=inference_pb2_grpc.InferenceServiceStub(inf),
                backend=backend,
                cvat=cvat,
            )
        finally:
            await gw.close()
            await inf.close()
            await inference.stop()
            await gateway.stop()


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """gRPC metadata carrying ``token``."""
    return (("authorization", f"Bearer {token}"),)
