"""A serving backend stand-in and the inference service on the real runner, for the
security tests: everything between a request and the backend is the service's own
code; the backend answers one box per image (the real ones need trained models)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from PIL import Image

from preannotate.bus import MemoryBus
from preannotate.runner import Runtime
from preannotate.storage import LocalStorage
from preannotate.v1 import common_pb2, inference_pb2_grpc
from services.inference import app as inference_app
from services.inference.backends.base import ImageInput, RawOutput
from services.inference.service import build as build_inference
from tests.inference.helpers import make_settings, publish_model

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
