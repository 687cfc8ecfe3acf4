"""``preannotate annotate`` and ``preannotate predict`` against a served InferenceService."""

from __future__ import annotations

import argparse
import io
import json

import grpc
import pytest
from rich.console import Console

from preannotate.cli import inference as cli
from preannotate.grpc_errors import ErrorInterceptor
from preannotate.storage import LocalStorage
from preannotate.v1 import inference_pb2_grpc
from services.inference.servicer import InferenceServicer
from tests.inference.helpers import make_settings, publish_model, start_app
from tests.standins.cvat import make_shapes_dataset, shapes_labels

pytestmark = pytest.mark.tf


@pytest.fixture
async def address(tmp_path, retinanet_dir, cvat):
    storage = LocalStorage(tmp_path / "storage")
    publish_model(storage, retinanet_dir, name="shapes")
    app, _ = await start_app(make_settings(tmp_path, cvat_url=cvat.url), storage)
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(InferenceServicer(app), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(0)
    await app.stop()


def _console():
    buf = io.StringIO()
    return Console(file=buf, width=120, force_terminal=False), buf


async def test_annotate_command(address, cvat):
    images, _ = make_shapes_dataset(6, size=(160, 120), seed=101)
    task_id = cvat.add_task("t", labels=shapes_labels(("circle",)), images=images)
    cvat.break_frame(task_id, 2)
    console, out = _console()
    code = await cli.annotate_async(
        task=task_id,
        model="shapes",
        threshold=0.5,
        replace=True,
        connection=cli.Connection(address),
        console=console,
    )
    text = out.getvalue()
    assert code == cli.OK, text
    written = len(cvat.annotations(task_id))
    assert f"wrote {written} shapes on 5 of 6 frames of task {task_id}" in text
    assert "skipped frame 2:" in text
    assert "classes without a task label (not written): square" in text

    console, out = _console()
    code = await cli.annotate_async(task=task_id, model="nope", connection=cli.Connection(address),
                                    console=console)  # fmt: skip
    assert code == cli.REFUSED and "error (not_found)" in out.getvalue()
    console, out = _console()
    code = await cli.annotate_async(task=task_id, model="shapes",
                                    connection=cli.Connection("127.0.0.1:1"), console=console)  # fmt: skip
    assert code == cli.REFUSED and "cannot be reached" in out.getvalue()


async def test_predict_command_prints_and_saves(address, tmp_path):
    images, _ = make_shapes_dataset(2, size=(160, 120), seed=102)
    paths = []
    for name, data in images:
        path = tmp_path / name
        path.write_bytes(data)
        paths.append(path)
    console, out = _console()
    code = await cli.predict_async(
        images=paths, model="shapes/1", threshold=0.5, out=tmp_path / "out",
        connection=cli.Connection(address), console=console,
    )  # fmt: skip
    assert code == cli.OK, out.getvalue()
    saved = json.loads((tmp_path / "out" / f"{paths[0].stem}.json").read_text())
    assert saved["model"] == "default/shapes/1" and saved["width"] == 160
    assert saved["detections"] and all(d["score"] >= 0.5 for d in saved["detections"])
    assert (tmp_path / "out" / f"{paths[1].stem}.png").stat().st_size > 0
    assert "circle" in out.getvalue() or "square" in out.getvalue()

    console, out = _console()
    assert (
        await cli.predict_async(
            images=paths[:1],
            model="shapes",
            as_json=True,
            connection=cli.Connection(address),
            console=console,
        )
        == cli.OK
    )
    printed = json.loads(out.getvalue())
    assert list(printed) == [str(paths[0])]


def test_argument_wiring():
    parser = argparse.ArgumentParser()
    handler = cli.add_arguments("annotate", parser)
    ns = parser.parse_args(
        ["--task", "13", "--model", "shapes/2", "--threshold", "0.4", "--replace"]
    )
    assert (ns.task, ns.model, ns.threshold, ns.replace) == (13, "shapes/2", 0.4, True)
    assert callable(handler)
    parser = argparse.ArgumentParser()
    cli.add_arguments("predict", parser)
    ns = parser.parse_args(["a.jpg", "b.png", "--model", "m", "--json"])
    assert [p.name for p in ns.images] == ["a.jpg", "b.png"] and ns.json
    assert cli.model_ref("shapes/3", "ns").version == 3
    with pytest.raises(ValueError, match="<name>/<version>"):
        cli.model_ref("shapes/latest")
    env = {"PREANNOTATE_INFERENCE_ADDRESS": "inference:50052", "PREANNOTATE_TOKEN": "t"}
    conn = cli.Connection.from_env(env)
    assert conn.address == "inference:50052" and conn.metadata() == (("authorization", "Bearer t"),)
