"""Fixtures of the deploy/ checks: the validators and the rendered manifests.

The validators (docker compose, kustomize, kubernetes-validate, promql-parser,
the CRD models) are fetched and built by ``deploy/tools.py`` the first time a
test asks for them and cached in ``.cache/deploy-tools``; building docker
compose from its Go module takes minutes the first time, so the tests that
need it carry a long timeout.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.conftest import load_file

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = DEPLOY / "compose" / "docker-compose.yml"
K8S = DEPLOY / "k8s"
OVERLAYS = ["base", "overlays/gpu", "overlays/dev"]
#: Seconds a first build of a validator may take on a 2-core machine.
BUILD_TIMEOUT = 2400


def load_deploy_module(name: str) -> ModuleType:
    """Import ``deploy/<name>.py`` (deploy/ is not a package)."""
    return load_file(DEPLOY / f"{name}.py", f"preannotate_deploy_{name}")


@pytest.fixture(scope="session")
def tools() -> ModuleType:
    return load_deploy_module("tools")


@pytest.fixture(scope="session")
def generate() -> ModuleType:
    return load_deploy_module("generate")


def _tool(tools: ModuleType, name: str) -> Any:
    try:
        return getattr(tools, name)()
    except tools.ToolError as exc:
        pytest.fail(f"deploy/tools.py could not provide {name}: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def compose_bin(tools: ModuleType) -> Path:
    return _tool(tools, "compose")


@pytest.fixture(scope="session")
def kustomize_bin(tools: ModuleType) -> Path:
    return _tool(tools, "kustomize")


@pytest.fixture(scope="session")
def python_tools(tools: ModuleType) -> None:
    """kubernetes_validate and promql_parser importable."""
    try:
        tools.use_python_packages()
    except tools.ToolError as exc:
        pytest.fail(f"deploy/tools.py could not install its Python packages: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def node_root(tools: ModuleType) -> Path:
    return _tool(tools, "node_modules")


def run(cmd: list[str], *, cwd: Path = REPO, timeout: float = 120, **kw: Any):
    return subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False, **kw
    )


#: The overlay whose secrets make-secrets.sh generates (git-ignored files).
DEV = "overlays/dev"


def copy_k8s(folder: Path) -> Path:
    """A copy of deploy/k8s (and deploy/grafana, which the base reads) under
    ``folder``; its k8s folder. Tests write generated secrets there, never in
    the working tree."""
    for part in ("k8s", "grafana"):
        shutil.copytree(
            DEPLOY / part,
            folder / "deploy" / part,
            ignore=shutil.ignore_patterns("secrets.env", "tokens.yaml", "token"),
        )
    return folder / "deploy" / "k8s"


def make_dev_secrets(k8s: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the dev overlay's make-secrets.sh into ``k8s``'s dev overlay."""
    return run(["sh", str(K8S / DEV / "make-secrets.sh"), *args, str(k8s / DEV)])


@pytest.fixture(scope="session")
def dev_copy(tmp_path_factory) -> Path:
    """deploy/k8s copied, with the dev overlay's secrets generated in the copy."""
    k8s = copy_k8s(tmp_path_factory.mktemp("k8s"))
    done = make_dev_secrets(k8s)
    assert done.returncode == 0, done.stderr
    return k8s


@pytest.fixture(scope="session")
def rendered(kustomize_bin: Path, dev_copy: Path) -> dict[str, list[dict[str, Any]]]:
    """``kustomize build`` of the base and of each overlay: their objects (the dev
    overlay from a copy with generated secrets)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name in OVERLAYS:
        root = dev_copy if name == DEV else K8S
        done = run([str(kustomize_bin), "build", str(root / name)])
        if done.returncode != 0:
            pytest.fail(f"kustomize build deploy/k8s/{name} failed:\n{done.stderr}", pytrace=False)
        out[name] = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    return out
