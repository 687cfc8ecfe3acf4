"""PromoteModel / RollbackModel over gRPC, the statuses in ListModels, and new-task
pre-annotation following the promoted version (``preannotate.promotion``)."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client import REGISTRY

from preannotate import layout, promotion, topics
from preannotate.v1 import common_pb2, training_pb2, training_pb2_grpc
from tests.gateway import payloads
from tests.gateway.conftest import TOKEN_A, write_model, write_yaml

pytestmark = pytest.mark.timeout(60)

TOKEN_CAROL = "token-of-carol-0123456789"
TOKENS = {
    "tokens": [
        {"name": "alice", "token": TOKEN_A, "namespaces": ["team-a"]},
        {"name": "carol", "token": TOKEN_CAROL, "namespaces": ["team-a"], "admin": ["team-a"]},
    ]
}


def auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def versions(storage, scores: dict[int, float]) -> None:
    """Trained and exported versions of team-a/birds, gated in order (the trainer's way)."""
    for version, score in scores.items():
        metrics = {"mAP@0.5": score}
        evaluation = {"set": "job-1"}
        write_model(
            storage,
            "team-a",
            "birds",
            version,
            "models",
            metrics=metrics,
            evaluation=evaluation,
            model_type="ssd-mobilenet-v2-coco",
        )
        write_model(storage, "team-a", "birds", version, metrics=metrics)
        promotion.gate(
            storage,
            promotion.Measured(version, metrics, "job-1"),
            namespace="team-a",
            name="birds",
            tolerance=0.02,
            measured=lambda v: promotion.Measured(v, {"mAP@0.5": scores[v]}, "job-1"),
        )


@pytest.fixture
async def secured(gateway_cleanup, tmp_path):
    gw = await gateway_cleanup(tokens=True, tokens_file=write_yaml(tmp_path / "t.yaml", TOKENS))
    async with gw.channel() as channel:
        gw.stub = training_pb2_grpc.TrainingServiceStub(channel)
        yield gw


async def statuses_of(gw, token: str = TOKEN_A) -> dict[int, tuple[str, str]]:
    reply = await gw.stub.ListModels(
        common_pb2.ListModelsRequest(namespace="team-a"), metadata=auth(token)
    )
    return {m.ref.version: (m.status, m.status_reason) for m in reply.models}


async def new_task_model(gw, task_id: int) -> str:
    status, answer = await gw.post(payloads.task_created(task_id=task_id, project_id=3))
    assert (status, answer["status"]) == (200, "accepted")
    return answer["model"]


async def test_a_refused_version_is_listed_as_a_candidate_and_new_tasks_keep_the_promoted(
    secured,
):
    versions(secured.storage, {1: 0.6, 2: 0.2})
    listed = await statuses_of(secured)
    assert listed[1][0] == "promoted"
    assert listed[2][0] == "candidate" and "below version 1's 0.6000" in listed[2][1]
    reply = await secured.stub.ListModels(
        common_pb2.ListModelsRequest(namespace="team-a"), metadata=auth(TOKEN_A)
    )
    assert {m.evaluation_set for m in reply.models} == {"job-1"}
    assert await new_task_model(secured, 31) == "team-a/birds/1"


async def test_promote_and_rollback_change_what_new_tasks_use_and_are_recorded(secured):
    versions(secured.storage, {1: 0.6, 2: 0.2})
    reply = await secured.stub.PromoteModel(
        training_pb2.PromoteModelRequest(name="birds", version=2, reason="better on site B"),
        metadata=auth(TOKEN_CAROL),
    )
    assert (reply.promoted.version, list(reply.previous), reply.by) == (2, [1], "carol")
    assert await new_task_model(secured, 32) == "team-a/birds/2"
    assert (await statuses_of(secured))[2] == (
        "promoted",
        "promoted by carol: better on site B",
    )
    entry = layout.read_promotion_log(secured.storage, "team-a", "birds")[-1]
    assert (entry["action"], entry["by"], entry["version"]) == ("promoted", "carol", 2)

    reply = await secured.stub.RollbackModel(
        training_pb2.RollbackModelRequest(name="birds"), metadata=auth(TOKEN_CAROL)
    )
    assert (reply.promoted.version, list(reply.previous)) == (1, [])
    assert "version 2 rolled back by carol" in reply.message
    assert await new_task_model(secured, 33) == "team-a/birds/1"
    status, reason = (await statuses_of(secured))[2]
    assert status == "candidate" and reason.startswith("rolled-back by carol")


async def test_promote_and_rollback_need_the_admin_role(secured):
    versions(secured.storage, {1: 0.6, 2: 0.2})
    before = layout.read_promotion_log(secured.storage, "team-a", "birds")
    for call in (
        secured.stub.PromoteModel(
            training_pb2.PromoteModelRequest(name="birds", version=2), metadata=auth(TOKEN_A)
        ),
        secured.stub.RollbackModel(
            training_pb2.RollbackModelRequest(name="birds"), metadata=auth(TOKEN_A)
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "needs the admin role of namespace 'team-a'" in info.value.details()
    assert layout.read_promotion_log(secured.storage, "team-a", "birds") == before


async def test_bad_promotions_say_what_to_change(secured):
    versions(secured.storage, {1: 0.6})
    cases = [
        (training_pb2.PromoteModelRequest(name="birds", version=7), "NOT_FOUND", "finished: 1"),
        (training_pb2.PromoteModelRequest(name="birds", version=0), "INVALID_ARGUMENT", "from 1"),
        (training_pb2.PromoteModelRequest(name="Bad Name", version=1), "INVALID_ARGUMENT", "name"),
    ]
    for request, code, text in cases:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await secured.stub.PromoteModel(request, metadata=auth(TOKEN_CAROL))
        assert info.value.code().name == code and text in info.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await secured.stub.RollbackModel(
            training_pb2.RollbackModelRequest(name="birds"), metadata=auth(TOKEN_CAROL)
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no earlier one to roll back to" in info.value.details()


def promotions(action: str) -> float:
    value = REGISTRY.get_sample_value("preannotate_gateway_promotions_total", {"action": action})
    return value or 0.0


async def test_promotions_are_counted_and_publish_nothing(secured):
    versions(secured.storage, {1: 0.6, 2: 0.2})
    before = promotions("promote"), promotions("rollback")
    await secured.stub.PromoteModel(
        training_pb2.PromoteModelRequest(name="birds", version=2), metadata=auth(TOKEN_CAROL)
    )
    await secured.stub.RollbackModel(
        training_pb2.RollbackModelRequest(name="birds"), metadata=auth(TOKEN_CAROL)
    )
    assert (promotions("promote"), promotions("rollback")) == (before[0] + 1, before[1] + 1)
    assert await secured.published(topics.ANNOTATION_REQUESTED, expect=0, timeout=0) == []


async def test_the_cli_promotes_rolls_back_and_shows_each_status(secured):
    import io

    from rich.console import Console

    from preannotate.cli import training as cli

    def console() -> Console:
        return Console(file=io.StringIO(), width=250, force_terminal=False, color_system=None)

    versions(secured.storage, {1: 0.6, 2: 0.2})
    carol = cli.Connection(address=secured.grpc_address, token=TOKEN_CAROL)
    alice = cli.Connection(address=secured.grpc_address, token=TOKEN_A)

    out = console()
    assert await cli.models_async(connection=alice, console=out) == cli.OK
    text = out.file.getvalue()
    assert "promoted (gate-promoted by gate: the first version of the model)" in text
    assert "candidate (gate-refused by gate: mAP@0.5 0.2000 is below version 1's" in text
    assert "job-1" in text  # the evaluation set column

    out = console()
    assert await cli.promote_async("birds", 2, connection=alice, console=out) == cli.REFUSED
    assert "admin role" in out.file.getvalue()
    out = console()
    assert await cli.promote_async("birds", 2, reason="why not", connection=carol, console=out) == 0
    assert "team-a/birds/2 promoted by carol" in out.file.getvalue()
    out = console()
    assert await cli.rollback_async("birds", connection=carol, console=out) == cli.OK
    assert "version 1 serves" in out.file.getvalue()


def test_the_commands_are_registered():
    from preannotate.cli import main

    parser, handlers = main.build_parser("promote")
    args = parser.parse_args(["promote", "birds", "3", "--reason", "ok"])
    assert (args.name, args.version, args.reason) == ("birds", 3, "ok") and "promote" in handlers
    parser, handlers = main.build_parser("rollback")
    assert parser.parse_args(["rollback", "birds"]).name == "birds" and "rollback" in handlers


async def test_an_unreadable_promotion_log_does_not_break_the_listing(secured):
    versions(secured.storage, {1: 0.6})
    secured.storage.put("team-a/models/birds/promotion/2.json", b"{not json")
    assert await statuses_of(secured) == {1: ("", "")}
