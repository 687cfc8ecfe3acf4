"""The ``preannotate`` command: every registered command parses, and none imports TF needlessly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from preannotate.cli import run
from preannotate.cli.main import COMMANDS, build_parser
from preannotate.cli.service_table import SERVICES

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_declares_its_options(name):
    parser, handlers = build_parser(name)
    assert callable(handlers[name])
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args([name, "--help"])
    assert exit_.value.code == 0


def test_parsing_commands_imports_neither_tensorflow_nor_a_service():
    # the client commands talk gRPC only; run and up import a service when it starts
    code = (
        "import sys; from preannotate.cli.main import build_parser; "
        "[build_parser(n) for n in ('train', 'watch', 'cancel', 'jobs', 'models', "
        "'model-types', 'annotate', 'predict', 'run', 'up')]; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('services', 'tensorflow')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_run_refuses_an_unknown_service(capsys):
    parser, _ = build_parser("run")
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "scheduler"])
    assert "invalid choice: 'scheduler'" in capsys.readouterr().err


def test_the_service_table_lists_every_service_folder():
    folders = {p.parent.name for p in (ROOT / "services").glob("*/service.py")}
    assert set(SERVICES) == folders
    assert set(run.SERVICES) == folders


def test_run_starts_the_service_of_the_table():
    # the converter's entry point reads its settings first: a bad value stops it, named
    code = "import sys; from preannotate.cli.main import main; sys.exit(main())"
    env = {**os.environ, "PREANNOTATE_BUS": "nope"}
    out = subprocess.run(
        [sys.executable, "-c", code, "run", "converter"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 1 and "PREANNOTATE_BUS" in out.stderr + out.stdout
