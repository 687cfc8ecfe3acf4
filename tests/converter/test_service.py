"""The converter's settings and its spec for the runner."""

from __future__ import annotations

import sys

import pytest
from pydantic import ValidationError

from preannotate import topics
from preannotate.settings import SettingsError, load
from preannotate.v1 import events_pb2
from services.converter.service import build
from services.converter.settings import ConverterSettings


def test_the_spec_has_one_route():
    spec = build(ConverterSettings())
    assert spec.name == "converter"
    (route,) = spec.routes
    assert route.topic == topics.MODEL_TRAINED
    assert route.stage == events_pb2.JOB_STAGE_CONVERT
    assert route.once


def test_settings_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PREANNOTATE_CONVERT_TFLITE", "true")
    monkeypatch.setenv("PREANNOTATE_CONVERT_PARITY_TOLERANCE", "0.01")
    monkeypatch.setenv("PREANNOTATE_CONVERT_WORK_DIR", str(tmp_path))
    monkeypatch.setenv("PREANNOTATE_CONVERT_SUBPROCESS_TIMEOUT_SECONDS", "60")
    settings = load(ConverterSettings)
    assert settings.convert_tflite and settings.convert_parity_tolerance == 0.01
    assert settings.convert_work_dir == tmp_path
    assert settings.convert_subprocess_timeout_seconds == 60
    assert settings.python() == sys.executable
    with pytest.raises(ValidationError, match="frozen"):
        settings.convert_tflite = False


def test_a_bad_value_names_its_variable(monkeypatch):
    monkeypatch.setenv("PREANNOTATE_CONVERT_PARITY_TOLERANCE", "-1")
    with pytest.raises(SettingsError, match="PREANNOTATE_CONVERT_PARITY_TOLERANCE"):
        load(ConverterSettings)


def test_the_service_process_imports_no_tensorflow():
    import subprocess

    code = (
        "import sys, services.converter.main, services.converter.handlers; "
        "print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
