"""A training request, checked before anything is published.

The same catalog and argument parser as the trainer (``preannotate.catalog``,
``preannotate.arguments``): the model type, every argument key and value, the
GPUs against the machine type, the base model's namespace and the model name.
Each refusal is an ``InvalidArgument`` whose message names the bad key and what
is allowed. The base model's existence needs storage and is checked apart
(``check_base_model_exists``), when the job is about to be queued.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from preannotate import catalog as catalog_module
from preannotate import layout
from preannotate.arguments import parse as parse_arguments
from preannotate.arguments import parse_base_model
from preannotate.errors import InvalidArgument, NotFound
from preannotate.keys import check_name, default_model_name
from preannotate.storage import Storage
from preannotate.v1 import common_pb2, training_pb2
from services.gateway import models


@dataclass
class TrainingRequest:
    """A checked request: what goes into TaskAnnotated and the first JobStatus."""

    namespace: str
    cvat: common_pb2.CvatRef
    training: common_pb2.TrainingSpec
    details: dict[str, str] = field(default_factory=dict)


class Catalog:
    """The model catalog as the gateway uses it: checks requests, lists model types."""

    def __init__(
        self,
        pools: dict[str, int],
        default_pool: str,
        catalog: catalog_module.Catalog | None = None,
    ) -> None:
        self.pools = dict(pools)
        self.default_pool = default_pool
        self.catalog = catalog or catalog_module.default_catalog()

    def model_types(self) -> list[training_pb2.ModelType]:
        return [entry.to_proto() for entry in self.catalog]

    def machine(self, machine_type: str, gpus: int) -> str:
        """The trainer pool for a request: the one named, else one with enough GPUs."""
        listing = ", ".join(f"{name} ({n} GPUs)" for name, n in sorted(self.pools.items()))
        if gpus < 0:
            raise InvalidArgument(f"gpus={gpus} cannot be negative")
        if machine_type:
            if machine_type not in self.pools:
                raise InvalidArgument(
                    f"unknown machine type {machine_type!r}; choose one of: {listing}"
                )
            if gpus > max(1, self.pools[machine_type]):
                raise InvalidArgument(
                    f"gpus={gpus} is more than machine type {machine_type!r} has "
                    f"({self.pools[machine_type]}); machine types: {listing}"
                )
            return machine_type
        if self.pools[self.default_pool] >= gpus:
            return self.default_pool
        fitting = sorted((n, name) for name, n in self.pools.items() if n >= gpus)
        if not fitting:
            raise InvalidArgument(f"no machine type has {gpus} GPUs; machine types: {listing}")
        return fitting[0][1]

    def check_request(
        self,
        *,
        namespace: str,
        task_id: int,
        model_type: str,
        arguments: str,
        base_model: str,
        machine_type: str,
        gpus: int,
        model_name: str,
        project_id: int = 0,
    ) -> TrainingRequest:
        """A checked request; ``project_id`` with ``task_id`` 0 trains on the project's
        completed jobs (the exporter's project export)."""
        check_name(namespace, "namespace")
        if task_id <= 0 and not (task_id == 0 and project_id > 0):
            raise InvalidArgument(f"CVAT task id must be 1 or more, got {task_id}")
        if not model_type:
            raise InvalidArgument(
                f"model type is required; choose one of: {', '.join(self.catalog.names())}"
            )
        entry = self.catalog.get(model_type)
        pool = self.machine(machine_type, gpus)
        parsed = _parse_arguments(arguments, entry, self.pools[pool], gpus)
        base = parse_base_model(base_model, namespace)
        name = check_name(model_name or default_model_name(entry.name, task_id), "model name")

        spec = common_pb2.TrainingSpec(
            model_type=entry.name,
            arguments=arguments,
            machine_type=pool,
            gpus=gpus,
            model_name=name,
        )
        if base is not None:
            spec.base_model.CopyFrom(
                common_pb2.ModelRef(namespace=base.namespace, name=base.name, version=base.version)
            )
        details = {
            "machine_type": pool,
            "num_clones": str(parsed.num_clones),
            "model_name": name,
        }
        if parsed.given:
            details["arguments"] = ";".join(f"{k}={v}" for k, v in parsed.as_dict().items())
        if base is not None:
            details["base_model"] = str(base)
        return TrainingRequest(
            namespace=namespace,
            cvat=common_pb2.CvatRef(task_id=task_id, project_id=project_id),
            training=spec,
            details=details,
        )


def _parse_arguments(text: str, entry, machine_gpus: int, gpus: int):
    try:
        return parse_arguments(text, entry, machine_gpus=machine_gpus, requested_gpus=gpus)
    except InvalidArgument as exc:
        raise InvalidArgument(f"arguments {text!r}: {exc}") from None


def check_base_model_exists(storage: Storage, ref: common_pb2.ModelRef) -> None:
    """``NotFound`` unless the base model (its newest version when 0) finished training."""
    versions = layout.finished_versions(storage, ref.namespace, ref.name)
    if ref.version and ref.version in versions:
        return
    if not ref.version and versions:
        return
    what = f"{ref.namespace}/{ref.name}" + (f" version {ref.version}" if ref.version else "")
    if versions:
        raise NotFound(
            f"base model {what} does not exist; its trained versions are "
            f"{', '.join(map(str, versions))}"
        )
    names = sorted({m.ref.name for m in models.list_models(storage, ref.namespace)})
    raise NotFound(
        f"base model {what} does not exist; models of namespace {ref.namespace!r}: "
        f"{', '.join(names) or 'none yet'}"
    )
