"""The models this service can serve, keyed by namespace / name / version.

Filled from ``model.converted`` events and, at start, from the serving
manifests in storage (``<namespace>/serving/<name>/<version>/manifest.json``,
found with ``preannotate.layout``), so a restarted service knows its models.
Version 0 in a lookup means the newest version. A failed lookup first looks in
storage again (another replica may have taken the event), then answers with
what exists.

Version 0 (and ``latest``, the Nuclio function list) means the serving
version: the model's promoted version (``preannotate.promotion``, read from
storage at most every ``promotion_ttl`` seconds by lookups, on every call by
``refresh_promotions(force=True)``), or the version promoted before it while
the promoted one is not servable here; a model that has never been through
the promotion gate serves its newest version. Other versions (candidates)
are served only when asked for by number.

A version the serving backend could not load is quarantined (``quarantine``,
called by the TF Serving backend): it stays known but is left out of the
listings (``entries``, ``latest``, so ListModels shows servable models only),
the newest-version lookup passes over it, and a lookup of that version fails
with its load error; ``quarantined`` lists them with why.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from preannotate import keys, layout, promotion
from preannotate.classes import parse_classes
from preannotate.errors import FailedPrecondition, InvalidArgument, NotFound
from preannotate.promotion import PromotionState
from preannotate.storage import MANIFEST, Storage, read_manifest
from preannotate.v1 import common_pb2, events_pb2

CLASSES_ASSET = "assets/classes.csv"
#: Default seconds a model's promotion state is trusted before a lookup reads it again.
PROMOTION_TTL_SECONDS = 5.0


@dataclass(frozen=True)
class ModelEntry:
    """One servable model version and what the service knows about it."""

    namespace: str
    name: str
    version: int
    classes: tuple[str, ...]
    model_type: str = ""
    has_masks: bool = False
    input_size: int = 0
    signatures: tuple[str, ...] = ()
    metrics: Mapping[str, float] = field(default_factory=dict)
    job_id: str = ""
    created_at: str = ""
    #: True / False when the manifest says whether detection_boxes are
    #: normalised; None: decided from the outputs (see postprocess).
    boxes_normalized: bool | None = None

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.namespace, self.name, self.version)

    @property
    def ref(self) -> common_pb2.ModelRef:
        return common_pb2.ModelRef(namespace=self.namespace, name=self.name, version=self.version)

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.name}/{self.version}"

    @property
    def serving_prefix(self) -> str:
        """Storage prefix of the SavedModel: ``<ns>/serving/<name>/<version>/``."""
        return keys.serving_prefix(self.namespace, self.name, self.version)

    @property
    def base_path(self) -> str:
        """TF Serving's base_path (as a storage key): ``<ns>/serving/<name>``."""
        return keys.serving_base(self.namespace, self.name)

    def class_name(self, class_id: int) -> str:
        """The name of model class ``class_id`` (1..K); ``class-<id>`` outside the list."""
        if 1 <= class_id <= len(self.classes):
            return self.classes[class_id - 1]
        return f"class-{class_id}"

    def to_proto(self) -> common_pb2.Model:
        model = common_pb2.Model(
            ref=self.ref,
            model_type=self.model_type,
            classes=list(self.classes),
            metrics=dict(self.metrics),
            serving_path=self.serving_prefix,
            job_id=self.job_id,
            input_size=self.input_size,
        )
        if self.created_at:
            # Not a timestamp: left unset rather than failing a listing.
            with contextlib.suppress(ValueError):
                model.created_at.FromJsonString(_rfc3339(self.created_at))
        return model


def _rfc3339(text: str) -> str:
    return text.replace("+00:00", "Z") if text.endswith("+00:00") else text


def entry_from_event(msg: events_pb2.ModelConverted, *, default_namespace: str) -> ModelEntry:
    """A ``ModelEntry`` from a ``model.converted`` event; ``InvalidArgument`` if it is unusable.
    An event that names no namespace is of the service's (``default_namespace``)."""
    namespace = keys.check_name(
        msg.namespace or msg.model.namespace or default_namespace, "namespace"
    )
    name = keys.check_name(msg.model.name, "model name")
    version = keys.check_version(int(msg.model.version))
    expected = keys.serving_prefix(namespace, name, version)
    if msg.serving_path and msg.serving_path.rstrip("/") + "/" != expected:
        raise InvalidArgument(
            f"model.converted for {namespace}/{name}/{version} names serving_path "
            f"{msg.serving_path!r}; this service reads models from {expected!r}"
        )
    if not msg.classes:
        raise InvalidArgument(f"model.converted for {namespace}/{name}/{version} lists no classes")
    return ModelEntry(
        namespace=namespace,
        name=name,
        version=version,
        classes=tuple(msg.classes),
        model_type=msg.model_type,
        has_masks=msg.has_masks,
        input_size=msg.input_size,
        signatures=tuple(msg.signatures),
        metrics=dict(msg.metrics),
        job_id=msg.job_id,
    )


