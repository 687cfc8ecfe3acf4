"""The validators deploy/ is checked with, fetched and built on first use.

Each comes from a package registry through its own client and is cached in
``.cache/deploy-tools/`` (``PREANNOTATE_DEPLOY_TOOLS`` moves it), keyed by its
version, so only the first run on a machine pays for it:

- ``docker compose``: the real Compose CLI, built from the Go module
  ``github.com/docker/compose/v2`` (``docker compose config`` needs no engine);
- ``kustomize``: built from ``sigs.k8s.io/kustomize/kustomize/v5``;
- ``dockerfile-lint``: BuildKit's Dockerfile checks (``docker build --check``)
  without an engine, built from ``deploy/dockerfile-lint`` (Go, buildkit module);
- Python: ``kubernetes-validate`` (Kubernetes' JSON schemas, per version) and
  ``promql-parser`` (Prometheus' own PromQL grammar), installed with
  ``pip --target`` when the interpreter lacks them;
- npm: the CRD models of KEDA, Strimzi and the Prometheus Operator
  (``@kubernetes-models/*``, validators generated from the projects' CRDs).

Standard library only::

    python deploy/tools.py fetch                 # every tool, then print where
    python deploy/tools.py compose config -q     # run docker compose with these args
    python deploy/tools.py kustomize build deploy/k8s/overlays/gpu
    python deploy/tools.py dockerfile-lint services/*/Dockerfile
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

COMPOSE_MODULE = "github.com/docker/compose/v2"
COMPOSE_VERSION = "v2.40.3"
KUSTOMIZE_MODULE = "sigs.k8s.io/kustomize/kustomize/v5"
# v5.8.3 needs Go 1.27; v5.8.2 builds with the Go 1.26 these machines have.
KUSTOMIZE_VERSION = "v5.8.2"
PYTHON_PACKAGES = {
    "kubernetes_validate": "kubernetes-validate==1.37.0",
    "promql_parser": "promql-parser==0.11.0",
}
NPM_PACKAGES = {
    "@kubernetes-models/keda": "2.0.0",
    "@kubernetes-models/strimzi-kafka-operator": "1.0.1",
    "@kubernetes-models/prometheus-operator": "6.0.0",
}
BUILD_TIMEOUT = 1800


class ToolError(RuntimeError):
    """A validator could not be fetched or built; the message says what failed."""


def cache_dir() -> Path:
    return Path(os.environ.get("PREANNOTATE_DEPLOY_TOOLS", REPO / ".cache" / "deploy-tools"))


def _run(cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(
            cmd,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
    except FileNotFoundError as exc:
        raise ToolError(f"{cmd[0]} is not installed: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"{' '.join(cmd)} took more than {BUILD_TIMEOUT} s") from exc
    if done.returncode != 0:
        raise ToolError(
            f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    return done.stdout


def _go_env(work: Path) -> dict[str, str]:
    # GOTOOLCHAIN=local: build with this machine's Go, never fetch another one.
    return {
        "GOTOOLCHAIN": "local",
        "GOFLAGS": "-mod=readonly -buildvcs=false",
        "GOWORK": "off",
        "TMPDIR": str(work),
    }


def _go_build(module: str, version: str, package: str, binary: Path, ldflags: str) -> Path:
    """Build ``package`` of ``module@version`` as the main module (its replace and
    exclude directives apply, which ``go install pkg@version`` refuses)."""
    if binary.exists():
        return binary
    if shutil.which("go") is None:
        raise ToolError(f"building {binary.name} needs Go (the go command is not on PATH)")
    binary.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=binary.parent, prefix=".build-") as tmp:
        work = Path(tmp)
        info = json.loads(
            _run(["go", "mod", "download", "-json", f"{module}@{version}"], env=_go_env(work))
        )
        if "Dir" not in info:
            raise ToolError(f"go mod download {module}@{version}: {info.get('Error', info)}")
        src = work / "src"
        shutil.copytree(info["Dir"], src)
        for path in [src, *src.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
        out = work / binary.name
        _run(
            ["go", "build", "-trimpath", "-ldflags", ldflags, "-o", str(out), package],
            cwd=src,
            env=_go_env(work),
        )
        os.replace(out, binary)
    return binary


def compose() -> Path:
    """The docker compose CLI (``docker-compose``, usable as a plugin too)."""
    return _go_build(
        COMPOSE_MODULE,
        COMPOSE_VERSION,
        "./cmd",
        cache_dir() / "bin" / f"docker-compose-{COMPOSE_VERSION}",
        f"-s -w -X {COMPOSE_MODULE}/internal.Version={COMPOSE_VERSION}",
    )


def kustomize() -> Path:
    return _go_build(
        KUSTOMIZE_MODULE,
        KUSTOMIZE_VERSION,
        ".",
        cache_dir() / "bin" / f"kustomize-{KUSTOMIZE_VERSION}",
        "-s -w",
    )


def dockerfile_lint() -> Path:
    """BuildKit's Dockerfile linter, built from deploy/dockerfile-lint (keyed by its sources)."""
    source = REPO / "deploy" / "dockerfile-lint"
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum", "main.go"):
        digest.update((source / name).read_bytes())
    binary = cache_dir() / "bin" / f"dockerfile-lint-{digest.hexdigest()[:12]}"
    if binary.exists():
        return binary
    if shutil.which("go") is None:
        raise ToolError("building dockerfile-lint needs Go (the go command is not on PATH)")
    binary.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=binary.parent, prefix=".build-") as tmp:
        out = Path(tmp) / binary.name
        _run(
            ["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(out), "."],
            cwd=source,
            env=_go_env(Path(tmp)),
        )
        os.replace(out, binary)
    return binary


def python_path() -> Path:
    """A folder to put on sys.path that holds PYTHON_PACKAGES (installed if missing)."""
    target = cache_dir() / "python"
    stamp = target / ".installed"
    wanted = " ".join(sorted(PYTHON_PACKAGES.values()))
    if stamp.exists() and stamp.read_text() == wanted:
        return target
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    # With their dependencies: the folder goes last on sys.path, so the
    # interpreter's own jsonschema or PyYAML still win where it has them.
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
            str(target),
            *sorted(PYTHON_PACKAGES.values()),
        ]
    )
    stamp.write_text(wanted)
    return target


