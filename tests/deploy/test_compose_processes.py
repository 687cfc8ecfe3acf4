"""deploy/compose's services, run as processes with the environment compose gives them.

No container engine runs here, so each preannotate service of ``docker compose
config`` (the real Compose CLI's rendering, profile ``cpu``) is started the way
its container would start: the image's CMD (``preannotate run <service>``, as
``python -m preannotate``) or the service's ``command``, with the image's
``ENV`` overlaid by the service's ``environment``, in a folder laid out like
the image (tests/deploy/image_layout.py), its volumes and secrets where the
container would have them. Only what an engine and its network would provide
is mapped:

- compose's hostnames: ``kafka:9092`` is the test session's Kafka broker,
  ``http://minio:9000`` moto's S3 server (with the bucket made, as compose's
  ``minio-bucket`` does), ``tfserving:8500`` the TF Serving stand-in
  (tests/standins/tfserving), ``host.docker.internal`` (``extra_hosts:
  host-gateway``) this host; a value naming another compose service fails;
- container paths (values of ``*_FILE``, ``*_DIR``, ``*_PATH``, ``*_ROOT``, and
  the working directory) move under a root folder per service; each secret's
  file is copied to its target there (``/run/secrets/<name>``);
- every ``*_PORT`` gets a free port of this host (the processes share it);
- ``PREANNOTATE_KAFKA_TOPIC_PREFIX`` is unique (the broker is the session's).

Each process must answer ``/readyz`` on its metrics port, then exit 0 on
SIGTERM. A variable compose forgot, a secret not mounted where the service
reads it, or a setting a service refuses fails here, with the process's log.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import S3_REGION
from tests.deploy.conftest import BUILD_TIMEOUT, COMPOSE_FILE, REPO, run
from tests.deploy.image_layout import read_layout
from tests.deploy.test_compose import REQUIRED, SERVICES
from tests.deploy.test_dockerfiles import instructions

pytestmark = pytest.mark.timeout(BUILD_TIMEOUT)

#: Seconds a service may take to answer /readyz (two cores, TensorFlow imports).
READY_SECONDS = 240.0
#: Seconds from SIGTERM to exit (compose's stop_grace_period is 70 s).
STOP_SECONDS = 70.0
PATH_KEYS = ("_FILE", "_DIR", "_PATH", "_ROOT")
TOKEN = "compose-processes-token"


def image_env(dockerfile: Path) -> dict[str, str]:
    """The ``ENV`` of the Dockerfile's last stage (values with ``$`` left out: PATH)."""
    ins = instructions(dockerfile)
    last = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    env: dict[str, str] = {}
    for word, rest in ins[last + 1 :]:
        if word != "ENV":
            continue
        parts = shlex.split(rest)
        pairs = [p.split("=", 1) for p in parts] if "=" in parts[0] else [rest.split(None, 1)]
        env.update({k: v for k, v in pairs if "$" not in v})
    return env