def entry_from_manifest(
    namespace: str, name: str, version: int, manifest: Mapping[str, Any], storage: Storage
) -> ModelEntry:
    """A ``ModelEntry`` from a serving manifest, as the converter writes it.

    Read: ``classes`` (else assets/classes.csv), ``model_type``, ``has_masks``,
    ``input_size`` ([h, w] or a number), ``signature_names`` (or a
    ``signatures`` list), ``metrics``, ``job_id``, ``created_at``, and whether
    boxes are normalised (``boxes_normalized``, or a ``boxes`` text that starts
    with "normalised"). A value of the wrong kind is ``InvalidArgument``.
    """
    prefix = keys.serving_prefix(namespace, name, version)
    try:
        classes = manifest.get("classes")
        if not classes:
            try:
                classes = parse_classes(storage.get(keys.join(prefix, CLASSES_ASSET)))
            except NotFound:
                classes = ()
        if not classes:
            raise InvalidArgument(
                f"serving model {prefix} has no classes: neither its manifest nor {CLASSES_ASSET}"
            )
        size = manifest.get("input_size") or 0
        names = manifest.get("signature_names")
        if names is None:
            listed = manifest.get("signatures") or ()
            names = list(listed) if isinstance(listed, list | dict) else []
        boxes = manifest.get("boxes_normalized")
        if boxes is None and isinstance(manifest.get("boxes"), str):
            boxes = manifest["boxes"].lower().startswith(("normalised", "normalized")) or None
        return ModelEntry(
            namespace=namespace,
            name=name,
            version=version,
            classes=tuple(str(c) for c in classes),
            model_type=str(manifest.get("model_type", "")),
            has_masks=bool(manifest.get("has_masks", False)),
            input_size=int(max(size) if isinstance(size, list | tuple) else size),
            signatures=tuple(str(n) for n in names),
            metrics={str(k): float(v) for k, v in (manifest.get("metrics") or {}).items()},
            job_id=str(manifest.get("job_id", "")),
            created_at=str(manifest.get("created_at", "")),
            boxes_normalized=None if boxes is None else bool(boxes),
        )
    except (TypeError, ValueError, AttributeError) as exc:
        raise InvalidArgument(f"serving manifest of {prefix} is not usable: {exc}") from exc


