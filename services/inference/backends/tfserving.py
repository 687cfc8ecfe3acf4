"""TF Serving over gRPC: ModelService to add models, PredictionService to run them.

``HandleReloadConfigRequest`` replaces TF Serving's whole model list, so every
reload names every model this service knows (``catalog()``), each with its
newest ``keep_versions`` versions (``specific`` version policy; older ones are
refused, and deploy/'s serving-sync keeps the same newest N in TF Serving's
mirror), never only the new one. Reloads are serialised; after one,
``GetModelStatus`` is polled until the version is AVAILABLE (or failed, or the
timeout passes). A Predict that finds the model
unknown (TF Serving restarted and lost the config) reloads once and retries.

Quarantine. TF Serving's reload blocks until the models new to its config
have loaded and fails the whole call (gRPC UNKNOWN) if one of them fails
(tests/standins/tfserving/README.md says where in its code), so one broken
SavedModel in storage would fail every later reload (after each TF Serving
restart every model is new). When a reload fails, each version it named is
asked for its status; those that ended with a load error are quarantined:
left out of every later config, reported (``quarantined``, ``describe()``,
the ``preannotate_inference_models_quarantined`` gauge, ``on_quarantine`` for
the registry) and refused with their load error, and the reload is sent again
without them, so the other models keep serving. A version seen failing in
``wait_available`` is quarantined the same way. Quarantine lasts until this
process restarts (a version folder does not change once published).

Only the ``*_pb2_grpc`` stubs and message modules of tensorflow-serving-api
are imported: ``prediction_service_pb2`` and ``model_service_pb2`` fail under
protobuf 7.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from preannotate.errors import FailedPrecondition, InvalidArgument, Unavailable
from services.inference import metrics
from services.inference.backends.base import (
    ImageInput,
    RawOutput,
    encoded_bytes,
    size_groups,
    split_outputs,
)
from services.inference.registry import ModelEntry

#: tensorflow.serving.ModelVersionStatus.State
AVAILABLE = 30
END = 50
_MAX_MESSAGE = 256 * 1024 * 1024


def served_name(namespace: str, name: str) -> str:
    """TF Serving's model name for namespace/name ('.' never appears in either)."""
    return f"{namespace}.{name}"


@dataclass(frozen=True)
class _Signature:
    name: str
    input_name: str
    takes_bytes: bool


