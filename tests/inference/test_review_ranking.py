"""The ranking every CVAT run keeps, GetReview and ``preannotate review TASK``.

Each pre-annotation run of a CVAT task writes its frames ranked by doubt to
storage (``services.inference.reviewstore``), whether or not it opens review
issues; the task's next run replaces it. GetReview answers it with a link per
frame into CVAT's web UI, after the same namespace and CVAT-scope checks as
AnnotateTask, and NOT_FOUND before any run. The CLI prints it as a table or JSON.

As in test_review_issues: the real runner with its gRPC server (and a tokens
file), the CVAT stand-in, and the scripted backend whose scores per frame make
the ranking known: at threshold 0.5, frame 5 (0.45, nothing written: 0.8 + 0.5),
frame 1 (0.52: 0.92), frame 3 (empty: 0.5), frame 2 (0.3 of 0.9 and 0.3: 0.2);
frames 0 and 4 are sure.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import yaml
from rich.console import Console

from preannotate import keys
from preannotate.bus import MemoryBus
from preannotate.cli import inference as cli
from preannotate.errors import UnsafeName
from preannotate.runner import Runtime
from preannotate.storage import LocalStorage
from preannotate.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from services.inference.service import build as build_inference
from tests.inference.helpers import TOKEN as CVAT_TOKEN
from tests.inference.helpers import make_settings
from tests.inference.test_review_issues import frames, scripted_model
from tests.standins.cvat import CvatStandIn, shapes_labels

pytestmark = pytest.mark.timeout(90)

FRED = "token-of-fred-0123456789a"  # namespace default, every CVAT task
ANA = "token-of-ana-0123456789ab"  # namespace default, CVAT project 3 only
BOB = "token-of-bob-01234567890ab"  # namespace team-b only
TOKENS = {
    "tokens": [
        {"name": "fred", "token": FRED, "namespaces": ["default"]},
        {"name": "ana", "token": ANA, "namespaces": ["default"], "cvat_projects": [3]},
        {"name": "bob", "token": BOB, "namespaces": ["team-b"]},
    ]
}
#: The ranking of ``SCORES`` at threshold 0.5 (module doc): frame, doubt.
RANKED = [(5, 1.3), (1, 0.92), (3, 0.5), (2, 0.2)]


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


class Served:
    """The service on the runner, its storage, the CVAT stand-in and a stub."""

    def __init__(self, stub, cvat: CvatStandIn, storage: LocalStorage, address: str) -> None:
        self.stub = stub
        self.cvat = cvat
        self.storage = storage
        self.address = address

    def task(self, name: str = "t", project_id: int | None = None) -> int:
        return self.cvat.add_task(
            name, shapes_labels(), frames(), segment_size=3, project_id=project_id
        )

    def jobs(self, task: int) -> list[int]:
        return sorted(j["id"] for j in self.cvat.jobs(task))

    def kept(self, task: int, namespace: str = "default") -> dict:
        return json.loads(self.storage.get(keys.review_key(namespace, self.cvat.url, task)))

    async def review(self, task: int, token: str = FRED, **fields):
        request = inference_pb2.GetReviewRequest(cvat=common_pb2.CvatRef(task_id=task), **fields)
        return await self.stub.GetReview(request, metadata=bearer(token))


@pytest.fixture
async def served(tmp_path: Path, monkeypatch) -> AsyncIterator[Served]:
    storage, _ = scripted_model(tmp_path, monkeypatch)
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(yaml.safe_dump(TOKENS))
    async with CvatStandIn(tokens={CVAT_TOKEN}) as cvat:
        settings = make_settings(
            tmp_path, cvat_url=cvat.url, metrics_port=0, kafka_partitions=1, tokens_file=tokens
        )
        runtime = Runtime([(build_inference(settings), settings)], bus=MemoryBus(), storage=storage)
        await runtime.start()
        address = f"127.0.0.1:{runtime.grpc_ports['inference']}"
        channel = grpc.aio.insecure_channel(address)
        try:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            yield Served(stub, cvat, storage, address)
        finally:
            await channel.close()
            await runtime.stop()


async def run(served: Served, task: int, review_issues: int = 0, **fields) -> None:
    """AnnotateTask as fred (a token is needed here)."""
    request = inference_pb2.AnnotateTaskRequest(
        model=common_pb2.ModelRef(name="shapes"),
        cvat=common_pb2.CvatRef(task_id=task),
        threshold=0.5,
        review_issues=review_issues,
        **fields,
    )
    updates = [u async for u in served.stub.AnnotateTask(request, metadata=bearer(FRED))]
    assert updates[-1].done


async def test_a_run_keeps_its_ranking_and_the_next_run_replaces_it(served):
    task = served.task()
    await run(served, task, review_issues=1)
    jobs = served.jobs(task)
    kept = served.kept(task)

    assert [(f["frame"], f["doubt"]) for f in kept["frames"]] == [
        (f, pytest.approx(d)) for f, d in RANKED
    ]
    assert [f["issue_opened"] for f in kept["frames"]] == [True, True, False, False]
    assert [f["job"] for f in kept["frames"]] == [jobs[1], jobs[0], jobs[1], jobs[0]]
    assert [f["written"] for f in kept["frames"]] == [0, 1, 0, 1]
    worst = kept["frames"][0]["worst"]  # frame 5, 105 x 80 pixels
    assert worst["label"] == "circle" and worst["score"] == pytest.approx(0.45)
    assert worst["box"] == pytest.approx([21.0, 8.0, 63.0, 40.0]) and worst["written"] is False
    assert kept["frames"][2]["worst"] is None  # frame 3: nothing at all
    assert (kept["task_id"], kept["cvat_url"], kept["namespace"]) == (
        task,
        served.cvat.url,
        "default",
    )
    assert kept["model"] == {"namespace": "default", "name": "shapes", "version": 1}
    assert kept["threshold"] == pytest.approx(0.5) and kept["frames_ranked"] == 6
    assert kept["job_id"].startswith("annotate-") and kept["created_at"].endswith("Z")
    assert kept["issues_per_job"] == 1

    # the next run (no issues, circle's own threshold 0.93) replaces it whole; it
    # writes what it would write without the ranking
    first_job = kept["job_id"]
    await run(served, task, label_thresholds={"circle": 0.93})
    kept = served.kept(task)
    assert kept["job_id"] != first_job and kept["label_thresholds"] == {"circle": 0.93}
    assert [f["frame"] for f in kept["frames"]] == [2, 0, 4, 1, 3, 5]
    assert not any(f["issue_opened"] for f in kept["frames"])
    assert len(served.cvat.issues) == 2  # the first run's only


async def test_get_review_answers_the_ranking_with_cvat_links(served):
    task = served.task()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await served.review(task)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "preannotate annotate" in err.value.details()

    await run(served, task, review_issues=1)
    jobs = served.jobs(task)
    answer = await served.review(task)
    assert [(f.rank, f.frame) for f in answer.frames] == [(1, 5), (2, 1), (3, 3), (4, 2)]
    assert [f.doubt for f in answer.frames] == pytest.approx([d for _, d in RANKED])
    top = answer.frames[0]
    assert top.link == f"{served.cvat.url}/tasks/{task}/jobs/{jobs[1]}?frame=5"
    assert answer.frames[1].link == f"{served.cvat.url}/tasks/{task}/jobs/{jobs[0]}?frame=1"
    assert top.issue_opened and not answer.frames[2].issue_opened
    assert top.worst.label == "circle" and top.worst.score == pytest.approx(0.45)
    assert [top.worst.x1, top.worst.y1, top.worst.x2, top.worst.y2] == pytest.approx(
        [21, 8, 63, 40]
    )
    assert not answer.frames[2].HasField("worst")
    assert (answer.cvat.task_id, answer.cvat.url, answer.namespace) == (
        task,
        served.cvat.url,
        "default",
    )
    assert (answer.model.name, answer.model.version, answer.frames_ranked) == ("shapes", 1, 6)
    assert answer.threshold == pytest.approx(0.5) and answer.created_at.seconds > 0

    limited = await served.review(task, limit=2)
    assert [f.frame for f in limited.frames] == [5, 1] and limited.frames_doubtful == 4

    # another namespace's ranking is its own; another CVAT server is refused
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await served.review(task, token=BOB, namespace="team-b")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    request = inference_pb2.GetReviewRequest(
        cvat=common_pb2.CvatRef(url="http://elsewhere:8080", task_id=task)
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await served.stub.GetReview(request, metadata=bearer(FRED))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await served.review(task, limit=-1)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_get_review_checks_the_namespace_and_the_cvat_scope(served):
    inside = served.task("in project 3", project_id=3)
    outside = served.task("no project")
    await run(served, inside)
    await run(served, outside)

    assert (await served.review(inside, token=ANA)).frames  # ana: project 3
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await served.review(outside, token=ANA)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "projects [3]" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await served.review(inside, token=BOB)  # bob may not use namespace default
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await served.stub.GetReview(
            inference_pb2.GetReviewRequest(cvat=common_pb2.CvatRef(task_id=inside))
        )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=120, force_terminal=False), buf


async def test_the_review_command_prints_a_table_and_json(served):
    task = served.task()
    conn = cli.Connection(served.address, token=FRED)
    console, out = _console()
    code = await cli.review_async(task=task, connection=conn, console=console)
    assert code == cli.REFUSED and "error (not_found)" in out.getvalue()
    assert "preannotate annotate" in out.getvalue()

    await run(served, task, review_issues=1)
    jobs = served.jobs(task)
    console, out = _console()
    assert await cli.review_async(task=task, limit=3, connection=conn, console=console) == cli.OK
    lines = out.getvalue().splitlines()
    assert f"CVAT task {task} at {served.cvat.url}" in lines[0]
    assert "4 of 6 frames with some doubt, the first 3 shown" in lines[1]
    header, rows = lines[2], lines[3:]
    assert header.split() == [
        "rank",
        "frame",
        "job",
        "doubt",
        "least",
        "sure",
        "of",
        "issue",
        "link",
    ]
    assert len(rows) == 3
    link = f"{served.cvat.url}/tasks/{task}/jobs/{jobs[1]}?frame=5"
    assert rows[0].split() == ["1", "5", str(jobs[1]), "1.30", "circle", "0.45", "yes", link]
    assert rows[2].split()[:7] == ["3", "3", str(jobs[1]), "0.50", "(nothing", "found)", "-"]
    for line in [header, *rows]:  # all but the link fits 80 columns
        assert len(line.rsplit("  ", 1)[0]) <= 80, line
        assert line.endswith(("link", "?frame=" + line.rsplit("=", 1)[-1]))

    console, out = _console()
    code = await cli.review_async(
        task=task, limit=0, as_json=True, connection=conn, console=console
    )
    assert code == cli.OK
    printed = json.loads(out.getvalue())
    assert [f["frame"] for f in printed["frames"]] == [5, 1, 3, 2]
    assert printed["frames"][0]["link"] == link and printed["frames"][0]["issue_opened"] is True
    assert printed["frames"][0]["worst"]["box"] == pytest.approx([21.0, 8.0, 63.0, 40.0])
    assert printed["model"] == "default/shapes/1" and printed["frames_ranked"] == 6


def test_the_review_command_parses_without_tensorflow_or_a_service():
    code = (
        "import sys; from preannotate.cli.main import build_parser; "
        "parser, handlers = build_parser('review'); "
        "ns = parser.parse_args(['review', '13', '--limit', '5', '--json', '--namespace', 'a']); "
        "assert (ns.task, ns.limit, ns.json, ns.namespace) == (13, 5, True, 'a'), ns; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('services', 'tensorflow')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_review_keys_keep_namespaces_and_cvat_servers_apart():
    key = keys.review_key("default", "http://cvat:8080", 13)
    assert key.startswith("default/reviews/cvat-") and key.endswith("/task-13.json")
    assert keys.review_key("default", "http://cvat:8080/", 13) == key
    assert keys.review_key("default", "https://cvat.example.org", 13) == keys.review_key(
        "default", "https://CVAT.example.org:443", 13
    )
    others = {
        keys.review_key("team-b", "http://cvat:8080", 13),
        keys.review_key("default", "http://cvat:8081", 13),
        keys.review_key("default", "https://cvat:8080", 13),
        keys.review_key("default", "http://cvat:8080", 14),
    }
    assert key not in others and len(others) == 4
    for bad in (
        ("default", "file:///data", 13),
        ("default", "http://cvat", 0),
        ("../x", "http://c", 1),
    ):
        with pytest.raises(UnsafeName):
            keys.review_key(*bad)


async def test_a_run_with_tracks_keeps_its_ranking_too(served):
    task = served.task()
    await run(served, task, tracks=True)
    assert served.cvat.task_annotations(task)["tracks"]  # written as tracks
    assert [f["frame"] for f in served.kept(task)["frames"]] == [f for f, _ in RANKED]
