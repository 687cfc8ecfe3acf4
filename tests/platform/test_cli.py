"""The ``preannotate`` command: every registered command parses, and none imports TF needlessly."""

from __future__ import annotations

import subprocess
import sys

import pytest

from preannotate.cli.main import COMMANDS, build_parser


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_declares_its_options(name):
    parser, handlers = build_parser(name)
    assert callable(handlers[name])
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args([name, "--help"])
    assert exit_.value.code == 0


def test_client_commands_do_not_import_tensorflow():
    code = (
        "import sys; from preannotate.cli.main import build_parser; "
        "[build_parser(n) for n in ('train', 'jobs', 'models', 'model-types', 'run', 'up', "
        "'annotate', 'predict')]; "
        "print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_run_refuses_an_unknown_service(capsys):
    parser, _ = build_parser("run")
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "scheduler"])
    assert "invalid choice: 'scheduler'" in capsys.readouterr().err
