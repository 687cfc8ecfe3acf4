"""A job's lease (``preannotate.lease``) on the local folder and moto's S3 server:
acquire, renew, expire, take over with a higher generation, release."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from preannotate.errors import Interrupted, Unavailable
from preannotate.lease import Lease, LeaseKeeper, LeaseLost, lease_prefix

TTL = 30.0


@pytest.fixture(params=["local", "s3"])
def storage(request):
    return request.getfixturevalue(f"{request.param}_storage")


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _lease(storage, holder, clock, job_id="job-1"):
    return Lease(storage, "default", job_id, holder=holder, ttl=TTL, clock=clock)


def test_a_held_lease_is_refused_to_others_until_it_expires(storage):
    clock = Clock()
    a, b = _lease(storage, "a", clock), _lease(storage, "b", clock)
    assert a.try_acquire() and a.generation == 1
    assert not b.try_acquire() and b.generation is None
    with pytest.raises(Unavailable, match="job default/job-1 is held by a"):
        b.acquire(wait=0)
    a.check()  # still a's
    assert storage.list(lease_prefix("default", "job-1")) == [
        "default/jobs/job-1/lease/0000000001.json"
    ]


def test_renewal_keeps_the_lease_past_its_first_expiry(storage):
    clock = Clock()
    a, b = _lease(storage, "a", clock), _lease(storage, "b", clock)
    a.try_acquire()
    clock.now += TTL * 0.6
    a.renew()
    clock.now += TTL * 0.6  # past the first expiry, within the renewed one
    assert not b.try_acquire()
    a.check()


def test_an_expired_lease_is_taken_with_the_next_generation_and_the_old_holder_is_fenced(storage):
    clock = Clock()
    a, b = _lease(storage, "a", clock), _lease(storage, "b", clock)
    a.try_acquire()
    clock.now += TTL + 1  # a stalled: no renewal
    assert b.try_acquire() and b.generation == 2
    assert not a.held()
    with pytest.raises(LeaseLost, match="generation 1"):
        a.check()
    with pytest.raises(LeaseLost):
        a.renew()  # a late renewal writes nothing
    a.release()  # nor does a late release
    current = a.current()
    assert (current.holder, current.generation, current.released) == ("b", 2, False)
    assert not a.try_acquire()  # b's generation is live


def test_a_released_lease_is_free_at_once(storage):
    clock = Clock()
    a, b = _lease(storage, "a", clock), _lease(storage, "b", clock)
    a.try_acquire()
    assert a.try_acquire() and a.generation == 1  # taking it again is a renewal
    a.release()
    assert b.try_acquire() and b.generation == 2
    assert _lease(storage, "c", clock, job_id="job-2").try_acquire()  # leases are per job


def test_of_concurrent_takers_exactly_one_holds(storage):
    clock = Clock()
    leases = [_lease(storage, f"w{i}", clock) for i in range(6)]
    barrier = threading.Barrier(len(leases))

    def take(lease):
        barrier.wait()
        return lease.try_acquire()

    with ThreadPoolExecutor(len(leases)) as pool:
        took = list(pool.map(take, leases))
    assert took.count(True) == 1
    assert [lease.held() for lease in leases] == took


def test_waiting_for_a_lease_stops_on_request(local_storage):
    clock = Clock()
    _lease(local_storage, "a", clock).try_acquire()
    b = _lease(local_storage, "b", clock)
    with pytest.raises(Interrupted, match="waiting for the lease"):
        b.acquire(wait=60, should_stop=lambda: True, sleep=lambda _: None)
    waits: list[float] = []

    def sleep(seconds):  # the holder's lease runs out while b waits
        waits.append(seconds)
        clock.now += TTL / 2

    b.acquire(wait=2 * TTL, poll=1.0, sleep=sleep)
    assert b.generation == 2 and waits == [1.0, 1.0]  # free at its expiry


def test_the_keeper_renews_and_sees_a_takeover(local_storage):
    clock = Clock()
    a = _lease(local_storage, "a", clock)
    a.try_acquire()
    with LeaseKeeper(a, every=0.01) as keeper:
        _wait_for(lambda: a.current().expires_at > 1_000.0 + TTL or _tick(clock))
        assert not keeper.lost
        late = Lease(local_storage, "default", "job-1", holder="b", ttl=TTL, clock=lambda: 1e12)
        assert late.try_acquire() and late.generation == 2
        _wait_for(lambda: keeper.lost)
    assert late.held()


def _tick(clock: Clock) -> bool:
    clock.now += 1
    return False


def _wait_for(condition, limit: int = 2_000) -> None:
    event = threading.Event()
    for _ in range(limit):
        if condition():
            return
        event.wait(0.005)
    raise AssertionError("condition never held")
