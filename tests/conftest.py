"""Shared test infrastructure: the real Kafka broker, moto's S3 server, names, storages.

Session fixtures start a server the first time a test asks for it and stop it
when the run ends; a run whose tests ask for neither never starts Java.

- ``kafka_bootstrap``: "127.0.0.1:<port>" of a real Kafka 4 broker
  (scripts/localkafka.py), or $PREANNOTATE_TEST_KAFKA_BOOTSTRAP.
- ``s3_endpoint``: "http://127.0.0.1:<port>" of moto's S3 server
  (scripts/locals3.py), or $PREANNOTATE_TEST_S3_ENDPOINT.
- ``unique_name``: a factory of fresh names for topics, groups and buckets.
- ``s3_storage`` / ``local_storage``: a ``preannotate.storage`` on a fresh
  bucket / under ``tmp_path``.

A server that cannot start makes the tests that need it ERROR with the reason;
they are never skipped. Tests that use a server get the ``kafka`` or ``s3``
marker, so ``-m "not kafka"`` deselects them; tests that need deploy/'s built
validators get ``deploy_tools``; tests that train or build real TensorFlow
models carry ``tf`` (``make test-fast`` leaves out kafka, tf and deploy_tools). Area-specific fixtures belong in
tests/<area>/conftest.py.

The areas that train models run last (``HEAVY_AREAS``); the model fixtures they
need are built in the background from the start (tests/prebuild.py).
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"

#: Dummy credentials for moto (it accepts any); region of every test bucket.
S3_REGION = "us-east-1"
S3_ACCESS_KEY = "testing"
S3_SECRET_KEY = "testing"

#: The test models are tiny and train a few steps: a few batches exercise the
#: batch-norm recompute before their last checkpoint (services/trainer/batchnorm.py)
#: at a fraction of the default 50's cost. Subprocesses inherit it.
os.environ.setdefault("PREANNOTATE_TRAINER_NORM_BATCHES", "4")

_NAME_PREFIX = re.compile(r"[a-z0-9][a-z0-9-]{0,40}")


def load_file(path: Path, module_name: str) -> ModuleType:
    """Import the Python file ``path`` as ``module_name`` (for scripts/ and deploy/, which
    are not packages); registered in ``sys.modules`` first, where dataclasses look."""
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


@cache
def script(name: str) -> ModuleType:
    """Import ``scripts/<name>.py`` (scripts/ is not a package)."""
    return load_file(SCRIPTS / f"{name}.py", f"_preannotate_scripts_{name}")


#: Areas run after the others, in this order: they train models and keep both cores
#: busy, while the light areas leave CPU idle for the model fixtures that
#: tests/prebuild.py builds in the background meanwhile.
HEAVY_AREAS = ("trainer", "quickstart", "converter", "inference")


def _area_rank(item: pytest.Item) -> int:
    parts = Path(str(item.path)).relative_to(Path(__file__).parent).parts
    area = parts[0] if len(parts) > 1 else ""
    return HEAVY_AREAS.index(area) + 1 if area in HEAVY_AREAS else 0


#: Fixtures of tests/deploy/conftest.py that need deploy/'s validators built
#: (`make deploy-tools`: docker compose and kustomize from source, schemas, node).
DEPLOY_TOOL_FIXTURES = frozenset(
    {"tools", "compose_bin", "kustomize_bin", "python_tools", "node_root", "rendered"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_area_rank)  # stable: within an area, the usual order
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        # A test parametrised over "kafka"/"s3" asks for the server by name at run time.
        callspec = getattr(item, "callspec", None)
        params = set(map(str, callspec.params.values())) if callspec else set()
        if "kafka_bootstrap" in names or "kafka" in params:
            item.add_marker(pytest.mark.kafka)
        if "s3_endpoint" in names or "s3" in params:
            item.add_marker(pytest.mark.s3)
        if names & DEPLOY_TOOL_FIXTURES:
            item.add_marker(pytest.mark.deploy_tools)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start building the model fixtures the selected tests need (tests/prebuild.py)."""
    if session.config.option.collectonly:
        return
    from tests import prebuild

    prebuild.submit_for(session.items)


def pytest_sessionfinish() -> None:
    from tests import prebuild

    prebuild.shutdown()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a real Kafka broker, started once per session."""
    localkafka = script("localkafka")
    given = os.environ.get("PREANNOTATE_TEST_KAFKA_BOOTSTRAP")
    if given:
        if not localkafka.answers(given, timeout=5.0):
            pytest.fail(
                f"PREANNOTATE_TEST_KAFKA_BOOTSTRAP={given} does not answer a Kafka Metadata"
                " request: start that broker, or unset the variable to let the tests start one",
                pytrace=False,
            )
        yield given
        return
    broker = localkafka.KafkaBroker()
    try:
        broker.start()
        failure = None
    except localkafka.KafkaError as exc:
        failure = str(exc)
    if failure is not None:
        pytest.fail(
            f"could not start the test Kafka broker (scripts/localkafka.py): {failure}\n"
            "Run `make setup` (it fetches the jars), check `java -version` (17+), or point"
            " PREANNOTATE_TEST_KAFKA_BOOTSTRAP at a running broker.",
            pytrace=False,
        )
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """Endpoint URL of moto's S3 server, started once per session."""
    locals3 = script("locals3")
    given = os.environ.get("PREANNOTATE_TEST_S3_ENDPOINT")
    if given:
        if not locals3.answers(given, timeout=5.0):
            pytest.fail(
                f"PREANNOTATE_TEST_S3_ENDPOINT={given} does not answer a ListBuckets request:"
                " start that server, or unset the variable to let the tests start one",
                pytrace=False,
            )
        yield given.rstrip("/")
        return
    server = locals3.S3Server()
    try:
        server.start()
        failure = None
    except locals3.S3Error as exc:
        failure = str(exc)
    if failure is not None:
        pytest.fail(
            f"could not start moto's S3 server (scripts/locals3.py): {failure}\n"
            "Run `make setup` (it installs moto[server] into .venv).",
            pytrace=False,
        )
    try:
        yield server.endpoint
    finally:
        server.stop()


@pytest.fixture
def unique_name() -> Callable[..., str]:
    """``unique_name("t")`` -> "t-1a2b3c4d": valid as a topic, group or bucket name."""

    def make(prefix: str = "t") -> str:
        if not _NAME_PREFIX.fullmatch(prefix):
            raise ValueError(
                f"name prefix {prefix!r}: use 1 to 41 of a-z, 0-9 and '-', starting with a"
                " letter or digit"
            )
        return f"{prefix}-{uuid.uuid4().hex[:8]}"

    return make


@pytest.fixture
def s3_storage(s3_endpoint: str, unique_name: Callable[..., str]):
    """A ``preannotate.storage.S3Storage`` on a new, empty bucket of the test S3 server."""
    from preannotate.storage import S3Storage

    return S3Storage(
        bucket=unique_name("b"),
        endpoint_url=s3_endpoint,
        region=S3_REGION,
        access_key=S3_ACCESS_KEY,
        secret_key=S3_SECRET_KEY,
        create_bucket=True,
    )


@pytest.fixture
def local_storage(tmp_path: Path):
    """A ``preannotate.storage.LocalStorage`` in a fresh folder under ``tmp_path``."""
    from preannotate.storage import LocalStorage

    return LocalStorage(tmp_path / "storage")