class TfServingBackend:
    """Serves models through a TF Serving server."""

    name = "tfserving"

    def __init__(
        self,
        address: str,
        base_uri: Callable[[str], str],
        catalog: Callable[[], Sequence[ModelEntry]],
        load_timeout: float = 300.0,
        rpc_timeout: float = 60.0,
        input_mode: str = "encoded",
        concurrency: int = 1,
        poll_interval: float = 0.2,
        on_quarantine: Callable[[ModelEntry, str], None] | None = None,
        keep_versions: int | None = None,
        pinned: Callable[[], Iterable[tuple[str, str, int]]] | None = None,
    ) -> None:
        if input_mode not in ("encoded", "tensor"):
            raise InvalidArgument(f"input_mode must be 'encoded' or 'tensor', not {input_mode!r}")
        self.address = address
        self.base_uri = base_uri
        self.catalog = catalog
        self.load_timeout = load_timeout
        self.rpc_timeout = rpc_timeout
        self.input_mode = input_mode
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.on_quarantine = on_quarantine
        #: The newest versions of each model served (None: every one).
        self.keep_versions = keep_versions
        #: Versions kept loaded whatever their age (the promoted ones).
        self.pinned = pinned or (lambda: ())
        #: Versions that failed to load: (namespace, name, version) -> TF Serving's error.
        self.quarantined: dict[tuple[str, str, int], str] = {}
        self._channel: grpc.aio.Channel | None = None
        self._predict: Any = None
        self._models: Any = None
        self._reload_lock: asyncio.Lock | None = None
        self._slots: asyncio.Semaphore | None = None
        self._signatures: dict[tuple[str, int], _Signature] = {}
        #: Versions seen AVAILABLE (so a predict does not ask every time).
        self._available: set[tuple[str, str, int]] = set()
        self.reloads = 0

    async def start(self) -> None:
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        if self._channel is not None:
            return
        self._channel = grpc.aio.insecure_channel(
            self.address,
            options=[
                ("grpc.max_send_message_length", _MAX_MESSAGE),
                ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ],
        )
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._reload_lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(self.concurrency)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "address": self.address,
            "reloads": self.reloads,
            "quarantined": {"/".join(map(str, k)): why for k, why in self.quarantined.items()},
        }

    async def sync(self) -> None:
        if self.catalog():
            await self.reload()

    # -- ModelService ------------------------------------------------------------

    def served(self, extra: ModelEntry | None = None) -> list[ModelEntry]:
        """The versions a reload names: the newest ``keep_versions`` of each known
        model (``extra`` counted in), less the quarantined."""
        entries = {e.key: e for e in [*self.catalog(), *([extra] if extra else [])]}
        kept = self._newest(entries)
        return [e for k, e in sorted(entries.items()) if k in kept and k not in self.quarantined]

    def _newest(self, keys: Iterable[tuple[str, str, int]]) -> set[tuple[str, str, int]]:
        """Of ``keys``, the newest ``keep_versions`` versions of each model, and the
        pinned ones (the promoted version and the one before it, however old)."""
        keys = set(keys)
        by_model: dict[tuple[str, str], list[int]] = {}
        for namespace, name, version in keys:
            by_model.setdefault((namespace, name), []).append(version)
        limit = self.keep_versions
        newest = {
            (*model, v)
            for model, versions in by_model.items()
            for v in sorted(versions, reverse=True)[:limit]
        }
        return newest | (keys & set(self.pinned()))

    def model_config(self, extra: ModelEntry | None = None) -> Any:
        """The ModelServerConfig naming every served version (``served``)."""
        from tensorflow_serving.config import model_server_config_pb2

        versions: dict[tuple[str, str], set[int]] = {}
        base: dict[tuple[str, str], str] = {}
        for entry in self.served(extra):
            key = (entry.namespace, entry.name)
            versions.setdefault(key, set()).add(entry.version)
            base[key] = entry.base_path
        config = model_server_config_pb2.ModelServerConfig()
        config.model_config_list.SetInParent()  # an empty list is a config; no list is not
        for key in sorted(versions):
            item = config.model_config_list.config.add()
            item.name = served_name(*key)
            item.base_path = self.base_uri(base[key])
            item.model_platform = "tensorflow"
            item.model_version_policy.specific.versions.extend(sorted(versions[key]))
        return config

    def check_servable(self, model: ModelEntry) -> None:
        """``FailedPrecondition`` if ``model`` is older than the newest
        ``keep_versions`` of its model, or, with the load error, if it is quarantined."""
        if self.keep_versions is not None:
            known = {e.key for e in self.catalog()} | {model.key}
            if model.key not in self._newest(known):
                newer = sorted(v for ns, n, v in known if (ns, n) == model.key[:2])
                raise FailedPrecondition(
                    f"model {model.label} is older than the newest {self.keep_versions} "
                    f"versions TF Serving loads (versions {newer[-self.keep_versions :]}): "
                    f"ask for one of those, or raise PREANNOTATE_TFSERVING_KEEP_VERSIONS "
                    f"(and serving-sync's mirror with it)"
                )
        error = self.quarantined.get(model.key)
        if error is not None:
            raise FailedPrecondition(
                f"TF Serving could not load model {model.label}, so it is quarantined "
                f"(left out of TF Serving's config until the inference service restarts; "
                f"publish a new version to replace it): {error}"
            )

    def quarantine(self, model: ModelEntry, error: str) -> None:
        if model.key in self.quarantined:
            return
        self.quarantined[model.key] = error
        self._available.discard(model.key)
        metrics.MODELS_QUARANTINED.labels(self.name).set(len(self.quarantined))
        if self.on_quarantine is not None:
            self.on_quarantine(model, error)

    async def prepare(self, model: ModelEntry) -> None:
        self.check_servable(model)
        await self.start()
        await self.reload(model)
        self.check_servable(model)
        await self.wait_available(model)

    async def ensure(self, model: ModelEntry) -> None:
        """Make sure ``model`` is AVAILABLE before it is used: wait if TF Serving is
        loading it; add it to the config first if TF Serving does not know it."""
        if model.key in self._available:
            return
        self.check_servable(model)
        if await self.state(model) is None:
            await self.reload(model)
            self.check_servable(model)
        await self.wait_available(model)

    async def state(self, model: ModelEntry) -> int | None:
        """The version's state in TF Serving; None when TF Serving does not know it."""
        try:
            response = await self._models.GetModelStatus(
                self._status_request(model), timeout=self.rpc_timeout
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise self._error(exc, f"get the status of {model.label}") from exc
        states = {s.version: s.state for s in response.model_version_status}
        return states.get(model.version)

    def _status_request(self, model: ModelEntry) -> Any:
        from google.protobuf import wrappers_pb2
        from tensorflow_serving.apis import get_model_status_pb2, model_pb2

        return get_model_status_pb2.GetModelStatusRequest(
            model_spec=model_pb2.ModelSpec(
                name=served_name(model.namespace, model.name),
                version=wrappers_pb2.Int64Value(value=model.version),
            )
        )

    async def reload(self, extra: ModelEntry | None = None) -> None:
        """Send TF Serving the whole model list (every known model, plus ``extra``),
        quarantining the versions that fail to load (module doc)."""
        from tensorflow_serving.apis import model_management_pb2

        await self.start()
        assert self._reload_lock is not None
        async with self._reload_lock:
            while True:
                config = self.model_config(extra)
                request = model_management_pb2.ReloadConfigRequest(config=config)
                try:
                    response = await self._models.HandleReloadConfigRequest(
                        request, timeout=self.load_timeout
                    )
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                        what = f"model {extra.label}" if extra else "the models"
                        raise Unavailable(
                            f"{what} not AVAILABLE in TF Serving at {self.address} after "
                            f"{self.load_timeout:.0f} s (the reload was still loading)"
                        ) from exc
                    if exc.code() == grpc.StatusCode.UNKNOWN and await self._quarantine_failed(
                        self.served(extra), exc.details() or ""
                    ):
                        continue  # again, without the versions that failed
                    raise self._error(exc, "reload the model config") from exc
                if response.status.error_code != 0:  # older servers answered OK with it
                    raise FailedPrecondition(
                        f"TF Serving at {self.address} refused the model config: "
                        f"{response.status.error_message or response.status.error_code}"
                    )
                self.reloads += 1
                served = sum(len(c.model_version_policy.specific.versions)
                             for c in config.model_config_list.config)  # fmt: skip
                metrics.MODELS_LOADED.labels(self.name).set(served)
                return

    async def _quarantine_failed(self, entries: Sequence[ModelEntry], reload_error: str) -> bool:
        """After a failed reload: quarantine each of ``entries`` that TF Serving
        reports ended with a load error; whether any was."""
        found = False
        for entry in entries:
            try:
                response = await self._models.GetModelStatus(
                    self._status_request(entry), timeout=self.rpc_timeout
                )
            except grpc.aio.AioRpcError:
                continue  # not known (yet): not this one's fault
            for status in response.model_version_status:
                if (
                    status.version == entry.version
                    and status.state == END
                    and (status.status.error_code != 0)
                ):
                    self.quarantine(entry, status.status.error_message or reload_error)
                    found = True
        return found

    async def wait_available(self, model: ModelEntry) -> None:
        """Poll GetModelStatus until ``model`` is AVAILABLE; errors name why not."""
        await self.start()
        request = self._status_request(model)
        deadline = time.monotonic() + self.load_timeout
        last = "no status yet"
        while True:
            try:
                response = await self._models.GetModelStatus(request, timeout=self.rpc_timeout)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise self._error(exc, f"get the status of {model.label}") from exc
                last = exc.details() or "not found"
            else:
                states = {s.version: s for s in response.model_version_status}
                status = states.get(model.version)
                if status is not None:
                    if status.state == AVAILABLE:
                        self._available.add(model.key)
                        return
                    if status.state == END and status.status.error_code != 0:
                        self.quarantine(model, status.status.error_message)
                        self.check_servable(model)
                    last = f"state {status.state}"
            if time.monotonic() > deadline:
                raise Unavailable(
                    f"model {model.label} was not AVAILABLE in TF Serving at {self.address} "
                    f"after {self.load_timeout:.0f} s (last: {last})"
                )
            await asyncio.sleep(self.poll_interval)

    # -- PredictionService -------------------------------------------------------

    async def signature(self, model: ModelEntry) -> _Signature:
        """The signature to call, from GetModelMetadata (cached per version)."""
        from google.protobuf import wrappers_pb2
        from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2

        key = (served_name(model.namespace, model.name), model.version)
        if key in self._signatures:
            return self._signatures[key]
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=model_pb2.ModelSpec(
                name=key[0], version=wrappers_pb2.Int64Value(value=model.version)
            ),
            metadata_field=["signature_def"],
        )
        response = await self._call(
            self._predict.GetModelMetadata,
            request,
            f"read the signatures of {model.label}",
            not_served=True,
        )
        defs = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(defs)
        chosen = choose_signature(dict(defs.signature_def), self.input_mode, model.label)
        self._signatures[key] = chosen
        return chosen

    async def predict(self, model: ModelEntry, images: Sequence[ImageInput]) -> list[RawOutput]:
        if not images:
            return []
        await self.start()
        await self.ensure(model)
        try:
            return await self._predict_all(model, images)
        except _NotServed:
            # TF Serving lost it (a restart forgets a reloaded config): add it again, once.
            self._available.discard(model.key)
            self._signatures.pop((served_name(model.namespace, model.name), model.version), None)
            await self.prepare(model)
            return await self._predict_all(model, images)

    async def _predict_all(
        self, model: ModelEntry, images: Sequence[ImageInput]
    ) -> list[RawOutput]:
        signature = await self.signature(model)
        results: list[RawOutput | None] = [None] * len(images)
        for group in size_groups(images):
            batch = [images[i] for i in group]
            outputs = await self._predict_batch(model, signature, batch)
            for i, out in zip(group, split_outputs(outputs, len(group), model.label), strict=True):
                results[i] = out
        return [r for r in results if r is not None]

    async def _predict_batch(
        self, model: ModelEntry, signature: _Signature, batch: Sequence[ImageInput]
    ) -> dict[str, np.ndarray]:
        import tensorflow as tf
        from google.protobuf import wrappers_pb2
        from tensorflow_serving.apis import model_pb2, predict_pb2

        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(
                name=served_name(model.namespace, model.name),
                version=wrappers_pb2.Int64Value(value=model.version),
                signature_name=signature.name,
            )
        )
        if signature.takes_bytes:
            data = [encoded_bytes(img) for img in batch]
            tensor = tf.make_tensor_proto(data, dtype=tf.string, shape=[len(data)])
        else:
            tensor = tf.make_tensor_proto(np.stack([img.pixels for img in batch]))
        request.inputs[signature.input_name].CopyFrom(tensor)
        assert self._slots is not None
        async with self._slots:
            response = await self._call(
                self._predict.Predict, request, f"predict with {model.label}", not_served=True
            )
        return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}

    # -- errors --------------------------------------------------------------------

    async def _call(self, method, request, what: str, not_served: bool = False):
        try:
            return await method(request, timeout=self.rpc_timeout)
        except grpc.aio.AioRpcError as exc:
            if not_served and exc.code() in (
                grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.FAILED_PRECONDITION,
            ):
                raise _NotServed(exc.details()) from exc
            raise self._error(exc, what) from exc

    def _error(self, exc: grpc.aio.AioRpcError, what: str) -> Exception:
        text = f"TF Serving at {self.address} could not {what}: {exc.code().name} {exc.details()}"
        if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
            return InvalidArgument(text)
        if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
            return FailedPrecondition(text)
        return Unavailable(text)


class _NotServed(Exception):
    """TF Serving does not know the model (version) asked for."""


def choose_signature(defs: dict[str, Any], input_mode: str, label: str) -> _Signature:
    """Pick the signature for ``input_mode`` from SignatureDefs (falls back to the other)."""
    from tensorflow.core.framework import types_pb2

    by_kind: dict[bool, _Signature] = {}
    for name in sorted(defs, key=lambda n: (n != "serving_default", n)):
        inputs = dict(defs[name].inputs)
        if len(inputs) != 1:
            continue
        ((input_name, info),) = inputs.items()
        if info.dtype == types_pb2.DT_STRING:
            by_kind.setdefault(True, _Signature(name, input_name, True))
        elif info.dtype == types_pb2.DT_UINT8 and len(info.tensor_shape.dim) == 4:
            by_kind.setdefault(False, _Signature(name, input_name, False))
    want_bytes = input_mode == "encoded"
    chosen = by_kind.get(want_bytes) or by_kind.get(not want_bytes)
    if chosen is None:
        raise FailedPrecondition(
            f"model {label} has no image signature in TF Serving: expected one input of "
            f"string [-1] or uint8 [-1,-1,-1,3]; it has {sorted(defs)}"
        )
    return chosen