def image_cmd(dockerfile: Path) -> list[str]:
    (cmd,) = [json.loads(rest) for word, rest in instructions(dockerfile) if word == "CMD"]
    return cmd


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def tfserving() -> Iterator[str]:
    """The TF Serving stand-in's gRPC address, served from a thread of its own."""
    import asyncio

    from tests.standins.tfserving.server import TfServingStandIn

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    standin = TfServingStandIn()
    address = asyncio.run_coroutine_threadsafe(standin.start(), loop).result(30)
    try:
        yield address
    finally:
        asyncio.run_coroutine_threadsafe(standin.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@pytest.fixture(scope="module")
def project(compose_bin: Path, tmp_path_factory) -> dict[str, Any]:
    """``docker compose --profile cpu config`` with the required secrets, a unique
    bucket and a tokens file of this test."""
    folder = tmp_path_factory.mktemp("compose")
    tokens = folder / "tokens.yaml"
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    tokens.write_text(f'tokens:\n  - name: test\n    sha256: "{digest}"\n    namespaces: ["*"]\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREANNOTATE_", "COMPOSE_"))}
    env.update(REQUIRED)
    env["PREANNOTATE_S3_BUCKET"] = f"compose-{uuid.uuid4().hex[:8]}"
    env["PREANNOTATE_TOKENS_HOST_FILE"] = str(tokens)
    done = run(
        [
            str(compose_bin),
            "-f",
            str(COMPOSE_FILE),
            "--profile",
            "cpu",
            "config",
            "--format",
            "json",
        ],
        cwd=COMPOSE_FILE.parent,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def ours(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run ``preannotate run <service>`` (serving-sync runs a script)."""
    images = {f"preannotate-{n}": n for n in SERVICES}
    return {
        name: s
        for name, s in config["services"].items()
        if s.get("image", "").split(":")[0] in images and not s.get("command")
    }


class Started:
    """One service's process, its log and its metrics port."""

    def __init__(self, name: str, proc: subprocess.Popen, log: Path, metrics_port: int) -> None:
        self.name, self.proc, self.log, self.metrics_port = name, proc, log, metrics_port

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def ready(self) -> bool:
        url = f"http://127.0.0.1:{self.metrics_port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False


def process_env(
    name: str,
    service: dict[str, Any],
    config: dict[str, Any],
    root: Path,
    hosts: dict[str, str],
    prefix: str,
) -> dict[str, str]:
    """What the service's container would see, mapped to this host (module docstring)."""
    image = service["image"].split(":")[0].removeprefix("preannotate-")
    env = {**image_env(REPO / "services" / image / "Dockerfile")}
    env.update({k: "" if v is None else str(v) for k, v in service["environment"].items()})
    for key, value in list(env.items()):
        for host, real in hosts.items():
            value = value.replace(host, real)
        if key.endswith("_PORT") and value.isdigit():
            value = str(free_port())
        elif key.endswith(PATH_KEYS) and value.startswith("/"):
            value = str(root / value.lstrip("/"))
        env[key] = value
    others = "|".join(re.escape(s) for s in config["services"])
    for key, value in env.items():
        # host:port, or a URL's host
        assert not re.search(rf"(^|[\s,])({others}):\d+|://({others})([:/]|$)", value), (
            f"{name}: {key}={value} names a compose service this test does not map"
        )
    env["PREANNOTATE_KAFKA_TOPIC_PREFIX"] = prefix
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(root / "var" / "lib" / "preannotate"),
        "LANG": "C.UTF-8",
        **env,
    }


def lay_out(name: str, service: dict[str, Any], config: dict[str, Any], root: Path) -> str:
    """The image's folders, the service's volumes and secrets under ``root``; the
    working directory there."""
    image = service["image"].split(":")[0].removeprefix("preannotate-")
    layout = read_layout(REPO / "services" / image / "Dockerfile")
    for folder in layout.folders:
        (root / folder.lstrip("/")).mkdir(parents=True, exist_ok=True)
    for volume in service.get("volumes", []):
        (root / volume["target"].lstrip("/")).mkdir(parents=True, exist_ok=True)
    for secret in service.get("secrets", []):
        target = secret.get("target") or f"/run/secrets/{secret['source']}"
        if not target.startswith("/"):
            target = posixpath.join("/run/secrets", target)
        dest = root / target.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(config["secrets"][secret["source"]]["file"], dest)
    return str(root / layout.workdir.lstrip("/"))


def make_bucket(env: dict[str, str]) -> None:
    """What compose's minio-bucket one-shot does before the services start."""
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=env["PREANNOTATE_S3_ENDPOINT"],
        region_name=env.get("PREANNOTATE_S3_REGION", S3_REGION),
        aws_access_key_id=env["PREANNOTATE_S3_ACCESS_KEY"],
        aws_secret_access_key=env["PREANNOTATE_S3_SECRET_KEY"],
    )
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=env["PREANNOTATE_S3_BUCKET"])


def test_every_service_starts_from_the_compose_environment_and_stops_on_sigterm(
    project, kafka_bootstrap: str, s3_endpoint: str, tfserving: str, tmp_path: Path
) -> None:
    config = project
    services = ours(config)
    assert set(SERVICES) <= set(services) and "trainer-cpu" in services
    hosts = {
        "kafka:9092": kafka_bootstrap,
        "http://minio:9000": s3_endpoint,
        "tfserving:8500": tfserving,
        "host.docker.internal": "127.0.0.1",
    }
    prefix = f"compose-{uuid.uuid4().hex[:6]}."
    started: list[Started] = []
    try:
        for name, service in services.items():
            root = tmp_path / name
            image = service["image"].split(":")[0].removeprefix("preannotate-")
            cmd = image_cmd(REPO / "services" / image / "Dockerfile")
            assert cmd[:2] == ["preannotate", "run"], f"{name}: CMD {cmd}"
            cwd = lay_out(name, service, config, root)
            env = process_env(name, service, config, root, hosts, prefix)
            if not started:
                make_bucket(env)
            log = tmp_path / f"{name}.log"
            with open(log, "wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "preannotate", *cmd[1:]],
                    cwd=cwd,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            started.append(Started(name, proc, log, int(env["PREANNOTATE_METRICS_PORT"])))

        deadline = time.monotonic() + READY_SECONDS
        waiting = list(started)
        while waiting:
            for s in list(waiting):
                assert s.proc.poll() is None, (
                    f"{s.name} exited ({s.proc.returncode}) before it was ready:\n{s.tail()}"
                )
                if s.ready():
                    waiting.remove(s)
            assert time.monotonic() < deadline, (
                f"not ready after {READY_SECONDS:.0f} s: "
                + "; ".join(f"{s.name}:\n{s.tail()}" for s in waiting)
            )
            time.sleep(0.5)

        for s in started:
            s.proc.send_signal(signal.SIGTERM)
        for s in started:
            try:
                code = s.proc.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{s.name} did not stop within {STOP_SECONDS:.0f} s:\n{s.tail()}")
            assert code == 0, f"{s.name} exited {code} on SIGTERM:\n{s.tail()}"
    finally:
        for s in started:
            if s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait(10)