class ModelRegistry:
    """Known model versions. Not thread-safe: use it from the event loop."""

    def __init__(
        self,
        storage: Storage | None = None,
        log: Any = None,
        *,
        promotion_ttl: float = PROMOTION_TTL_SECONDS,
    ) -> None:
        self.storage = storage
        self.log = log
        #: Seconds a model's promotion state read from storage is used before it is
        #: read again by a version-0 lookup (the Nuclio listing always reads it).
        self.promotion_ttl = promotion_ttl
        self._promotions: dict[tuple[str, str], tuple[float, PromotionState]] = {}
        self._entries: dict[tuple[str, str, int], ModelEntry] = {}
        #: Manifests that could not be read, with why (shown by failed lookups).
        self.broken: dict[str, str] = {}
        #: Versions the backend could not load: key -> its error (see ``quarantine``).
        self.quarantined: dict[tuple[str, str, int], str] = {}

    def quarantine(self, entry: ModelEntry, error: str) -> None:
        """Leave ``entry`` out of listings and newest-version lookups (module doc)."""
        self.quarantined[entry.key] = error
        if self.log is not None:
            self.log.error("model quarantined: it failed to load", model=entry.label, error=error)

    def add(self, entry: ModelEntry) -> bool:
        """Register ``entry``; False when that version was known already (kept as it was)."""
        if entry.key in self._entries:
            return False
        self._entries[entry.key] = entry
        return True

    def entries(self, namespace: str | None = None) -> list[ModelEntry]:
        """Every servable version (of ``namespace``; quarantined ones left out),
        sorted by namespace, name, version."""
        out = [
            e
            for e in self._entries.values()
            if namespace in (None, "", e.namespace) and e.key not in self.quarantined
        ]
        return sorted(out, key=lambda e: e.key)

    def latest(self, namespace: str | None = None) -> list[ModelEntry]:
        """The serving version of every model (of ``namespace``): see ``get``."""
        models = {(e.namespace, e.name) for e in self.entries(namespace)}
        found = (self.get(ns, name) for ns, name in sorted(models))
        return [e for e in found if e is not None]

    def get(self, namespace: str, name: str, version: int = 0) -> ModelEntry | None:
        """That version (quarantined or not); version 0: the serving one, not quarantined:
        the promoted version (``preannotate.promotion``; the one promoted before it while
        it is not servable here), or the newest of a model never gated."""
        if version:
            return self._entries.get((namespace, name, version))
        versions = {
            k[2]: e
            for k, e in self._entries.items()
            if k[:2] == (namespace, name) and k not in self.quarantined
        }
        known = self._promotions.get((namespace, name))
        state = known[1] if known else PromotionState(namespace, name)
        chosen = state.serving_version(versions)
        return None if chosen is None else versions[chosen]

    def pinned(self) -> set[tuple[str, str, int]]:
        """Every model's versions that must stay loaded (``PromotionState.pinned``),
        as of the promotion states read last."""
        return {
            (ns, name, v)
            for (ns, name), (_, state) in self._promotions.items()
            for v in state.pinned()
        }

    async def refresh_promotions(
        self, namespace: str | None = None, name: str | None = None, *, force: bool = False
    ) -> None:
        """Read the promotion state of the known models (of ``namespace``, or one model)
        from storage: those read more than ``promotion_ttl`` seconds ago, or all with
        ``force``."""
        if self.storage is None:
            return
        now = time.monotonic()
        wanted = {
            (e.namespace, e.name)
            for e in self._entries.values()
            if namespace in (None, e.namespace) and name in (None, e.name)
        }
        stale = [
            key
            for key in sorted(wanted)
            if force
            or key not in self._promotions
            or now - self._promotions[key][0] > self.promotion_ttl
        ]
        if stale:
            states = await asyncio.to_thread(self._read_promotions, stale)
            for key, state in zip(stale, states, strict=True):
                self._promotions[key] = (now, state)

    def _read_promotions(self, wanted: list[tuple[str, str]]) -> list[PromotionState]:
        """Each model's state; an unreadable log keeps the state read before (logged)."""
        assert self.storage is not None
        out = []
        for ns, name in wanted:
            try:
                out.append(promotion.read(self.storage, ns, name))
            except FailedPrecondition as exc:
                known = self._promotions.get((ns, name))
                out.append(known[1] if known else PromotionState(ns, name))
                if self.log is not None:
                    self.log.error("promotion log unreadable", model=f"{ns}/{name}", error=str(exc))
        return out

    async def resolve(self, namespace: str, name: str, version: int = 0) -> ModelEntry:
        """The entry for namespace/name/version (0: newest); looks in storage on a miss."""
        keys.check_name(namespace, "namespace")
        keys.check_name(name, "model name")
        if version < 0:
            raise InvalidArgument(f"version {version} is not allowed: use 0 (newest) or 1 and up")
        if not version:
            await self.refresh_promotions(namespace, name)
        entry = self.get(namespace, name, version)
        if entry is None and self.storage is not None:
            await self.refresh(namespace, name)
            if not version:
                await self.refresh_promotions(namespace, name, force=True)
            entry = self.get(namespace, name, version)
        if entry is not None and entry.key in self.quarantined:
            raise FailedPrecondition(
                f"model {entry.label} failed to load and is quarantined: "
                f"{self.quarantined[entry.key]}"
            )
        if entry is None:
            known = [e.label for e in self.entries(namespace)]
            wanted = f"{namespace}/{name}" + (f"/{version}" if version else "")
            bad = ["/".join(map(str, k)) for k in sorted(self.quarantined) if k[0] == namespace]
            raise NotFound(
                f"no ready model {wanted}; ready models in namespace {namespace!r}: "
                + (", ".join(known) if known else "none")
                + (f"; quarantined (failed to load): {', '.join(bad)}" if bad else "")
            )
        return entry

    async def refresh(self, namespace: str | None = None, name: str | None = None) -> int:
        """Read serving manifests from storage (all, one namespace, or one model);
        returns how many versions were new."""
        if self.storage is None:
            return 0
        if not namespace:
            namespace, name = None, None
        found = await asyncio.to_thread(self._scan, namespace, name or None)
        return sum(self.add(e) for e in found)

    def _scan(self, namespace: str | None, name: str | None) -> list[ModelEntry]:
        assert self.storage is not None
        out = []
        for place in layout.finished(self.storage, namespace, name, area=layout.SERVING):
            if (place.namespace, place.name, place.version) in self._entries:
                continue
            try:
                manifest = read_manifest(self.storage, place.prefix)
                if manifest is None:
                    continue
                out.append(
                    entry_from_manifest(
                        place.namespace, place.name, place.version, manifest, self.storage
                    )
                )
            except InvalidArgument as exc:
                key = place.prefix + MANIFEST
                self.broken[key] = str(exc)
                if self.log is not None:
                    self.log.warning("serving manifest skipped", key=key, error=str(exc))
        return out
