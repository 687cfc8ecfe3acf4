"""file:// URLs, attacked through the real services.

- The file write: ``AnnotateTask`` with ``cvat.url=file:///<folder>`` made the
  inference service write ``annotations/instances_default.json`` anywhere. Local
  folders are now off by default (INVALID_ARGUMENT naming
  PREANNOTATE_INFERENCE_ALLOW_FILE_TARGETS, before anything is written); when on,
  a folder outside PREANNOTATE_INFERENCE_FILE_TARGET_ROOT (after ``..`` and
  symbolic links) is refused the same way.
- The file oracle: an export of ``file:///etc/passwd`` answered "not a readable zip
  archive", of a missing file something else. Now the refusal is the same for a
  present and a missing file, off by default and outside the root when on; the
  record goes to the DLQ and nothing is stored.
- Turning local paths on without a root is a settings error naming the root.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from preannotate import events, topics
from preannotate.bus import MemoryBus
from preannotate.runner import Runtime
from preannotate.settings import SettingsError, load
from preannotate.v1 import common_pb2, events_pb2, inference_pb2
from tests.platform.buses import drain
from tests.security.standin import SHAPES, small_png, start_inference

pytestmark = pytest.mark.timeout(60)


def _folder(root: Path) -> Path:
    """A folder laid out as a COCO 1.0 export, as a pre-annotation target."""
    (root / "images" / "default").mkdir(parents=True)
    (root / "images" / "default" / "a.png").write_bytes(small_png())
    return root


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


async def _annotate(stub, url: str) -> grpc.aio.AioRpcError:
    call = stub.AnnotateTask(
        inference_pb2.AnnotateTaskRequest(
            model=SHAPES,
            cvat=common_pb2.CvatRef(url=url),
            mode=events_pb2.ANNOTATE_MODE_REPLACE,
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in call:
            pass
    return err.value


async def test_the_file_write_is_refused_by_default(tmp_path, monkeypatch):
    victim = _folder(tmp_path / "victim")
    before = _files(victim)
    runtime, channel, stub, backend = await start_inference(
        tmp_path / "svc",
        monkeypatch,
        inference_allow_file_targets=False,  # the default, as shipped
        inference_file_target_root=None,
    )
    try:
        err = await _annotate(stub, victim.as_uri())
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "PREANNOTATE_INFERENCE_ALLOW_FILE_TARGETS" in err.details()
        assert _files(victim) == before  # nothing written
        assert backend.images == 0
        # no job status was written for the refused run
        reader = runtime.bus.consumer([topics.JOB_STATUS], None)
        await reader.start()
        try:
            assert await drain(reader, 1, 1.0) == []
        finally:
            await reader.stop()
    finally:
        await channel.close()
        await runtime.stop()


def test_the_default_settings_refuse_local_paths(tmp_path):
    from services.exporter.settings import ExporterSettings
    from services.inference.settings import InferenceSettings

    assert not InferenceSettings().inference_allow_file_targets
    assert not ExporterSettings().export_allow_file_import


async def test_a_folder_outside_the_root_is_refused_when_on(tmp_path, monkeypatch):
    allowed = _folder(tmp_path / "allowed" / "task")
    outside = _folder(tmp_path / "outside")
    (tmp_path / "allowed" / "link").symlink_to(outside)
    before = _files(outside)
    runtime, channel, stub, backend = await start_inference(
        tmp_path / "svc", monkeypatch, inference_file_target_root=tmp_path / "allowed"
    )
    try:
        for url in (
            outside.as_uri(),
            f"file://{allowed}/../../outside",
            f"file://{allowed}/%2e%2e/%2e%2e/outside",
            (tmp_path / "allowed" / "link").as_uri(),
        ):
            err = await _annotate(stub, url)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, url
            assert "PREANNOTATE_INFERENCE_FILE_TARGET_ROOT" in err.details(), url
        assert _files(outside) == before and backend.images == 0
        # inside the root, the same request works
        call = stub.AnnotateTask(
            inference_pb2.AnnotateTaskRequest(
                model=SHAPES, cvat=common_pb2.CvatRef(url=allowed.as_uri())
            )
        )
        last = [p async for p in call][-1]
        assert last.done and last.frames_done == 1
        assert (allowed / "annotations" / "instances_default.json").is_file()
    finally:
        await channel.close()
        await runtime.stop()


def test_turning_local_paths_on_needs_a_root():
    from services.exporter.settings import ExporterSettings
    from services.inference.settings import InferenceSettings

    with pytest.raises(SettingsError, match="PREANNOTATE_EXPORT_FILE_IMPORT_ROOT"):
        load(ExporterSettings, export_allow_file_import=True)
    with pytest.raises(SettingsError, match="PREANNOTATE_INFERENCE_FILE_TARGET_ROOT"):
        load(InferenceSettings, inference_allow_file_targets=True)


async def _dlq_error(tmp_path: Path, url: str, **overrides: Any) -> tuple[str, str]:
    """(error type, error) of the DLQ record of an export of ``url``."""
    from services.exporter.service import build
    from services.exporter.settings import ExporterSettings

    settings = ExporterSettings(
        bus="memory",
        storage="local",
        storage_root=tmp_path / "storage",
        export_work_dir=tmp_path / "work",
        retry_attempts=1,
        **overrides,
    )
    runtime = Runtime([(build(settings), settings)], bus=MemoryBus())
    await runtime.start()
    try:
        reader = runtime.bus.consumer([topics.TASK_ANNOTATED + ".dlq"], None)
        await reader.start()
        try:
            msg = events_pb2.TaskAnnotated(
                job_id="oracle-1",
                namespace="default",
                cvat=common_pb2.CvatRef(url=url),
                training=common_pb2.TrainingSpec(model_type="ssd-mobilenet-v2-coco"),
                trigger="test",
            )
            await events.publish(runtime.bus, topics.TASK_ANNOTATED, msg, source="test")
            (dead,) = await drain(reader, 1, 30)
        finally:
            await reader.stop()
        assert not [k for k in runtime.storage.list("default/datasets/")]
        return dead.headers["dlq_error_type"], dead.headers["dlq_error"].replace(url, "URL")
    finally:
        await runtime.stop()


@pytest.mark.parametrize("on", [False, True], ids=["off", "on-with-a-root"])
async def test_the_file_oracle_says_the_same_for_present_and_missing_files(tmp_path, on):
    assert Path("/etc/passwd").is_file() and not Path("/etc/no-such-file").exists()
    overrides: dict[str, Any] = {}
    if on:
        (tmp_path / "root").mkdir()
        overrides = {"export_allow_file_import": True, "export_file_import_root": tmp_path / "root"}
    present = await _dlq_error(tmp_path / "a", "file:///etc/passwd", **overrides)
    missing = await _dlq_error(tmp_path / "b", "file:///etc/no-such-file", **overrides)
    assert present == missing
    assert present[0] == "InvalidArgument"
    assert ("PREANNOTATE_EXPORT_FILE_IMPORT_ROOT" if on else "ALLOW_FILE_IMPORT") in present[1]
    assert "zip" not in present[1]
