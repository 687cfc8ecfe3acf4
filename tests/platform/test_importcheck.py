"""preannotate.importcheck: the install-time guard on the hand-kept Model Garden dependency list."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from preannotate import importcheck


def make_package(root: Path, missing: str) -> None:
    pkg = root / "checkme"
    (pkg / "inner").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "fine.py").write_text("import json\n")
    (pkg / "inner" / "__init__.py").write_text("")
    (pkg / "inner" / "broken.py").write_text(f"import {missing}\n")
    (pkg / "__main__.py").write_text("raise SystemExit('a __main__ module must not be imported')\n")


def test_a_module_whose_dependency_is_missing_is_named(tmp_path, monkeypatch) -> None:
    make_package(tmp_path, "no_such_dependency_xyz")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert importcheck.modules_of("checkme") == [
        "checkme",
        "checkme.fine",
        "checkme.inner",
        "checkme.inner.broken",
    ]
    failures = importcheck.check(["checkme"])
    assert [name for name, _ in failures] == ["checkme.inner.broken"]
    assert "no_such_dependency_xyz" in failures[0][1]
    for name in list(sys.modules):
        if name.startswith("checkme"):
            del sys.modules[name]


def test_the_command_fails_the_install_and_passes_a_whole_package(tmp_path) -> None:
    make_package(tmp_path, "no_such_dependency_xyz")
    env_path = f"{tmp_path}"
    bad = subprocess.run(
        [sys.executable, "-m", "preannotate.importcheck", "checkme"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
        cwd=Path(__file__).resolve().parents[2],
        timeout=120,
    )
    assert bad.returncode == 1
    assert "checkme.inner.broken: ModuleNotFoundError" in bad.stderr
    good = subprocess.run(
        [sys.executable, "-m", "preannotate.importcheck", "preannotate.storage"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=120,
    )
    assert good.returncode == 0, good.stderr
    assert "every module of preannotate.storage imports" in good.stdout
