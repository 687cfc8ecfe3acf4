"""``preannotate.cvat``: the settings, headers, retry policy and file:// rules that
the exporter and the inference service share, and that both really use them."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from preannotate.cvat import (
    CvatConnection,
    CvatSettings,
    Retryable,
    check_same_server,
    cvat_headers,
    file_ref_path,
    retryable_status,
    with_retries,
)
from preannotate.errors import InvalidArgument, Unavailable
from preannotate.settings import SettingsError, load
from services.exporter.settings import ExporterSettings
from services.inference.settings import InferenceSettings
from services.inference.target import cvat_client

ENV = {
    "PREANNOTATE_CVAT_URL": "https://cvat.example:8443/",
    "PREANNOTATE_CVAT_TOKEN": "pat-1",
    "PREANNOTATE_CVAT_AUTH_SCHEME": "token",
    "PREANNOTATE_CVAT_ORGANIZATION": "acme",
    "PREANNOTATE_CVAT_VERIFY_TLS": "false",
    "PREANNOTATE_CVAT_REQUEST_TIMEOUT_SECONDS": "7",
    "PREANNOTATE_CVAT_RETRY_ATTEMPTS": "5",
    "PREANNOTATE_CVAT_RETRY_BACKOFF_SECONDS": "0.5",
    "PREANNOTATE_CVAT_RETRY_BACKOFF_MAX_SECONDS": "3",
}


@pytest.mark.parametrize("cls", [ExporterSettings, InferenceSettings])
def test_both_services_read_the_same_variables(cls, monkeypatch):
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    settings = cls()
    assert isinstance(settings, CvatSettings)
    connection = CvatConnection.from_settings(settings)
    assert connection == CvatConnection(
        url="https://cvat.example:8443",
        token="pat-1",
        auth_scheme="token",
        organization="acme",
        verify_tls=False,
        request_timeout=7.0,
        retry_attempts=5,
        backoff=0.5,
        backoff_max=3.0,
    )
    assert CvatConnection.from_settings(settings, "other").organization == "other"
    # Every shared field says what it is.
    for name in CvatSettings.model_fields:
        if name.startswith("cvat_"):
            assert cls.model_fields[name].description, name


def test_a_bad_url_names_the_variable(monkeypatch):
    monkeypatch.setenv("PREANNOTATE_CVAT_URL", "cvat:8080")
    with pytest.raises(SettingsError, match=r"PREANNOTATE_CVAT_URL: .*http://"):
        load(InferenceSettings)


def test_headers():
    assert cvat_headers("t") == {"Authorization": "Bearer t"}
    assert cvat_headers("k", "token", "acme") == {
        "Authorization": "Token k",
        "X-Organization": "acme",
    }
    with pytest.raises(ValueError, match="bearer"):
        cvat_headers("t", "basic")  # type: ignore[arg-type]


def test_the_inference_client_sends_the_shared_headers(monkeypatch, tmp_path):
    from preannotate.v1 import common_pb2

    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    settings = InferenceSettings(storage_root=tmp_path)
    client = cvat_client(settings, common_pb2.CvatRef(organization="beta"))
    assert client.headers == {
        "Authorization": "Token pat-1",
        "X-Organization": "beta",
        "Accept": "application/json",
    }
    with pytest.raises(InvalidArgument, match="PREANNOTATE_CVAT_URL"):
        cvat_client(settings, common_pb2.CvatRef(url="https://evil.example:8443"))


def test_the_exporter_client_sends_the_shared_headers():
    from services.exporter.cvat_client import CvatConfig, CvatExporter

    exporter = CvatExporter(CvatConfig(url="http://cvat:8080", token="k", auth_scheme="token",
                                       organization="acme"))  # fmt: skip
    api = exporter._client()
    try:
        assert api.default_headers["Authorization"] == "Token k"
        assert api.default_headers["X-Organization"] == "acme"
    finally:
        exporter.close()


def test_retryable_statuses():
    assert [s for s in (200, 400, 401, 404, 408, 429, 500, 502, 503) if retryable_status(s)] == [
        408,
        429,
        500,
        502,
        503,
    ]
    connection = CvatConnection(url="x", token="t", backoff=1.0, backoff_max=5.0)
    assert [connection.delay(a) for a in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]


async def test_with_retries_gives_up_naming_the_last_error():
    connection = CvatConnection(url="x", token="t", retry_attempts=3, backoff=0.01)
    tries = []

    async def flaky():
        tries.append(time.monotonic())
        raise Retryable(f"CVAT failed GET /x: HTTP 503 try {len(tries)}")

    with pytest.raises(Unavailable, match=r"HTTP 503 try 3 \(gave up after 3 tries; PREANNOTATE"):
        await with_retries(flaky, connection)
    assert len(tries) == 3
    assert tries[2] - tries[1] >= 0.02 - 1e-3  # backed off, doubling

    async def works_second_time():
        tries.append(0.0)
        if len(tries) == 4:
            raise Retryable("once")
        return "ok"

    assert await with_retries(works_second_time, connection) == "ok"

    async def refused():
        raise InvalidArgument("not retried")

    tries.clear()
    with pytest.raises(InvalidArgument):
        await with_retries(refused, connection)


def test_same_server():
    check_same_server("", "http://cvat:8080")
    check_same_server("http://CVAT:8080/api", "http://cvat:8080")
    check_same_server("https://cvat/", "https://cvat:443")
    with pytest.raises(InvalidArgument, match="not this deployment's CVAT"):
        check_same_server("http://cvat:8081", "http://cvat:8080")


def test_file_ref_path(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    assert file_ref_path((root / "a").as_uri(), root, "VAR") == (root / "a").resolve()
    assert file_ref_path(root.as_uri(), root, "VAR") == root.resolve()
    assert file_ref_path(f"file://localhost{root}/a", None, "VAR") == (root / "a").resolve()
    for url, why in [
        (f"file://{root}/../x", "outside .* \\(VAR\\)"),
        (f"file://{root}/a/%2E%2E/%2E%2E/x", "outside"),
        ("file://server/share", "local path"),
        ("file:relative/path", "absolute path"),
        ("http://cvat/x", "not a file:// URL"),
    ]:
        with pytest.raises(InvalidArgument, match=why):
            file_ref_path(url, root, "VAR")
    link = root / "link"
    link.symlink_to(tmp_path)
    with pytest.raises(InvalidArgument, match="outside"):
        file_ref_path(link.as_uri(), root, "VAR")
    assert file_ref_path(link.as_uri(), None, "VAR") == Path(tmp_path).resolve()
