"""The client commands (preannotate.cli.training) against a running gateway."""

from __future__ import annotations

import asyncio
import io

import pytest
from rich.console import Console

from preannotate import topics
from preannotate.cli import training as cli
from preannotate.status import snapshot
from preannotate.v1 import common_pb2, events_pb2
from tests.gateway.conftest import TOKEN_A, write_model

pytestmark = pytest.mark.timeout(60)


def console() -> Console:
    return Console(file=io.StringIO(), width=200, force_terminal=False, color_system=None)


def text(c: Console) -> str:
    return c.file.getvalue()


def connection(gw, token: str = "") -> cli.Connection:
    return cli.Connection(address=gw.grpc_address, token=token)


async def new_job(gw, timeout: float = 10.0) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not gw.runtime.status_view.jobs:
        assert loop.time() < deadline, "no job was created"
        await asyncio.sleep(0.02)
    return next(iter(gw.runtime.status_view.jobs))


async def play(gw, ending: int, text_: str) -> str:
    """Play the later stages of the job the CLI created: export, 3 training steps, the end."""
    job_id = await new_job(gw)
    msg = events_pb2.TaskAnnotated(job_id=job_id, namespace="team-a")
    steps = [
        (events_pb2.JOB_STAGE_EXPORT, events_pb2.JOB_STATE_RUNNING, 0, 0),
        (events_pb2.JOB_STAGE_TRAIN, events_pb2.JOB_STATE_RUNNING, 10, 30),
        (events_pb2.JOB_STAGE_TRAIN, events_pb2.JOB_STATE_RUNNING, 20, 30),
        (events_pb2.JOB_STAGE_TRAIN, events_pb2.JOB_STATE_RUNNING, 30, 30),
    ]
    for stage, state, step, total in steps:
        await asyncio.sleep(0.1)
        progress = events_pb2.Progress(step=step, total=total, loss=1.0 / (step + 1), eta_seconds=5)
        await gw.runtime.status_writer.write(
            snapshot(msg, stage=stage, state=state, progress=progress)
        )
    await asyncio.sleep(0.1)
    model = None
    if ending == events_pb2.JOB_STATE_SUCCEEDED:
        model = common_pb2.ModelRef(namespace="team-a", name="birds", version=1)
    await gw.runtime.status_writer.write(
        snapshot(msg, stage=events_pb2.JOB_STAGE_CONVERT, state=ending, text=text_, model=model)
    )
    return job_id


async def test_train_prints_the_job_and_follows_it_to_success(gateway):
    out = console()
    player = asyncio.create_task(play(gateway, events_pb2.JOB_STATE_SUCCEEDED, "model ready"))
    code = await cli.train_async(
        task=12,
        model="ssd-mobilenet-v2-coco",
        args="epochs=4000;batch_size=24",
        name="birds",
        connection=connection(gateway),
        console=out,
    )
    job_id = await player
    assert code == 0
    assert text(out).splitlines()[0] == job_id
    assert "convert: succeeded - model ready" in text(out)  # the bar's last state
    assert f"job {job_id} succeeded; model team-a/birds/1" in text(out)
    [event] = await gateway.published(topics.TASK_ANNOTATED)
    assert event.training.arguments == "epochs=4000;batch_size=24"
    assert event.training.model_name == "birds"


async def test_train_exits_non_zero_with_the_message_when_the_job_fails(gateway):
    out = console()
    player = asyncio.create_task(
        play(gateway, events_pb2.JOB_STATE_FAILED, "CVAT answered 500 three times")
    )
    code = await cli.train_async(
        task=12, model="ssd-mobilenet-v2-coco", connection=connection(gateway), console=out
    )
    job_id = await player
    assert code == cli.JOB_FAILED
    assert f"job {job_id} failed: CVAT answered 500 three times" in text(out)


async def test_a_refused_request_exits_2_with_the_reason(gateway):
    out = console()
    code = await cli.train_async(
        task=12,
        model="ssd-mobilenet-v2-coco",
        args="epochs=abc",
        connection=connection(gateway),
        console=out,
    )
    assert code == cli.REFUSED
    assert "invalid_argument" in text(out) and "epochs='abc'" in text(out)
    assert await gateway.published(topics.TASK_ANNOTATED, expect=0, timeout=0) == []


async def test_an_unreachable_gateway_says_where_it_looked():
    out = console()
    code = await cli.model_types_async(
        connection=cli.Connection(address="127.0.0.1:1"), console=out
    )
    assert code == cli.REFUSED
    assert "127.0.0.1:1" in text(out) and "PREANNOTATE_GATEWAY_ADDRESS" in text(out)


