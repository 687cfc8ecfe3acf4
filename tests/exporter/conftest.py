"""Fixtures of the exporter tests: settings, storage, a fake record context, the CVAT stand-in."""

from __future__ import annotations

import pytest

from preannotate.storage import LocalStorage
from services.exporter.settings import ExporterSettings
from tests.fakes import FakeContext
from tests.standins.cvat import CvatStandIn


@pytest.fixture
def storage(tmp_path):
    return LocalStorage(tmp_path / "storage")


@pytest.fixture
def ctx(storage):
    return FakeContext(storage)


@pytest.fixture
async def cvat():
    async with CvatStandIn(tokens={"secret-token"}) as server:
        yield server


@pytest.fixture
def make_settings(tmp_path):
    def make(**overrides) -> ExporterSettings:
        values = {
            "storage": "local",
            "storage_root": tmp_path / "storage",
            "export_work_dir": tmp_path / "work",
            "cvat_token": "secret-token",
            "cvat_poll_interval_seconds": 0.02,
            "cvat_retry_backoff_seconds": 0.01,
            "cvat_request_timeout_seconds": 5.0,
            "cvat_export_timeout_seconds": 30.0,
            "export_allow_file_import": True,  # off by default; the tests' zips lie here
            "export_file_import_root": tmp_path,
            **overrides,
        }
        return ExporterSettings(**values)

    return make
