"""``preannotate weights pull`` with stdout not a terminal: plain progress lines."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.weights.test_cli import SSD

CLI = [sys.executable, "-c", "import sys; from preannotate.cli.main import main; sys.exit(main())"]


def _pull(tmp_path, mirror, *extra: str, **env: str) -> subprocess.CompletedProcess:
    environ = {
        **os.environ,
        "PREANNOTATE_STORAGE": "local",
        "PREANNOTATE_STORAGE_ROOT": str(tmp_path / "storage"),
        "PREANNOTATE_WEIGHTS_MIRROR": mirror.url,
        **env,
    }
    if "PREANNOTATE_PROGRESS" not in env:
        environ.pop("PREANNOTATE_PROGRESS", None)
    return subprocess.run(
        [*CLI, "weights", "pull", SSD, *extra],
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
    )


def test_a_pull_into_a_pipe_prints_plain_lines(tmp_path, mirror, checkpoints):
    mirror.serve_checkpoint(checkpoints.mobilenet)
    proc = _pull(tmp_path, mirror)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    progress = [line for line in lines if line.endswith(" elapsed")]
    # a line as each file of the checkpoint starts and one as it ends, with its figures
    assert len(progress) >= 2, proc.stdout
    line = re.compile(rf"^{SSD}: \d+\.\d of \d+\.\d MB \(\d+ %\), \d+ s elapsed$")
    assert all(line.match(each) for each in progress), proc.stdout
    assert any("(100 %)" in each for each in progress), proc.stdout
    assert f"{SSD}: installed " in proc.stdout
    assert "\x1b[" not in proc.stdout  # no terminal codes in a log


def test_progress_none_prints_only_the_outcome(tmp_path, mirror, checkpoints):
    mirror.serve_checkpoint(checkpoints.mobilenet)
    proc = _pull(tmp_path, mirror, PREANNOTATE_PROGRESS="none")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith(f"{SSD}: installed ")  # the first line: no progress
    assert " elapsed" not in proc.stdout
    proc = _pull(tmp_path / "again", mirror, "--progress", "none", PREANNOTATE_PROGRESS="plain")
    assert " elapsed" not in proc.stdout  # the flag over the environment
