"""``TfServingStandIn``: a grpc.aio server speaking TF Serving's gRPC API over real SavedModels.

Services, with tensorflow-serving-api's own request and response messages:

- ``tensorflow.serving.ModelService``: ``HandleReloadConfigRequest`` (a
  ``model_config_list``; it *replaces* the config: models left out are
  unloaded) and ``GetModelStatus``.
- ``tensorflow.serving.PredictionService``: ``Predict`` and
  ``GetModelMetadata`` (``signature_def``).

As TF Serving does, each configured model's ``base_path`` holds integer
version folders (``<base_path>/<version>/saved_model.pb``); the version policy
is ``latest`` (one, by default), ``all`` or ``specific``. Base paths are local
folders (or ``file://`` URIs). The folders are polled, so a version that
appears after the reload is picked up. Versions load in the background
(START, LOADING, AVAILABLE; a failed load ends in END with the error); new
versions are loaded before unwanted ones are unloaded.

A reload blocks as the real one does (README.md beside this file says where
in TF Serving's code): reloads are serialised; the new config is applied at
once (models left out unloaded, new ones start loading), then the call waits
until the awaited models' versions are AVAILABLE or failed: every model of the
first config after a start, and after that the models whose names are new to
the config. If one failed, the whole call fails with gRPC ``UNKNOWN`` and
"N model(s) did not become available: {{{name: ... version: N} due to
error: ...}, }", while the config stays applied (the other models keep loading and
serving). Invalid configs fail with ``INVALID_ARGUMENT`` before anything
changes.

Test hooks: ``calls`` counts requests per method, ``predict_batches`` records
each Predict's batch size, ``restart()`` forgets config and models as a
restarted TF Serving would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

START, LOADING, AVAILABLE, UNLOADING, END = 10, 20, 30, 40, 50
#: tensorflow.error.Code values used in StatusProto.
OK, INVALID_ARGUMENT, NOT_FOUND, UNKNOWN = 0, 3, 5, 2
_GRPC_CODES = {
    INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    UNKNOWN: grpc.StatusCode.UNKNOWN,
}


@dataclass
class _Version:
    number: int
    path: Path
    state: int = START
    error: str = ""
    loaded: Any = None
    signature_defs: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Model:
    config: Any  # ModelConfig
    versions: dict[int, _Version] = field(default_factory=dict)


def _local_path(base_path: str) -> Path | None:
    if base_path.startswith("file://"):
        return Path(urlsplit(base_path).path)
    if "://" in base_path:
        return None
    return Path(base_path)


class TfServingStandIn:
    """TF Serving's gRPC API on 127.0.0.1 with a free port."""

    def __init__(self, poll_seconds: float = 0.2, load_delay: float = 0.0) -> None:
        self.poll_seconds = poll_seconds
        #: Extra seconds each load takes (to test waiting for AVAILABLE).
        self.load_delay = load_delay
        self.models: dict[str, _Model] = {}
        self.calls: Counter[str] = Counter()
        self.predict_batches: list[tuple[str, int, int]] = []
        self.configs: list[Any] = []
        self.address = ""
        self._server: grpc.aio.Server | None = None
        self._poller: asyncio.Task | None = None
        self._load_lock = asyncio.Lock()
        self._loads: set[asyncio.Task] = set()
        #: ServerCore's config_mu_: one reload at a time, held while it waits.
        self._reload_lock = asyncio.Lock()
        #: Whether a config was applied since the start (the first one waits for all).
        self._configured = False

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> str:
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", 256 * 1024 * 1024),
                ("grpc.max_send_message_length", 256 * 1024 * 1024),
            ]
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelService(self), server)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            _PredictionService(self), server
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._server = server
        self.address = f"127.0.0.1:{port}"
        self._poller = asyncio.create_task(self._poll())
        return self.address

    async def stop(self) -> None:
        for task in [*self._loads, *([self._poller] if self._poller else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            await self._server.stop(0.5)
            self._server = None

    async def __aenter__(self) -> TfServingStandIn:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def restart(self) -> None:
        """Forget the config and every model, as a restarted TF Serving would."""
        self.models.clear()
        self._configured = False

    # -- config ----------------------------------------------------------------------

    async def reload(self, config: Any) -> tuple[int, str]:
        """Apply a ModelServerConfig and wait for the awaited models (module doc);
        (error code, message)."""
        async with self._reload_lock:
            code, message = self._validate(config)
            if code != OK:
                return code, message
            awaited = self._apply(config)
            return await self._wait_loaded(awaited)

    def _validate(self, config: Any) -> tuple[int, str]:
        if config.WhichOneof("config") != "model_config_list":
            return INVALID_ARGUMENT, "the stand-in takes a model_config_list only"
        names = [c.name for c in config.model_config_list.config]
        if len(names) != len(set(names)):
            return INVALID_ARGUMENT, f"model names must be unique, got {names}"
        for item in config.model_config_list.config:
            if not item.name or not item.base_path:
                return INVALID_ARGUMENT, "every model needs a name and a base_path"
            if item.model_platform not in ("", "tensorflow"):
                return INVALID_ARGUMENT, f"model platform {item.model_platform!r} is not served"
        return OK, ""

    def _apply(self, config: Any) -> list[str]:
        """Replace the config; the names of the models the reload waits for."""
        self.configs.append(config)
        wanted = {c.name: c for c in config.model_config_list.config}
        awaited = [n for n in wanted if not self._configured or n not in self.models]
        self._configured = True
        for name in list(self.models):
            if name not in wanted:
                self._unload_model(name)
        for name, item in wanted.items():
            model = self.models.get(name)
            if model is None or model.config.base_path != item.base_path:
                if model is not None:
                    self._unload_model(name)
                self.models[name] = _Model(config=item)
            else:
                model.config = item
        self._sync()
        return awaited

    async def _wait_loaded(self, names: list[str]) -> tuple[int, str]:
        """Wait until every wanted version of ``names`` is AVAILABLE or END (a model
        with no version on disk is not waited for); UNKNOWN naming those that failed."""
        while True:
            pending, failed = False, []
            for name in names:
                model = self.models.get(name)
                if model is None:
                    continue
                desired, _problem = self._desired(model)
                for number in sorted(desired):
                    version = model.versions.get(number)
                    if version is None or version.state not in (AVAILABLE, END):
                        pending = True
                    elif version.state == END and version.error:
                        failed.append(
                            f"{{name: {name} version: {number}}} due to error: {version.error}"
                        )
            if not pending:
                break
            await asyncio.sleep(0.02)
        if failed:
            listed = "".join(f"{{{item}}}, " for item in failed)
            return UNKNOWN, f"{len(failed)} model(s) did not become available: {{{listed}}}"
        return OK, ""

    def _unload_model(self, name: str) -> None:
        model = self.models.pop(name)
        for version in model.versions.values():
            version.loaded, version.state = None, END

    def _desired(self, model: _Model) -> tuple[set[int], str]:
        base = _local_path(model.config.base_path)
        if base is None:
            return set(), f"the stand-in reads local base paths only, not {model.config.base_path}"
        found = sorted(
            int(p.name)
            for p in base.glob("*")
            if p.name.isdigit() and (p / "saved_model.pb").is_file()
        ) if base.is_dir() else []  # fmt: skip
        policy = model.config.model_version_policy
        kind = policy.WhichOneof("policy_choice")
        if kind == "all":
            return set(found), ""
        if kind == "specific":
            return set(policy.specific.versions) & set(found), ""
        count = policy.latest.num_versions if kind == "latest" else 1
        return set(found[-max(count, 1) :]), ""

    def _sync(self) -> None:
        for model in self.models.values():
            desired, _problem = self._desired(model)
            base = _local_path(model.config.base_path)
            for number in desired:
                if number not in model.versions and base is not None:
                    version = _Version(number, base / str(number))
                    model.versions[number] = version
                    task = asyncio.get_running_loop().create_task(self._load(version))
                    self._loads.add(task)
                    task.add_done_callback(self._loads.discard)
            settled = all(
                model.versions[n].state in (AVAILABLE, END) for n in desired if n in model.versions
            )
            if settled:
                for number, version in model.versions.items():
                    if number not in desired and version.state == AVAILABLE:
                        version.loaded, version.state = None, END

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            self._sync()

    async def _load(self, version: _Version) -> None:
        import tensorflow as tf
        from tensorflow.core.protobuf import saved_model_pb2

        async with self._load_lock:
            version.state = LOADING
            if self.load_delay:
                await asyncio.sleep(self.load_delay)

            def load() -> tuple[Any, dict[str, Any]]:
                meta = saved_model_pb2.SavedModel()
                meta.ParseFromString((version.path / "saved_model.pb").read_bytes())
                defs = dict(meta.meta_graphs[0].signature_def)
                return tf.saved_model.load(str(version.path)), defs

            try:
                version.loaded, version.signature_defs = await asyncio.to_thread(load)
            except Exception as exc:
                version.state, version.error = END, f"{type(exc).__name__}: {exc}"
                return
            if version.state == LOADING:
                version.state = AVAILABLE

    # -- lookups ---------------------------------------------------------------------

    def servable(self, spec: Any) -> tuple[_Model, _Version]:
        """The AVAILABLE version a ModelSpec names (latest when it names none)."""
        model = self.models.get(spec.name)
        wanted = spec.version.value if spec.HasField("version") else None
        label = f"Specific({spec.name}, {wanted})" if wanted else f"Latest({spec.name})"
        if model is not None:
            ready = {n: v for n, v in model.versions.items() if v.state == AVAILABLE}
            if wanted is None and ready:
                return model, ready[max(ready)]
            if wanted in ready:
                return model, ready[wanted]
        raise LookupError(f"Servable not found for request: {label}")


class _ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, owner: TfServingStandIn) -> None:
        self.owner = owner

    async def HandleReloadConfigRequest(self, request, context):
        # ModelServiceImpl: the status goes in the response *and* is the call's
        # gRPC status, so a failed reload is an RPC error to the client.
        self.owner.calls["HandleReloadConfigRequest"] += 1
        code, message = await self.owner.reload(request.config)
        if code != OK:
            await context.abort(_GRPC_CODES[code], message)
        response = model_management_pb2.ReloadConfigResponse()
        response.status.error_code = code
        response.status.error_message = message
        return response

    async def GetModelStatus(self, request, context):
        self.owner.calls["GetModelStatus"] += 1
        spec = request.model_spec
        model = self.owner.models.get(spec.name)
        if model is None or not model.versions:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {spec.name}"
            )
        versions = model.versions
        if spec.HasField("version"):
            if spec.version.value not in versions:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"Could not find version {spec.version.value} of model {spec.name}",
                )
            versions = {spec.version.value: versions[spec.version.value]}
        response = get_model_status_pb2.GetModelStatusResponse()
        for number in sorted(versions):
            v = versions[number]
            item = response.model_version_status.add(version=number, state=v.state)
            item.status.error_code = UNKNOWN if v.error else OK
            item.status.error_message = v.error
        return response


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, owner: TfServingStandIn) -> None:
        self.owner = owner

    async def _servable(self, spec, context) -> tuple[_Model, _Version]:
        try:
            return self.owner.servable(spec)
        except LookupError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            raise

    async def GetModelMetadata(self, request, context):
        self.owner.calls["GetModelMetadata"] += 1
        if list(request.metadata_field) != ["signature_def"]:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Metadata field(s) {list(request.metadata_field)} not supported; "
                "ask for signature_def",
            )
        _, version = await self._servable(request.model_spec, context)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.CopyFrom(request.model_spec)
        response.model_spec.version.value = version.number
        defs = get_model_metadata_pb2.SignatureDefMap()
        for name, sig in version.signature_defs.items():
            defs.signature_def[name].CopyFrom(sig)
        response.metadata["signature_def"].Pack(defs)
        return response

    async def Predict(self, request, context):
        import tensorflow as tf

        self.owner.calls["Predict"] += 1
        _, version = await self._servable(request.model_spec, context)
        signature = request.model_spec.signature_name or "serving_default"
        if signature not in version.loaded.signatures:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f'Serving signature key "{signature}" not found; '
                f"known: {sorted(version.loaded.signatures)}",
            )
        function = version.loaded.signatures[signature]
        expected = set(function.structured_input_signature[1])
        if set(request.inputs) != expected:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input names {sorted(request.inputs)} do not match the signature's "
                f"{sorted(expected)}",
            )
        try:
            inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
            batch = next(iter(inputs.values())).shape[0]
            outputs = await asyncio.to_thread(lambda: function(**inputs))
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc).splitlines()[0])
            raise
        self.owner.predict_batches.append((request.model_spec.name, version.number, int(batch)))
        wanted = set(request.output_filter) or set(outputs)
        unknown = wanted - set(outputs)
        if unknown:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"output_filter names unknown outputs {unknown}"
            )
        response = predict_pb2.PredictResponse()
        response.model_spec.CopyFrom(request.model_spec)
        response.model_spec.version.value = version.number
        response.model_spec.signature_name = signature
        for name in sorted(wanted):
            response.outputs[name].CopyFrom(tf.make_tensor_proto(outputs[name].numpy()))
        return response