def use_python_packages() -> None:
    """Make PYTHON_PACKAGES importable in this interpreter."""
    missing = []
    for module in PYTHON_PACKAGES:
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        path = str(python_path())
        if path not in sys.path:
            sys.path.append(path)


def node_modules() -> Path:
    """A folder whose node_modules/ holds NPM_PACKAGES."""
    root = cache_dir() / "npm"
    stamp = root / ".installed"
    wanted = json.dumps(NPM_PACKAGES, sort_keys=True)
    if stamp.exists() and stamp.read_text() == wanted:
        return root
    if shutil.which("npm") is None:
        raise ToolError("checking the CRDs needs Node.js and npm (npm is not on PATH)")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    (root / "package.json").write_text(
        json.dumps({"name": "preannotate-deploy-tools", "private": True, "type": "module"})
    )
    _run(
        [
            "npm",
            "install",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            "--engine-strict=false",
            *(f"{name}@{version}" for name, version in sorted(NPM_PACKAGES.items())),
        ],
        cwd=root,
    )
    stamp.write_text(wanted)
    return root


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    what, args = argv[0], argv[1:]
    try:
        if what == "fetch":
            print(f"docker compose: {compose()}")
            print(f"kustomize:      {kustomize()}")
            print(f"dockerfile-lint: {dockerfile_lint()}")
            print(f"python:         {python_path()}")
            print(f"npm:            {node_modules()}")
            return 0
        if what == "compose":
            return subprocess.call([str(compose()), *args])
        if what == "kustomize":
            return subprocess.call([str(kustomize()), *args])
        if what == "dockerfile-lint":
            return subprocess.call([str(dockerfile_lint()), *args])
    except ToolError as exc:
        print(f"deploy/tools.py: {exc}", file=sys.stderr)
        return 2
    print(
        f"unknown command {what!r}: use fetch, compose, kustomize or dockerfile-lint",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
