"""``preannotate dlq list|replay``: look at dead-lettered records and send them back.

    preannotate dlq list [TOPIC]                          every DLQ, or TOPIC's
    preannotate dlq replay <topic>.dlq --all [--dry-run]  every record not replayed yet
    preannotate dlq replay <topic>.dlq --offset 2:14 ...  chosen records (partition:offset)

A worker sends a record it could not process to ``<topic>.dlq`` with the
reason in its headers (``preannotate.bus.base.dlq_headers``). ``list`` prints,
per DLQ, its records: partition:offset, when it failed, whether it was
replayed, the key (the job id) and the reason. ``replay`` republishes the
chosen records, value, key and event headers unchanged (the ``dlq_*`` headers
dropped, ``dlq_replayed_from`` added), to the original topic (the DLQ's name
without ``.dlq``) through the product's bus, where the service's workers take
them as new records. A record that still does not decode as its topic's
message is left out (listed as undecodable) unless ``--force``.

What was replayed is kept in Kafka as the committed offsets of the consumer
group ``preannotate-dlq-replay`` (``REPLAY_GROUP``), one commit after each
record: per DLQ partition, the offset below which every record was replayed,
and in the commit's metadata the replayed offsets above it (``5-7,9``). So a
second ``replay --all`` skips what the first sent, and ``--offset`` skips a
record already replayed. Two operators replaying the same DLQ at the same time
are not guarded against.

These commands need the Kafka bus (the distributed mode): the embedded mode's
bus lives inside ``preannotate up``. Settings come from the environment as
for a service (``PREANNOTATE_KAFKA_BOOTSTRAP``, ``PREANNOTATE_KAFKA_TOPIC_PREFIX``,
security, ``PREANNOTATE_MACHINE_TYPES`` for the train.jobs DLQs). Exit codes:
0 done; 1 some chosen records were not replayed (undecodable without
``--force``); 2 bad arguments, or Kafka unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

from preannotate import events, topics
from preannotate.bus.base import DLQ_SUFFIX, Record
from preannotate.errors import BadEvent, PreannotateError
from preannotate.settings import ServiceSettings, load

#: The consumer group whose committed offsets say which DLQ records were replayed.
REPLAY_GROUP = "preannotate-dlq-replay"
#: Kafka refuses offset metadata past ``offset.metadata.max.bytes`` (4096 by default).
MAX_METADATA = 4000
OK, NOT_ALL, REFUSED = 0, 1, 2

REPLAY_HELP = f"""\
Republish records of a DLQ to the original topic (the DLQ's name without .dlq),
where the service takes them again. The records replayed are remembered as
committed offsets of the consumer group {REPLAY_GROUP!r}: a second
`replay --all` does not replay the same records twice, and --offset skips a
record replayed before. A record that does not decode is replayed only with
--force.
"""


class UsageError(PreannotateError):
    """A command line that names something that is not there."""


@dataclass(frozen=True)
class Entry:
    """One DLQ record as the commands show it."""

    record: Record
    replayed: bool
    #: Why the record cannot be replayed as it is; "" when it decodes.
    undecodable: str

    @property
    def where(self) -> str:
        return f"{self.record.partition}:{self.record.offset}"

    @property
    def failed_at(self) -> str:
        text = self.record.headers.get("dlq_failed_at", "")
        if text:
            return text.split(".")[0].replace("+00:00", "") + "Z"
        stamp = datetime.fromtimestamp(self.record.timestamp_ms / 1000, UTC)
        return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")

    @property
    def reason(self) -> str:
        return self.record.headers.get("dlq_error", "(no reason recorded)")


# --- which offsets were replayed: committed offset + metadata ----------------------


def parse_ranges(text: str) -> set[int]:
    """``"5-7,9"`` -> {5, 6, 7, 9}."""
    out: set[int] = set()
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        out.update(range(int(low), int(high or low) + 1))
    return out


def format_ranges(offsets: Iterable[int]) -> str:
    """{5, 6, 7, 9} -> ``"5-7,9"``."""
    runs: list[list[int]] = []
    for o in sorted(offsets):
        if runs and o == runs[-1][1] + 1:
            runs[-1][1] = o
        else:
            runs.append([o, o])
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in runs)


def replayed_set(committed: tuple[int, str] | None) -> tuple[int, set[int]]:
    """(offset below which all were replayed, replayed offsets at or above it)."""
    if committed is None:
        return 0, set()
    low, meta = committed
    return low, {o for o in parse_ranges(meta) if o >= low}


def to_commit(low: int, done: set[int], first: int) -> tuple[int, str]:
    """The (offset, metadata) that records ``done`` above ``low``; offsets below
    the partition's first record (``first``) are gone and count as done."""
    low = max(low, first)
    done = {o for o in done if o >= low}
    while low in done:
        done.discard(low)
        low += 1
    return low, format_ranges(done)


# --- reading the DLQ ---------------------------------------------------------------


def dlq_name(topic: str) -> str:
    """``task.annotated`` or ``task.annotated.dlq`` -> ``task.annotated.dlq``, checked."""
    name = topic if topic.endswith(DLQ_SUFFIX) else topic + DLQ_SUFFIX
    try:
        topics.message_type(name)
    except BadEvent as exc:
        raise UsageError(str(exc)) from None
    return name


def _undecodable(record: Record) -> str:
    try:
        events.decode(record)
    except BadEvent as exc:
        return str(exc)
    return ""


async def read_dlq(bus, dlq: str) -> list[Entry]:
    """Every record of ``dlq`` now, each marked replayed or not and decodable or not."""
    reader = bus.consumer([dlq], None)
    await reader.start()
    try:
        records = await reader.read_to_end()
    finally:
        await reader.stop()
    committed = await bus.committed(REPLAY_GROUP, dlq)
    out = []
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        low, done = replayed_set(committed.get(r.partition))
        out.append(Entry(r, r.offset < low or r.offset in done, _undecodable(r)))
    return out


async def existing_dlqs(bus, settings: ServiceSettings) -> list[str]:
    wanted = [t + DLQ_SUFFIX for t in topics.all_topics(sorted(settings.pools()))]
    found = await bus.partitions(wanted)
    return [t for t in wanted if t in found]


# --- the commands ------------------------------------------------------------------


async def list_async(settings: ServiceSettings, topic: str | None, out: TextIO) -> int:
    bus = _bus(settings)
    await bus.start()
    try:
        names = [dlq_name(topic)] if topic else await existing_dlqs(bus, settings)
        if topic and not await bus.partitions(names):
            raise UsageError(f"topic {names[0]!r} does not exist on {settings.kafka_bootstrap}")
        for name in names:
            entries = await read_dlq(bus, name)
            replayed = sum(e.replayed for e in entries)
            print(f"{name}: {len(entries)} records, {replayed} replayed", file=out)
            for e in entries:
                state = "replayed" if e.replayed else "undecodable" if e.undecodable else "new"
                print(
                    f"  {e.where:>8}  {e.failed_at}  {state:<11}  key={e.record.key or '-'}"
                    f"  {e.reason}",
                    file=out,
                )
    finally:
        await bus.stop()
    return OK


def pick(entries: Sequence[Entry], offsets: Sequence[str], every: bool) -> list[Entry]:
    """The entries ``--all`` or ``--offset`` names (``P:N``, or ``N`` when one
    partition has it)."""
    if every:
        return [e for e in entries if not e.replayed]
    chosen: list[Entry] = []
    for text in offsets:
        part, _, off = text.rpartition(":")
        if not off.isdigit() or (part and not part.isdigit()):
            raise UsageError(f"--offset {text!r}: write OFFSET or PARTITION:OFFSET, e.g. 0:14")
        hits = [
            e
            for e in entries
            if e.record.offset == int(off) and (not part or e.record.partition == int(part))
        ]
        if not hits:
            raise UsageError(f"--offset {text}: no such record; `preannotate dlq list` shows them")
        if len(hits) > 1:
            where = ", ".join(e.where for e in hits)
            raise UsageError(f"--offset {text} is in several partitions ({where}): write P:N")
        chosen.extend(e for e in hits if e not in chosen)
    return chosen


def replay_headers(record: Record, dlq: str) -> dict[str, str]:
    headers = {k: v for k, v in record.headers.items() if not k.startswith("dlq_")}
    headers["dlq_replayed_from"] = f"{dlq}[{record.partition}]@{record.offset}"
    return headers


async def replay_async(
    settings: ServiceSettings,
    dlq: str,
    offsets: Sequence[str],
    *,
    every: bool,
    dry_run: bool,
    force: bool,
    out: TextIO,
) -> int:
    dlq = dlq_name(dlq)
    target = dlq.removesuffix(DLQ_SUFFIX)
    bus = _bus(settings)
    await bus.start()
    code = OK
    try:
        parts = await bus.partitions([dlq, target])
        for name in (dlq, target):
            if name not in parts:
                raise UsageError(f"topic {name!r} does not exist on {settings.kafka_bootstrap}")
        entries = await read_dlq(bus, dlq)
        chosen = pick(entries, offsets, every)
        committed = await bus.committed(REPLAY_GROUP, dlq)
        first = {p: 0 for p in parts[dlq]}  # offsets below a partition's first record are gone
        for e in reversed(entries):
            first[e.record.partition] = e.record.offset
        sent = 0
        for e in chosen:
            if e.replayed:
                print(f"  {e.where}: replayed before; skipped", file=out)
                continue
            if e.undecodable and not force:
                print(f"  {e.where}: does not decode ({e.undecodable}); --force sends it", file=out)
                code = NOT_ALL
                continue
            if dry_run:
                print(f"  {e.where}: would replay key={e.record.key or '-'} to {target}", file=out)
                continue
            low, done = replayed_set(committed.get(e.record.partition))
            mark = to_commit(low, done | {e.record.offset}, first[e.record.partition])
            if len(mark[1]) > MAX_METADATA:
                raise UsageError(
                    f"too many scattered replayed offsets in {dlq}[{e.record.partition}] to"
                    " record; replay the older records first (--all)"
                )
            await bus.send(
                target, e.record.value, key=e.record.key, headers=replay_headers(e.record, dlq)
            )
            await bus.commit_offsets(REPLAY_GROUP, dlq, {e.record.partition: mark})
            committed[e.record.partition] = mark
            sent += 1
            print(f"  {e.where}: replayed key={e.record.key or '-'} to {target}", file=out)
        verb = "would replay" if dry_run else "replayed"
        count = sum(1 for e in chosen if not e.replayed and (force or not e.undecodable))
        print(f"{dlq}: {verb} {count if dry_run else sent} of {len(chosen)} chosen", file=out)
    finally:
        await bus.stop()
    return code


def _bus(settings: ServiceSettings):
    if settings.bus != "kafka":
        raise UsageError(
            "the DLQ commands need the Kafka bus (PREANNOTATE_BUS=kafka): the embedded mode's"
            " in-process bus lives inside `preannotate up` and ends with it"
        )
    from preannotate.bus.kafka import KafkaBus

    return KafkaBus(settings)


# --- wiring ------------------------------------------------------------------------


def add_arguments(_name: str, parser: argparse.ArgumentParser):
    sub = parser.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)
    lister = sub.add_parser("list", help="the records of every DLQ, or of one")
    lister.add_argument("topic", nargs="?", help="a topic or its DLQ, e.g. task.annotated.dlq")
    replay = sub.add_parser(
        "replay",
        help="republish DLQ records to their original topic",
        description=REPLAY_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    replay.add_argument("dlq", help="the DLQ, e.g. task.annotated.dlq")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--offset",
        action="append",
        default=[],
        metavar="[P:]N",
        help="a record to replay (repeatable): its offset, or partition:offset",
    )
    which.add_argument("--all", action="store_true", help="every record not replayed yet")
    replay.add_argument("--dry-run", action="store_true", help="show what would go; send nothing")
    replay.add_argument("--force", action="store_true", help="also send records that do not decode")
    return run


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        settings = load(ServiceSettings)
        if args.dlq_command == "list":
            return asyncio.run(list_async(settings, args.topic, out))
        return asyncio.run(
            replay_async(
                settings,
                args.dlq,
                args.offset,
                every=args.all,
                dry_run=args.dry_run,
                force=args.force,
                out=out,
            )
        )
    except PreannotateError as exc:  # UsageError, Unavailable
        print(f"error: {exc}", file=sys.stderr)
        return REFUSED
