"""The services that ``preannotate run`` and ``preannotate up`` start: one explicit entry each.

Each entry's loader imports the service's settings class, its
``build(settings) -> ServiceSpec`` and its entry point by name, when the
service is started: ``preannotate jobs`` imports no service (nor TensorFlow).
This is the only module under ``preannotate/cli/`` that imports ``services/``;
the client commands talk gRPC only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from preannotate.service import ServiceSpec
from preannotate.settings import ServiceSettings


@dataclass(frozen=True)
class ServiceParts:
    """What starting one service needs."""

    settings: type[ServiceSettings]
    build: Callable[[Any], ServiceSpec]
    #: The distributed entry point: reads the environment, runs the service.
    main: Callable[[], None]


@dataclass(frozen=True)
class ServiceEntry:
    name: str
    #: Imports the service's parts (on demand: some import TensorFlow).
    load: Callable[[], ServiceParts]
    #: Settings of the embedded mode beyond the shared ones (bus, storage).
    embedded: Mapping[str, object] = field(default_factory=dict)


def _gateway() -> ServiceParts:
    from services.gateway import main, service, settings

    return ServiceParts(settings.GatewaySettings, service.build, main.main)


def _exporter() -> ServiceParts:
    from services.exporter import main, service, settings

    return ServiceParts(settings.ExporterSettings, service.build, main.main)


def _trainer() -> ServiceParts:
    from services.trainer import main, service, settings

    return ServiceParts(settings.TrainerSettings, service.build, main.main)


def _converter() -> ServiceParts:
    from services.converter import main, service, settings

    return ServiceParts(settings.ConverterSettings, service.build, main.main)


def _inference() -> ServiceParts:
    from services.inference import main, service, settings

    return ServiceParts(settings.InferenceSettings, service.build, main.main)


#: name -> entry, in the order the embedded mode starts them.
SERVICES: dict[str, ServiceEntry] = {
    entry.name: entry
    for entry in (
        ServiceEntry("gateway", _gateway),
        ServiceEntry("exporter", _exporter),
        ServiceEntry("trainer", _trainer),
        ServiceEntry("converter", _converter),
        # one process, no TF Serving beside it: the models run in this process
        ServiceEntry("inference", _inference, embedded={"backend": "inprocess"}),
    )
}
