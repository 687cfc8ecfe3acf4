"""Worker processes: results, errors, timeouts, cancels and the real worker's error mapping."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import pytest

from preannotate.errors import Cancelled, FailedPrecondition, Interrupted, InvalidArgument
from services.converter.process import run_worker


def fake_python(tmp_path: Path, body: str) -> str:
    """An executable called as ``python -m services.converter.worker CMD JOB RESULT``."""
    path = tmp_path / "fake-python"
    path.write_text('#!/bin/sh\nresult="$5"\n' + body)
    path.chmod(0o755)
    return str(path)


def run(python: str, tmp_path: Path, **kwargs):
    return asyncio.run(
        run_worker(
            "export",
            {"x": Path("/a")},
            tmp_path / "w",
            python=python,
            timeout=kwargs.pop("timeout", 30),
            **kwargs,
        )
    )


def test_facts_come_back(tmp_path):
    python = fake_python(tmp_path, 'echo \'{"ok": true, "facts": {"a": 1}}\' > "$result"\n')
    assert run(python, tmp_path) == {"a": 1}
    assert json.loads((tmp_path / "w" / "export-job.json").read_text()) == {"x": "/a"}


def test_a_workers_error_keeps_its_class(tmp_path):
    python = fake_python(
        tmp_path,
        'echo \'{"ok": false, "error": "InvalidArgument", "message": "fix the yaml"}\' > "$result"\n'
        "exit 3\n",
    )
    with pytest.raises(InvalidArgument, match=r"^fix the yaml$"):
        run(python, tmp_path)


def test_a_crash_without_a_result_shows_its_output(tmp_path):
    python = fake_python(tmp_path, "echo 'Killed: out of memory' >&2\nexit 137\n")
    with pytest.raises(FailedPrecondition, match=r"died \(exit status 137\)") as failed:
        run(python, tmp_path)
    assert "out of memory" in str(failed.value)


def test_a_hung_worker_is_killed_at_the_timeout(tmp_path):
    python = fake_python(tmp_path, "sleep 60\n")
    started = time.monotonic()
    with pytest.raises(FailedPrecondition, match="ran longer than 1 s"):
        run(python, tmp_path, timeout=1)
    assert time.monotonic() - started < 10


def test_cancel_and_shutdown_stop_the_worker(tmp_path):
    python = fake_python(tmp_path, "sleep 60\n")
    with pytest.raises(Cancelled, match="cancelled by a user during the export step"):
        run(python, tmp_path, cancelled=lambda: True)
    with pytest.raises(Interrupted, match="stopping"):
        run(python, tmp_path, stopping=lambda: True)


@pytest.mark.tf
@pytest.mark.parametrize(
    ("experiment", "says"),
    [
        ("task:\n  model:\n    no_such_field: 1\n", "does not rebuild a detection experiment"),
        ("task:\n  model:\n    num_classes: 5\n", "num_classes=5 .* classes.csv lists 2"),
        ("task: [unclosed\n", "experiment.yaml is not YAML"),
    ],
)
def test_the_real_worker_maps_a_bad_experiment_to_invalid_argument(tmp_path, experiment, says):
    (tmp_path / "experiment.yaml").write_text(experiment)
    (tmp_path / "classes.csv").write_text("id,name\n1,a\n2,b\n")
    job = {
        "experiment": tmp_path / "experiment.yaml",
        "checkpoint": tmp_path / "ckpt-1",
        "classes_csv": tmp_path / "classes.csv",
        "export_dir": tmp_path / "export",
        "images": [],
        "reference_out": tmp_path / "reference.npz",
        "tflite_out": None,
    }
    with pytest.raises(InvalidArgument, match=says):
        asyncio.run(run_worker("export", job, tmp_path / "w", python=sys.executable, timeout=300))
    assert not (tmp_path / "export").exists()
