"""gRPC InferenceService on a real grpc.aio server, through the generated stub."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from preannotate import topics
from preannotate.grpc_errors import ErrorInterceptor
from preannotate.storage import LocalStorage
from preannotate.v1 import common_pb2, events_pb2, inference_pb2, inference_pb2_grpc
from services.inference.servicer import InferenceServicer
from tests.inference.helpers import make_settings, publish_model, start_app
from tests.standins.cvat import make_shapes_dataset, shapes_labels

pytestmark = pytest.mark.tf

SHAPES = common_pb2.ModelRef(namespace="default", name="shapes")


@pytest.fixture(scope="module")
def storage(tmp_path_factory, retinanet_dir):
    storage = LocalStorage(tmp_path_factory.mktemp("grpc") / "storage")
    publish_model(storage, retinanet_dir, name="shapes")
    publish_model(storage, retinanet_dir, namespace="team-b", name="other", version=4)
    return storage


@pytest.fixture(scope="module")
async def served(storage, cvat, tmp_path_factory):
    """A started service core behind a grpc.aio server, for the module."""
    settings = make_settings(tmp_path_factory.mktemp("grpc"), cvat_url=cvat.url)
    app, bus = await start_app(settings, storage)
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(InferenceServicer(app), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield inference_pb2_grpc.InferenceServiceStub(channel), app, bus
    finally:
        await channel.close()
        await server.stop(0)
        await app.stop()


@pytest.fixture(scope="module")
def images():
    return [data for _, data in make_shapes_dataset(6, size=(160, 120), seed=91)[0]]


async def test_predict(served, images):
    stub, _, _ = served
    answer = await stub.Predict(
        inference_pb2.PredictRequest(model=SHAPES, image=images[0], threshold=0.5, id="a")
    )
    assert answer.id == "a" and (answer.image_width, answer.image_height) == (160, 120)
    assert answer.model == common_pb2.ModelRef(namespace="default", name="shapes", version=1)
    assert answer.detections and all(d.score >= 0.5 for d in answer.detections)
    assert {d.label for d in answer.detections} <= {"circle", "square"}
    for d in answer.detections:
        assert 0 <= d.box.xmin < d.box.xmax <= 1 and 0 <= d.box.ymin < d.box.ymax <= 1
        assert d.label == ("circle", "square")[d.class_id - 1]


async def test_errors_become_status_codes(served, images):
    stub, _, _ = served
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Predict(inference_pb2.PredictRequest(
            model=common_pb2.ModelRef(name="nope"), image=images[0]))  # fmt: skip
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "default/shapes/1" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Predict(inference_pb2.PredictRequest(model=SHAPES, image=b"not an image"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a decodable image" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Predict(inference_pb2.PredictRequest(model=SHAPES, image=images[0],
                                                        threshold=1.5))  # fmt: skip
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Predict(
            inference_pb2.PredictRequest(
                model=common_pb2.ModelRef(namespace="../x", name="shapes"), image=images[0]
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_stream_predict_matches_answers_by_id_and_batches(served, images):
    stub, app, _ = served
    single = {}
    for i, data in enumerate(images):
        r = await stub.Predict(inference_pb2.PredictRequest(model=SHAPES, image=data, id=str(i)))
        single[str(i)] = [(d.label, round(d.score, 4)) for d in r.detections]

    async def requests():
        for i, data in enumerate(images * 2):
            yield inference_pb2.PredictRequest(model=SHAPES, image=data, id=f"{i % 6}-{i}")

    answers = [a async for a in stub.StreamPredict(requests())]
    assert sorted(a.id for a in answers) == sorted(f"{i % 6}-{i}" for i in range(12))
    for a in answers:
        assert [(d.label, round(d.score, 4)) for d in a.detections] == single[a.id.split("-")[0]]
    model = await app.resolve(SHAPES)
    assert max(app.predictor.batcher(model).batches) > 1


async def test_stream_predict_ends_with_the_bad_image_named(served, images):
    stub, _, _ = served

    async def requests():
        yield inference_pb2.PredictRequest(model=SHAPES, image=images[0], id="good")
        yield inference_pb2.PredictRequest(model=SHAPES, image=b"\x89PNG broken", id="bad")

    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.StreamPredict(requests()):
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "image 'bad'" in err.value.details()


async def test_annotate_task_streams_progress_and_publishes(served, cvat):
    stub, _, bus = served
    images, _ = make_shapes_dataset(10, size=(160, 120), seed=92)
    task_id = cvat.add_task("t", labels=shapes_labels(), images=images, segment_size=4)
    cvat.break_frame(task_id, 6)
    request = inference_pb2.AnnotateTaskRequest(
        model=SHAPES,
        cvat=common_pb2.CvatRef(task_id=task_id),
        threshold=0.5,
        mode=events_pb2.ANNOTATE_MODE_REPLACE,
        job_id="ann-42",
    )
    updates = [u async for u in stub.AnnotateTask(request)]
    last = updates[-1]
    assert last.done and all(not u.done for u in updates[:-1])
    assert last.job_id == "ann-42"
    assert (last.frames_total, last.frames_done, last.frames_skipped) == (10, 9, 1)
    assert last.shapes_written == len(cvat.annotations(task_id)) > 0
    assert [s.frame for u in updates for s in u.skipped] == [6]
    assert [u.frames_done for u in updates] == sorted(u.frames_done for u in updates)

    records = [events_pb2.TaskPreannotated.FromString(r.value)
               for r in bus.records(topics.TASK_PREANNOTATED)]  # fmt: skip
    [done] = [r for r in records if r.job_id == "ann-42"]
    assert (done.job_id, done.shapes_written, done.frames_done) == (
        "ann-42",
        last.shapes_written,
        9,
    )
    states = [events_pb2.JobStatus.FromString(r.value) for r in bus.records(topics.JOB_STATUS)]
    states = [s for s in states if s.job_id == "ann-42"]
    assert states[0].state == events_pb2.JOB_STATE_RUNNING
    assert states[-1].state == events_pb2.JOB_STATE_SUCCEEDED
    assert states[-1].kind == events_pb2.JOB_KIND_ANNOTATION
    assert "1 frames skipped" in states[-1].message

    with pytest.raises(grpc.aio.AioRpcError) as err:
        bad = inference_pb2.AnnotateTaskRequest(model=SHAPES, cvat=common_pb2.CvatRef(task_id=999))
        async for _ in stub.AnnotateTask(bad):
            pass
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    failed = events_pb2.JobStatus.FromString(bus.records(topics.JOB_STATUS)[-1].value)
    assert failed.state == events_pb2.JOB_STATE_FAILED


async def test_annotate_task_on_a_local_folder(served, tmp_path):
    """cvat.url = file://<root>: the images of <root>/images/default/ are pre-annotated
    into <root>/annotations/instances_default.json, with the same progress stream."""
    stub, _, bus = served
    images, _ = make_shapes_dataset(5, size=(160, 120), seed=94)
    folder = tmp_path / "heldout" / "images" / "default"
    folder.mkdir(parents=True)
    for i, (name, data) in enumerate(images):
        (folder / name).write_bytes(data if i != 1 else data[:40])  # frame 1: truncated
    request = inference_pb2.AnnotateTaskRequest(
        model=SHAPES,
        cvat=common_pb2.CvatRef(url=(tmp_path / "heldout").as_uri()),
        threshold=0.5,
        mode=events_pb2.ANNOTATE_MODE_REPLACE,
        job_id="ann-folder",
    )
    updates = [u async for u in stub.AnnotateTask(request)]
    last = updates[-1]
    assert last.done and (last.frames_total, last.frames_done, last.frames_skipped) == (5, 4, 1)
    [skip] = [s for u in updates for s in u.skipped]
    assert skip.frame == 1 and images[1][0] in skip.reason
    written = json.loads((tmp_path / "heldout/annotations/instances_default.json").read_text())
    assert len(written["annotations"]) == last.shapes_written > 0
    records = [events_pb2.TaskPreannotated.FromString(r.value)
               for r in bus.records(topics.TASK_PREANNOTATED)]  # fmt: skip
    [done] = [r for r in records if r.job_id == "ann-folder"]
    assert done.cvat.url == request.cvat.url and done.shapes_written == last.shapes_written


async def test_a_client_that_leaves_stops_the_run(served, cvat):
    stub, _, bus = served
    images, _ = make_shapes_dataset(40, size=(160, 120), seed=93)
    task_id = cvat.add_task("long", labels=shapes_labels(), images=images, segment_size=10)
    call = stub.AnnotateTask(inference_pb2.AnnotateTaskRequest(
        model=SHAPES, cvat=common_pb2.CvatRef(task_id=task_id)))  # fmt: skip
    first = await call.read()
    assert not first.done
    call.cancel()
    await asyncio.sleep(1.0)
    written = len(cvat.annotations(task_id))
    await asyncio.sleep(1.5)
    assert len(cvat.annotations(task_id)) == written < 40 * 3
    last = events_pb2.JobStatus.FromString(bus.records(topics.JOB_STATUS)[-1].value)
    assert last.state == events_pb2.JOB_STATE_CANCELLED and last.job_id == first.job_id


async def test_list_models(served):
    stub, _, _ = served
    everything = await stub.ListModels(common_pb2.ListModelsRequest())
    assert [(m.ref.namespace, m.ref.name, m.ref.version) for m in everything.models] == [
        ("default", "shapes", 1),
        ("team-b", "other", 4),
    ]
    only_b = await stub.ListModels(common_pb2.ListModelsRequest(namespace="team-b"))
    [model] = only_b.models
    assert list(model.classes) == ["circle", "square"]
    assert model.serving_path == "team-b/serving/other/4/" and model.job_id == "train-1"
    assert model.created_at.seconds > 0


async def test_tokens_limit_namespaces(served, images, tmp_path):
    from preannotate.auth import server_interceptors

    _, app, _ = served
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        "tokens:\n  - name: bob\n    token: bob-token-0123456789\n    namespaces: [team-b]\n"
    )
    server = grpc.aio.server(interceptors=server_interceptors(tokens))
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(InferenceServicer(app), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    bob = (("authorization", "Bearer bob-token-0123456789"),)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            listed = await stub.ListModels(common_pb2.ListModelsRequest(), metadata=bob)
            assert [m.ref.name for m in listed.models] == ["other"]
            other = common_pb2.ModelRef(namespace="team-b", name="other")
            answer = await stub.Predict(
                inference_pb2.PredictRequest(model=other, image=images[0]), metadata=bob
            )
            assert answer.model.version == 4
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Predict(inference_pb2.PredictRequest(model=SHAPES, image=images[0]),
                                   metadata=bob)  # fmt: skip
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ListModels(common_pb2.ListModelsRequest())
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await server.stop(0)
