"""services/<name>/Dockerfile: the right base, the right extra, non-root, a healthcheck, the CMD.

A small reader of Dockerfile syntax (continuation lines, comments, JSON and
shell forms) is enough for these checks; no Docker engine runs here.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from tests.deploy.conftest import BUILD_TIMEOUT, REPO

SERVICES = ["gateway", "exporter", "trainer", "converter", "inference"]
BASES = {
    "gateway": r"python:3\.11-slim",
    "exporter": r"python:3\.11-slim",
    "trainer": r"tensorflow/tensorflow:2\.20\.\d+-gpu",
    "converter": r"tensorflow/tensorflow:2\.20\.\d+",
    "inference": r"tensorflow/tensorflow:2\.20\.\d+",
}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, f"{path}: ends inside a continuation"
    return out


def resolved_bases(ins: list[tuple[str, str]]) -> list[str]:
    args = {}
    bases = []
    for word, rest in ins:
        if word == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args.setdefault(key, value)
        if word == "FROM":
            image = rest.split()[0]
            bases.append(re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m[1], m[0]), image))
    return bases


@pytest.mark.parametrize("name", SERVICES)
def test_dockerfile(name: str) -> None:
    path = REPO / "services" / name / "Dockerfile"
    ins = instructions(path)
    words = [w for w, _ in ins]
    bases = resolved_bases(ins)
    assert bases and all(re.fullmatch(BASES[name], b) for b in bases), bases

    runs = " ".join(rest for w, rest in ins if w == "RUN")
    assert re.search(rf'pip install "\.\[{name}\]"', runs), f"{name}: not installed with .[{name}]"
    if name in ("gateway", "exporter"):
        assert '! /opt/venv/bin/python -c "import tensorflow"' in runs

    user = [rest for w, rest in ins if w == "USER"][-1]
    assert user.split(":")[0] not in ("root", "0")
    assert words.index("USER") > max(i for i, w in enumerate(words) if w == "RUN")

    (healthcheck,) = [rest for w, rest in ins if w == "HEALTHCHECK"]
    assert "/healthz" in healthcheck and "PREANNOTATE_METRICS_PORT" in healthcheck

    (cmd,) = [rest for w, rest in ins if w == "CMD"]
    assert json.loads(cmd) == ["preannotate", "run", name]
    assert words[-1] == "CMD"

    env = " ".join(rest for w, rest in ins if w == "ENV")
    assert "PREANNOTATE_BIND_HOST=0.0.0.0" in env and "PREANNOTATE_METRICS_PORT=9100" in env
    exposed = {p for w, rest in ins if w == "EXPOSE" for p in rest.split()}
    assert "9100" in exposed


def resolved_extra(extras: dict[str, list[str]], name: str) -> list[str]:
    """The requirements of one extra, with ``preannotate[a,b]`` references expanded."""
    out: list[str] = []
    for dep in extras[name]:
        ref = re.fullmatch(r"preannotate\[([\w,-]+)\]", dep)
        if ref:
            for inner in ref[1].split(","):
                out += resolved_extra(extras, inner)
        else:
            out.append(dep)
    return out


def test_light_extras_bring_no_tensorflow() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for name in ("gateway", "exporter"):
        deps = resolved_extra(extras, name)
        assert not [d for d in deps if d.lower().startswith("tensorflow")], name
    assert not [d for d in project["dependencies"] if d.lower().startswith("tensorflow")]
    for name in ("trainer", "converter", "inference"):
        assert any(d.startswith("tensorflow==2.20") for d in resolved_extra(extras, name)), name


def test_model_garden_comes_without_its_dependency_list() -> None:
    """tf-models-official is pinned once, installed with --no-deps where it is needed,
    and every image checks afterwards that all of its service's modules import."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    everything = [d for name in extras for d in resolved_extra(extras, name)]
    assert not [d for d in everything if d.startswith("tf-models-official")]
    pins = [
        line
        for line in (REPO / "requirements" / "model-garden.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert pins == ["tf-models-official==2.20.0"]
    for name in SERVICES:
        runs = " ".join(
            rest for w, rest in instructions(REPO / "services" / name / "Dockerfile") if w == "RUN"
        )
        needs_garden = name in ("trainer", "converter")
        assert ("--no-deps -r requirements/model-garden.txt" in runs) is needs_garden, name
        assert f"-m preannotate.importcheck services.{name}" in runs, name


def test_build_context_keeps_only_what_the_images_need() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    for kept in ("!pyproject.toml", "!README.md", "!preannotate/", "!services/", "!requirements/"):
        assert kept in lines
    copied = {
        rest.split()[0]
        for name in SERVICES
        for w, rest in instructions(REPO / "services" / name / "Dockerfile")
        if w == "COPY" and not rest.startswith("--from")
    }
    for source in copied:
        assert f"!{source}" in lines or f"!{source}/" in lines, source


def test_the_reader_reads_continuations(tmp_path: Path) -> None:
    path = tmp_path / "Dockerfile"
    path.write_text('# c\nARG B=x:1\nFROM ${B} AS b\nRUN a \\\n  && b\n# mid\nCMD ["x"]\n')
    assert instructions(path) == [
        ("ARG", "B=x:1"),
        ("FROM", "${B} AS b"),
        ("RUN", "a  && b"),
        ("CMD", '["x"]'),
    ]
    assert resolved_bases(instructions(path)) == ["x:1"]


@pytest.fixture(scope="module")
def lint_bin(tools) -> Path:
    try:
        return tools.dockerfile_lint()
    except tools.ToolError as exc:
        pytest.fail(f"deploy/tools.py could not build dockerfile-lint: {exc}", pytrace=False)


def _lint(lint_bin: Path, *paths: Path) -> list[dict]:
    from tests.deploy.conftest import run

    done = run([str(lint_bin), *map(str, paths)])
    assert done.returncode in (0, 1), done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.mark.timeout(BUILD_TIMEOUT)
def test_buildkit_checks_pass(lint_bin: Path) -> None:
    """What `docker build --check` reports, from BuildKit's own code: nothing."""
    reports = _lint(lint_bin, *(REPO / "services" / n / "Dockerfile" for n in SERVICES))
    assert len(reports) == len(SERVICES)
    for report in reports:
        assert not report.get("error") and not report["warnings"], report


@pytest.mark.timeout(BUILD_TIMEOUT)
def test_buildkit_checks_catch_mistakes(lint_bin: Path, tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim as build\nENV A 1\nCMD preannotate run gateway\n")
    broken = tmp_path / "Dockerfile.broken"
    broken.write_text("FORM python:3.11-slim\n")
    first, second = _lint(lint_bin, bad, broken)
    assert {w["rule"] for w in first["warnings"]} >= {
        "FromAsCasing",
        "LegacyKeyValueFormat",
        "JSONArgsRecommended",
    }
    assert "unknown instruction" in second["error"]


@pytest.mark.timeout(BUILD_TIMEOUT)
def test_images_and_manifests_agree_on_ports(rendered) -> None:
    """The ports an image exposes and sets in its environment are the ones the
    Kubernetes containers declare and the compose file publishes."""
    import yaml

    deployments = {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d
        for d in rendered["base"]
        if d["kind"] == "Deployment" and d["metadata"]["name"] != "trainer-gpu-1"
    }
    compose = yaml.safe_load((REPO / "deploy" / "compose" / "docker-compose.yml").read_text())
    for name in SERVICES:
        ins = instructions(REPO / "services" / name / "Dockerfile")
        exposed = {int(p) for w, rest in ins if w == "EXPOSE" for p in rest.split()}
        env = dict(
            item.split("=", 1)
            for w, rest in ins
            if w == "ENV"
            for item in rest.split()
            if "=" in item and item.startswith("PREANNOTATE_")
        )
        (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        declared = {p["containerPort"] for p in container["ports"]}
        assert exposed == declared, f"{name}: EXPOSE {exposed}, Kubernetes {declared}"
        k8s_env = {e["name"]: e["value"] for e in container.get("env", [])}
        compose_env = compose["services"][name]["environment"]
        for key, value in env.items():
            if key.endswith("_PORT"):
                assert int(value) in exposed, f"{name}: {key}={value} not exposed"
                for where, given in (("Kubernetes", k8s_env), ("compose", compose_env)):
                    if key in given:
                        assert str(given[key]) == value, f"{name}: {key} in {where}"
