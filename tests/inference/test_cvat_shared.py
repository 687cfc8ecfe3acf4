"""``preannotate.cvat``: the settings, headers, error mapping, retry policy, link and
file:// rules of the one CVAT client that the exporter and the inference service
share, and that both really use them (against the CVAT stand-in)."""

from __future__ import annotations

import time
import zipfile

import pytest

from preannotate.cvat import (
    CvatClient,
    CvatConnection,
    CvatSettings,
    Retryable,
    check_same_server,
    connect,
    cvat_headers,
    file_ref_path,
    http_error,
    retryable_status,
    with_retries,
)
from preannotate.cvat import client as client_module
from preannotate.cvat.export import ExportLimits, export_task
from preannotate.errors import (
    Cancelled,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from preannotate.settings import SettingsError, load
from preannotate.v1 import common_pb2
from services.exporter.settings import ExporterSettings
from services.inference.settings import InferenceSettings
from tests.standins.cvat import CvatStandIn, make_shapes_dataset, shapes_labels

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


@pytest.mark.parametrize("cls", [ExporterSettings, InferenceSettings])
def test_connect_sends_the_shared_headers_to_the_configured_cvat_only(cls, monkeypatch, tmp_path):
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    settings = cls(storage_root=tmp_path)
    client = connect(settings, common_pb2.CvatRef(organization="beta"))
    assert client.headers == {
        "Authorization": "Token pat-1",
        "X-Organization": "beta",
        "Accept": "application/json",
    }
    assert connect(settings, common_pb2.CvatRef()).headers["X-Organization"] == "acme"
    with pytest.raises(InvalidArgument, match="PREANNOTATE_CVAT_URL"):
        connect(settings, common_pb2.CvatRef(url="https://evil.example:8443"))


@pytest.mark.parametrize("cls", [ExporterSettings, InferenceSettings])
def test_no_token_is_the_operators_problem_in_both_services(cls, tmp_path):
    with pytest.raises(FailedPrecondition, match="no CVAT token is configured"):
        connect(cls(storage_root=tmp_path, cvat_token=""), common_pb2.CvatRef())


def test_one_error_mapping():
    connection = CvatConnection(url="http://cvat:8080", token="t", organization="acme")

    def error(status: int) -> Exception:
        return http_error(status, "GET /api/x", b'{"detail": "no"}', connection, "Why")

    assert isinstance(error(401), FailedPrecondition)
    assert "PREANNOTATE_CVAT_TOKEN" in str(error(401)) and "'bearer'" in str(error(401))
    assert isinstance(error(403), PermissionDenied) and "'acme'" in str(error(403))
    assert isinstance(error(404), NotFound)
    assert isinstance(error(409), InvalidArgument)
    assert all(isinstance(error(s), Retryable) for s in (408, 429, 500, 503))
    assert str(error(409)) == 'CVAT answered 409 Why to GET /api/x: {"detail": "no"}'


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
    assert file_ref_path(f"file://localhost{root}/a", root, "VAR") == (root / "a").resolve()
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
    with pytest.raises(InvalidArgument, match=r"no folder is allowed .* \(VAR\)"):
        file_ref_path(link.as_uri(), None, "VAR")  # no root: every path refused


# --- the one client against the CVAT stand-in --------------------------------------------------

TOKEN = "good-token"


@pytest.fixture
async def cvat():
    async with CvatStandIn(tokens={TOKEN}) as server:
        yield server


def _task(server: CvatStandIn, n: int = 3) -> int:
    images, shapes = make_shapes_dataset(n, size=(48, 40), seed=5)
    return server.add_task("shapes", labels=shapes_labels(), images=images, shapes=shapes)


def _client(url: str, token: str = TOKEN, **kwargs) -> CvatClient:
    return CvatClient(CvatConnection(url=url, token=token, backoff=0.01, **kwargs))


CALLS = {
    "export": lambda c, t, tmp: export_task(c, t, tmp / "e.zip", ExportLimits(poll_interval=0.02)),
    "data meta": lambda c, t, tmp: c.data_meta(t),
    "labels": lambda c, t, tmp: c.labels(t),
    "frame": lambda c, t, tmp: c.frame(t, 0),
    "annotations": lambda c, t, tmp: c.job_annotations(t),
    "patch": lambda c, t, tmp: c.patch_shapes(t, "create", [{"frame": 0}]),
}


@pytest.mark.parametrize("call", sorted(CALLS))
async def test_a_refused_token_fails_every_endpoint_alike_and_is_not_retried(cvat, call, tmp_path):
    task_id = _task(cvat)
    async with _client(cvat.url, token="wrong") as client:
        with pytest.raises(FailedPrecondition, match=r"CVAT answered 401.*PREANNOTATE_CVAT_TOKEN"):
            await CALLS[call](client, task_id, tmp_path)
    assert len([r for r in cvat.request_log if r.path.startswith("/api/")]) == 1


async def test_the_export_flow_downloads_the_zip(cvat, tmp_path):
    task_id = _task(cvat)
    seen: list[str] = []

    async def on_status(message: str) -> None:
        seen.append(message)

    async with _client(cvat.url, auth_scheme="token", organization="") as client:
        path = await export_task(
            client, task_id, tmp_path / "e.zip", ExportLimits(poll_interval=0.02),
            on_status=on_status,
        )  # fmt: skip
    assert zipfile.is_zipfile(path) and path == tmp_path / "e.zip"
    assert not (tmp_path / "e.zip.partial").exists()
    assert seen[-1] == "downloading the export from CVAT"
    assert any(m.startswith("CVAT is preparing the export") for m in seen)
    sent = [r for r in cvat.request_log if r.path.startswith("/api/")]
    assert [r.method for r in sent][:1] == ["POST"] and sent[-1].path.endswith("/download")
    assert all(r.headers["Authorization"] == f"Token {TOKEN}" for r in sent)
    assert sent[0].query == {"format": "COCO 1.0", "save_images": "true"}


async def test_a_download_over_the_limit_is_refused_and_leaves_nothing(cvat, tmp_path):
    task_id = _task(cvat)
    async with _client(cvat.url) as client:
        with pytest.raises(InvalidArgument, match="larger than the limit of 100 bytes"):
            await export_task(
                client, task_id, tmp_path / "e.zip",
                ExportLimits(poll_interval=0.02, max_archive_bytes=100),
            )  # fmt: skip
    assert list(tmp_path.iterdir()) == []


async def test_a_cancel_between_polls_stops_the_export(cvat, tmp_path):
    task_id = _task(cvat)
    async with _client(cvat.url) as client:
        with pytest.raises(Cancelled, match=f"exporting task {task_id}"):
            await export_task(
                client, task_id, tmp_path / "e.zip", ExportLimits(poll_interval=0.02),
                cancelled=lambda: True,
            )  # fmt: skip
    assert not any(r.path.endswith("/download") for r in cvat.request_log)


async def test_links_to_another_server_are_not_followed(cvat, tmp_path, monkeypatch):
    """The stand-in calls itself 127.0.0.1; a client configured as localhost (the same
    server under another name) must not send the token where CVAT's links point."""
    task_id = _task(cvat)
    other_name = cvat.url.replace("127.0.0.1", "localhost")
    monkeypatch.setattr(client_module, "_PAGE_SIZE", 1)
    async with _client(cvat.url) as client:
        assert [lb["name"] for lb in await client.labels(task_id)] == ["circle", "square"]
    async with _client(other_name) as client:
        with pytest.raises(FailedPrecondition, match="another server than PREANNOTATE_CVAT_URL"):
            await client.labels(task_id)
        with pytest.raises(FailedPrecondition, match=r"CVAT's result_url is 'http://127\.0\.0\.1"):
            await export_task(client, task_id, tmp_path / "e.zip", ExportLimits(poll_interval=0.02))
    assert not any(r.path.endswith("/download") for r in cvat.request_log)