async def test_tables(gateway):
    write_model(
        gateway.storage,
        "team-a",
        "birds",
        3,
        model_type="ssd-mobilenet-v2-coco",
        classes=["duck", "goose"],
        metrics={"AP": 0.5},
        init={"init": "imagenet-backbone"},
    )
    write_model(
        gateway.storage,
        "team-a",
        "geese",
        1,
        model_type="ssd-mobilenet-v2-coco",
        metrics={
            "AR@100": 0.9, "loss": 1.2, "mAP": 0.55, "mAP@0.5": 0.8,
            "suggested_threshold": 0.312, "precision@suggested_threshold": 0.7,
        },
    )  # fmt: skip
    await cli.train_async(
        task=5,
        model="ssd-mobilenet-v2-coco",
        follow=False,
        connection=connection(gateway),
        console=console(),
    )
    out = console()
    assert await cli.jobs_async(connection=connection(gateway), console=out) == 0
    assert "export" in text(out) and "queued" in text(out) and "team-a" in text(out)
    out = console()
    assert (
        await cli.jobs_async(states=["running"], connection=connection(gateway), console=out) == 0
    )
    assert "no jobs" in text(out)
    out = console()
    assert (
        await cli.jobs_async(states=["sleeping"], connection=connection(gateway), console=out)
        == cli.REFUSED
    )
    assert "unknown state 'sleeping'" in text(out)
    out = console()
    assert await cli.models_async(connection=connection(gateway), console=out) == 0
    assert "team-a/birds" in text(out) and "duck, goose" in text(out) and "AP=0.500" in text(out)
    assert "imagenet-backbone" in text(out)  # the start its training used
    # the headline figures and the threshold a run without one gets
    assert "mAP@0.5=0.800, mAP=0.550, threshold=0.312" in text(out)
    assert "loss" not in text(out) and "precision" not in text(out)
    out = console()
    assert (
        await cli.model_types_async(verbose=True, connection=connection(gateway), console=out) == 0
    )
    assert "ssd-mobilenet-v2-coco" in text(out) and "frcnn-nas-coco" in text(out)
    assert "initial_learning_rate" in text(out)


async def test_the_token_is_sent(gateway_cleanup):
    gw = await gateway_cleanup(tokens=True)
    out = console()
    assert await cli.models_async(connection=connection(gw), console=out) == cli.REFUSED
    assert "Bearer" in text(out)
    out = console()
    assert await cli.models_async(connection=connection(gw, TOKEN_A), console=out) == 0


async def test_cancel_and_watch(gateway):
    out = console()
    await cli.train_async(
        task=5,
        model="ssd-mobilenet-v2-coco",
        follow=False,
        connection=connection(gateway),
        console=out,
    )
    job_id = text(out).strip()
    out = console()
    assert await cli.cancel_async(job_id, connection=connection(gateway), console=out) == 0
    assert "cancelling" in text(out)
    msg = events_pb2.TaskAnnotated(job_id=job_id, namespace="team-a")
    await gateway.runtime.status_writer.write(
        snapshot(
            msg,
            stage=events_pb2.JOB_STAGE_EXPORT,
            state=events_pb2.JOB_STATE_CANCELLED,
            text="cancelled by alice",
        )
    )
    await asyncio.sleep(0.1)
    out = console()
    assert await cli.watch_async(job_id, connection=connection(gateway), console=out) == 1
    assert f"job {job_id} was cancelled: cancelled by alice" in text(out)


def test_the_connection_comes_from_the_environment(tmp_path):
    assert cli.Connection.from_env({}) == cli.Connection("127.0.0.1:50051", "", False, None)
    ca = tmp_path / "ca.pem"
    got = cli.Connection.from_env(
        {
            "PREANNOTATE_GATEWAY_ADDRESS": "gw:443",
            "PREANNOTATE_TOKEN": "t0k",
            "PREANNOTATE_GATEWAY_CA_FILE": str(ca),
        }
    )
    assert got == cli.Connection("gw:443", "t0k", True, ca)
    assert got.metadata() == (("authorization", "Bearer t0k"),)
    assert cli.Connection.from_env({"PREANNOTATE_GATEWAY_TLS": "1"}).tls


async def test_argparse_wiring_runs_the_synchronous_commands(gateway, monkeypatch, capsys):
    import argparse

    monkeypatch.setenv("PREANNOTATE_GATEWAY_ADDRESS", gateway.grpc_address)
    monkeypatch.setenv("COLUMNS", "250")  # rich's width: no job id folded over two lines
    parser = argparse.ArgumentParser(prog="preannotate")
    sub = parser.add_subparsers(dest="command", required=True)
    handlers = {name: cli.add_arguments(name, sub.add_parser(name)) for name in cli.COMMANDS}
    ns = parser.parse_args(
        [
            "train",
            "--task",
            "12",
            "--model",
            "ssd-mobilenet-v2-coco",
            "--args",
            "epochs=10",
            "--name",
            "owls",
            "--no-follow",
        ]
    )
    # the synchronous commands run their own event loop: call them from a thread
    assert await asyncio.to_thread(handlers["train"], ns) == 0
    [event] = await gateway.published(topics.TASK_ANNOTATED)
    assert (event.cvat.task_id, event.training.model_name) == (12, "owls")
    ns = parser.parse_args(["jobs", "--state", "queued"])
    assert await asyncio.to_thread(handlers["jobs"], ns) == 0
    assert event.job_id in capsys.readouterr().out
    with pytest.raises(ValueError, match="no gateway command 'fly'"):
        cli.add_arguments("fly", argparse.ArgumentParser())
