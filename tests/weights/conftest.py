"""Fixtures of the weights tests: real TF checkpoints and a local HTTP server as the mirror."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

#: The variables written into the test checkpoints, by name.
VALUES = {"kernel": np.arange(12, dtype=np.float32).reshape(3, 4), "bias": np.ones(4, np.float32)}


def write_checkpoint(prefix: Path, scale: float = 1.0) -> list[Path]:
    """A real ``tf.train.Checkpoint`` of two variables at ``prefix``; its files, index first."""
    import tensorflow as tf

    prefix.parent.mkdir(parents=True, exist_ok=True)
    ckpt = tf.train.Checkpoint(**{k: tf.Variable(v * scale) for k, v in VALUES.items()})
    ckpt.write(str(prefix))
    return [Path(f"{prefix}.index"), Path(f"{prefix}.data-00000-of-00001")]


def tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass
class Checkpoints:
    """Checkpoint files made once per session."""

    mobilenet: list[Path]  # ckpt-180648: the name ssd-mobilenet-v2-coco's source publishes
    other: list[Path]  # ckpt-180648 with other values: a "different release"
    archive: bytes  # a tar.gz holding resnet-101/ckpt-7.{index,data}
    h5: Path

    @property
    def mobilenet_sha256(self) -> str:
        h = hashlib.sha256()
        for path in self.mobilenet:
            h.update(path.read_bytes())
        return h.hexdigest()


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> Checkpoints:
    import h5py

    root = tmp_path_factory.mktemp("checkpoints")
    mobilenet = write_checkpoint(root / "a" / "ckpt-180648")
    other = write_checkpoint(root / "b" / "ckpt-180648", scale=2.0)
    resnet = write_checkpoint(root / "c" / "ckpt-7")
    archive = tar_gz({f"resnet-101/{p.name}": p.read_bytes() for p in resnet})
    h5 = root / "weights.h5"
    with h5py.File(h5, "w") as f:
        f.create_dataset("kernel", data=VALUES["kernel"])
    return Checkpoints(mobilenet, other, archive, h5)


@dataclass
class Mirror:
    """A local HTTP server: ``files`` by path; ``short`` paths announce more bytes than sent."""

    url: str
    files: dict[str, bytes] = field(default_factory=dict)
    short: set[str] = field(default_factory=set)
    requests: list[str] = field(default_factory=list)

    def serve_checkpoint(self, paths: list[Path], under: str = "") -> None:
        for path in paths:
            self.files[f"{under}/{path.name}"] = path.read_bytes()


@pytest.fixture
def mirror() -> Iterator[Mirror]:
    state = Mirror(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            data = state.files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2] if self.path in state.short else data)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
