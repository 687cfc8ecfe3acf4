"""A job's lease in storage: one worker holds a job at a time (fencing).

Each taking of the lease is a generation, one object per generation::

    <namespace>/jobs/<job_id>/lease/<generation, 10 digits>.json
        {"holder": "...", "generation": 3, "expires_at": 1733250000.0, "released": false}

The highest generation is the lease. A worker takes it by creating the next
generation with ``Storage.put_if_absent`` (of two takers exactly one creates
it), only when the current one is free: expired or released. The holder
rewrites its own generation object to push ``expires_at`` on (``renew``,
from ``LeaseKeeper``'s thread) and marks it released at the end. Nobody else
writes that object, and a taker writes a higher one, so a stale renewal is
harmless: the holder's next ``check`` sees the higher generation and raises
``LeaseLost``. Fenced writers (the trainer's checkpoint uploads and its
publish) call ``check`` before writing and write nothing once it raises.

Expiry is read from the wall clock of the taker; a holder renews every
``ttl / 3`` seconds, so clocks may drift by less than that. ``check`` before a
write narrows, and cannot close, the window in which a worker that stalled
longer than ``ttl`` writes once more: storage has no fenced write.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass

from preannotate.errors import Interrupted, NotFound, Unavailable
from preannotate.keys import job_prefix
from preannotate.storage import Storage

LEASE = "lease/"
_GENERATION = re.compile(r"^(\d{10})\.json$")


class LeaseLost(Interrupted):
    """Another worker holds this job's lease now; this one must write nothing more."""


@dataclass(frozen=True)
class LeaseState:
    """One generation of a job's lease, as stored."""

    holder: str
    generation: int
    expires_at: float
    released: bool = False

    def free(self, now: float) -> bool:
        return self.released or now >= self.expires_at


def lease_prefix(namespace: str, job_id: str) -> str:
    return job_prefix(namespace, job_id) + LEASE


def holder_id(service: str = "worker") -> str:
    """A holder name unique to one attempt: service, host, process and a random part."""
    return f"{service}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Lease:
    """This worker's hold on one job (blocking; async callers use ``asyncio.to_thread``)."""

    def __init__(
        self,
        storage: Storage,
        namespace: str,
        job_id: str,
        *,
        holder: str,
        ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"lease ttl must be positive, not {ttl}")
        self.storage, self.holder, self.ttl, self.clock = storage, holder, ttl, clock
        self.prefix = lease_prefix(namespace, job_id)
        self.job = f"{namespace}/{job_id}"
        #: The generation this worker took; None until it takes one.
        self.generation: int | None = None

    def _key(self, generation: int) -> str:
        return f"{self.prefix}{generation:010d}.json"

    def current(self) -> LeaseState | None:
        """The lease's highest generation, or None when nobody ever took it."""
        generations = []
        for key in self.storage.list(self.prefix):
            match = _GENERATION.match(key[len(self.prefix) :])
            if match:
                generations.append(int(match.group(1)))
        for generation in sorted(generations, reverse=True):
            try:
                return LeaseState(**json.loads(self.storage.get(self._key(generation))))
            except NotFound:  # deleted since the listing: look at the one below
                continue
        return None

    def _state(self, generation: int, *, released: bool = False) -> bytes:
        state = LeaseState(self.holder, generation, self.clock() + self.ttl, released)
        return json.dumps(asdict(state), sort_keys=True).encode()

    def try_acquire(self) -> bool:
        """Take the lease if it is free (or already this worker's); True when held now."""
        if self.held():
            self.renew()
            return True
        current = self.current()
        if current is not None and not current.free(self.clock()):
            return False
        generation = (current.generation if current else 0) + 1
        if not self.storage.put_if_absent(self._key(generation), self._state(generation)):
            return False  # another worker took this generation first
        self.generation = generation
        return True

    def acquire(
        self,
        *,
        wait: float,
        poll: float = 1.0,
        should_stop: Callable[[], bool] = lambda: False,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Take the lease, waiting up to ``wait`` seconds for its holder to let it go.

        ``Unavailable`` (retry later) when it stays held; ``Interrupted`` when
        ``should_stop`` says so while waiting.
        """
        deadline = self.clock() + wait
        while not self.try_acquire():
            if should_stop():
                raise Interrupted(f"stopped while waiting for the lease of job {self.job}")
            if self.clock() >= deadline:
                current = self.current()
                holder = f" by {current.holder}" if current else ""
                raise Unavailable(f"job {self.job} is held{holder}: its lease is not free")
            sleep(poll)

    def held(self) -> bool:
        """Whether this worker's generation is still the lease's highest."""
        if self.generation is None:
            return False
        current = self.current()
        return (
            current is not None
            and current.generation == self.generation
            and current.holder == self.holder
        )

    def check(self) -> None:
        """Raise ``LeaseLost`` unless this worker still holds the lease (call before a write)."""
        if not self.held():
            raise LeaseLost(
                f"job {self.job}: this worker's lease (generation {self.generation}) was taken"
                " over; writing nothing more"
            )

    def renew(self) -> None:
        """Push the expiry on by ``ttl``; ``LeaseLost`` when another worker took the lease."""
        self.check()
        self.storage.put(self._key(self.generation), self._state(self.generation))

    def release(self) -> None:
        """Let the lease go now, if this worker still holds it."""
        if self.held():
            self.storage.put(
                self._key(self.generation), self._state(self.generation, released=True)
            )


class LeaseKeeper:
    """Renews a held lease every ``ttl / 3`` seconds in a thread until ``stop``.

    ``lost`` turns True once a renewal finds another worker's generation (the
    trainer then stops at its next step, as on shutdown). A renewal that
    storage refuses is tried again at the next tick; the fenced writes'
    own ``check`` decides.
    """

    def __init__(self, lease: Lease, *, every: float | None = None) -> None:
        self.lease = lease
        self.every = every if every is not None else lease.ttl / 3
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{lease.job}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.lease.renew()
            except LeaseLost:
                self.lost = True
                return
            except Exception:  # storage refused this tick: the next one tries again
                continue

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
