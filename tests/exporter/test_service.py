"""Settings from the environment, the service spec, and the exporter staying light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from preannotate import topics
from preannotate.settings import SettingsError, load
from preannotate.v1 import events_pb2
from services.exporter.service import build
from services.exporter.settings import ExporterSettings

ROOT = Path(__file__).resolve().parents[2]


def test_settings_come_from_prefixed_variables(monkeypatch):
    env = {
        "PREANNOTATE_CVAT_URL": "https://cvat.example.org/",
        "PREANNOTATE_CVAT_TOKEN": "pat-123",
        "PREANNOTATE_CVAT_AUTH_SCHEME": "token",
        "PREANNOTATE_CVAT_ORGANIZATION": "acme",
        "PREANNOTATE_CVAT_RETRY_ATTEMPTS": "5",
        "PREANNOTATE_EXPORT_MAX_BYTES": "1000000",
        "PREANNOTATE_EXPORT_MAX_FILES": "99",
        "PREANNOTATE_EXPORT_VAL_FRACTION": "0.25",
        "PREANNOTATE_EXPORT_KEEP_NEGATIVES": "false",
        "PREANNOTATE_EXPORT_SHARD_MAX_IMAGES": "500",
        "PREANNOTATE_MACHINE_TYPES": "cpu=0,gpu-1=1",
        "PREANNOTATE_DEFAULT_MACHINE_TYPE": "gpu-1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load(ExporterSettings)
    assert settings.cvat_url == "https://cvat.example.org"
    assert settings.cvat_token.get_secret_value() == "pat-123"
    assert "pat-123" not in repr(settings)
    assert settings.cvat_auth_scheme == "token" and settings.cvat_organization == "acme"
    assert settings.cvat_retry_attempts == 5
    assert (settings.export_max_bytes, settings.export_max_files) == (1_000_000, 99)
    assert settings.export_val_fraction == 0.25 and not settings.export_keep_negatives
    assert settings.export_shard_max_images == 500
    assert settings.pools() == {"cpu": 0, "gpu-1": 1}


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PREANNOTATE_CVAT_URL", "cvat:8080"),
        ("PREANNOTATE_CVAT_AUTH_SCHEME", "basic"),
        ("PREANNOTATE_EXPORT_VAL_FRACTION", "0"),
        ("PREANNOTATE_EXPORT_MAX_FILES", "-1"),
    ],
)
def test_a_bad_value_names_its_variable(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable):
        load(ExporterSettings)


def test_the_spec_has_one_route():
    spec = build(ExporterSettings())
    assert spec.name == "exporter"
    (route,) = spec.routes
    assert route.topic == topics.TASK_ANNOTATED
    assert route.stage == events_pb2.JOB_STAGE_EXPORT
    assert route.once


def test_the_exporter_imports_no_tensorflow_and_no_cvat_sdk():
    code = (
        "import sys\n"
        "import services.exporter.main, services.exporter.handlers, services.exporter.convert\n"
        "import preannotate.cvat.export, services.exporter.source\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'tf_keras', 'official', 'matplotlib', 'cvat_sdk'))\n"
        "print(heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
