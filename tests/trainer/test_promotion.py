"""The promotion gate as a pure function, and the promotion log in storage
(``preannotate.promotion``, ``preannotate.layout``): promote, rollback, statuses."""

from __future__ import annotations

import itertools
import threading

import pytest

from preannotate import layout, promotion
from preannotate.errors import FailedPrecondition, NotFound
from preannotate.promotion import Measured, decide
from preannotate.storage import LocalStorage, PrefixWriter

NS, NAME = "default", "boxes"


def measured(version: int, score: float | None, evaluation_set: str = "job-1") -> Measured:
    return Measured(version, {} if score is None else {"mAP@0.5": score}, evaluation_set)


def test_the_first_version_is_promoted():
    decision = decide(measured(1, 0.0), None, 0.02)
    assert decision.promote and "first version" in decision.reason


def test_a_version_within_the_tolerance_is_promoted_and_one_below_it_refused():
    promoted = measured(1, 0.50)
    assert decide(measured(2, 0.49), promoted, 0.02).promote
    assert decide(measured(2, 0.48), promoted, 0.02).promote  # exactly the floor
    refused = decide(measured(2, 0.47), promoted, 0.02)
    assert not refused.promote
    assert refused.reason == ("mAP@0.5 0.4700 is below version 1's 0.5000 minus the tolerance 0.02")
    assert not decide(measured(2, 0.49), promoted, 0.0).promote


def test_a_version_not_measured_on_the_set_is_refused():
    promoted = measured(1, 0.5)
    assert not decide(measured(2, None), promoted, 0.02).promote
    assert not decide(measured(2, 0.9, evaluation_set=""), promoted, 0.02).promote


def test_a_promoted_version_measured_on_another_set_cannot_hold_the_new_one_back():
    decision = decide(measured(2, 0.1, "job-9"), measured(1, 0.9, "job-1"), 0.02)
    assert decision.promote and "was not measured on evaluation set job-9" in decision.reason


def test_a_negative_tolerance_is_a_programming_error():
    with pytest.raises(ValueError, match="below 0"):
        decide(measured(1, 0.5), None, -0.1)


@pytest.fixture
def storage(tmp_path):
    storage = LocalStorage(tmp_path / "storage")
    for version in (1, 2, 3):
        with PrefixWriter(storage, f"{NS}/models/{NAME}/{version}/") as out:
            out.put("classes.csv", b"a\n")
            out.commit({"metrics": {}})
    return storage


def gate(storage, candidate: Measured, scores: dict[int, float]):
    return promotion.gate(
        storage,
        candidate,
        namespace=NS,
        name=NAME,
        tolerance=0.02,
        measured=lambda v: measured(v, scores.get(v)),
    )


def test_the_gate_logs_each_version_once_and_serves_the_promoted_one(storage):
    scores = {1: 0.6, 2: 0.3, 3: 0.61}
    decision, logged = gate(storage, measured(1, 0.6), scores)
    assert decision.promote and logged
    decision, logged = gate(storage, measured(2, 0.3), scores)
    assert not decision.promote and logged
    # a redelivered job: the same decision, nothing logged again
    again, logged = gate(storage, measured(2, 0.9), scores)
    assert again == decision and not logged

    state = promotion.read(storage, NS, NAME)
    assert state.promoted == 1 and state.previous == ()
    assert state.serving_version({1, 2}) == 1
    assert state.status(1)[0] == "promoted"
    status, reason = state.status(2)
    assert status == "candidate" and "below version 1's 0.6000" in reason
    assert [e["action"] for e in layout.read_promotion_log(storage, NS, NAME)] == [
        "gate-promoted",
        "gate-refused",
    ]

    decision, _ = gate(storage, measured(3, 0.61), scores)
    state = promotion.read(storage, NS, NAME)
    assert decision.promote and state.promoted == 3 and state.previous == (1,)
    # version 3 is not converted yet: the one promoted before it serves
    assert state.serving_version({1, 2}) == 1
    assert state.status(1) == ("previous", "promoted before the current version")


def test_promote_and_rollback_by_a_person(storage):
    gate(storage, measured(1, 0.6), {1: 0.6})
    gate(storage, measured(2, 0.1), {1: 0.6})
    state = promotion.promote(storage, NS, NAME, 2, by="alice", reason="looks better")
    assert state.promoted == 2 and state.previous == (1,)
    assert state.status(2) == ("promoted", "promoted by alice: looks better")
    entry = state.entries[-1]
    assert entry["by"] == "alice" and entry["from_version"] == 1 and entry["at"]

    # promoting the promoted version again logs nothing
    assert promotion.promote(storage, NS, NAME, 2, by="bob").seq == state.seq

    state = promotion.rollback(storage, NS, NAME, by="bob")
    assert state.promoted == 1 and state.previous == ()
    status, reason = state.status(2)
    assert status == "candidate" and reason.startswith("rolled-back by bob")
    with pytest.raises(FailedPrecondition, match="no earlier one to roll back to"):
        promotion.rollback(storage, NS, NAME, by="bob")


def test_promote_refuses_an_unfinished_version_and_rollback_an_ungated_model(storage):
    with pytest.raises(NotFound, match="no finished version 9; finished: 1, 2, 3"):
        promotion.promote(storage, NS, NAME, 9, by="alice")
    with pytest.raises(FailedPrecondition, match="no promoted version"):
        promotion.rollback(storage, NS, NAME, by="alice")
    assert layout.read_promotion_log(storage, NS, NAME) == []


def test_a_model_without_a_log_serves_its_newest_version(storage):
    state = promotion.read(storage, NS, NAME)
    assert state.serving_version({1, 2, 3}) == 3 and state.status(3) == ("", "")


def test_concurrent_changes_all_land_in_the_log(storage):
    gate(storage, measured(1, 0.6), {1: 0.6})
    errors = []

    def flip(version: int) -> None:
        try:
            for _ in range(5):
                promotion.promote(storage, NS, NAME, version, by=f"user{version}")
        except Exception as exc:  # collected for the assert below
            errors.append(exc)

    threads = [threading.Thread(target=flip, args=(v,)) for v in (2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    log = layout.read_promotion_log(storage, NS, NAME)
    assert [e["seq"] for e in log] == list(range(1, len(log) + 1))
    # each entry's state follows from the one before it: no change was lost
    for before, after in itertools.pairwise(log):
        if after["action"] == "promoted":
            assert after["from_version"] == before["promoted"]


def test_the_log_folders_are_not_versions(storage):
    gate(storage, measured(1, 0.6), {})
    layout.create_evaluation_set(storage, NS, NAME, {"id": "job-1", "files": []})
    assert layout.finished_versions(storage, NS, NAME) == [1, 2, 3]
    assert sorted(layout.version_folders(storage, NS, NAME)) == [1, 2, 3]
    assert layout.read_evaluation_set(storage, NS, NAME)["id"] == "job-1"
    assert not layout.create_evaluation_set(storage, NS, NAME, {"id": "job-2", "files": []})
