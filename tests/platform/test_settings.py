"""Typed settings from the environment: defaults for one machine, errors that name the variable."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from preannotate.settings import ServiceSettings, SettingsError, load


def test_defaults_work_on_one_machine(monkeypatch):
    for var in ("PREANNOTATE_BUS", "PREANNOTATE_STORAGE", "PREANNOTATE_MACHINE_TYPES"):
        monkeypatch.delenv(var, raising=False)
    s = load(ServiceSettings)
    assert s.bus == "kafka" and s.kafka_bootstrap == "127.0.0.1:9092"
    assert s.storage == "local" and s.pools() == {"cpu": 0}


def test_values_come_from_prefixed_variables(monkeypatch):
    monkeypatch.setenv("PREANNOTATE_KAFKA_PARTITIONS", "6")
    monkeypatch.setenv("PREANNOTATE_MACHINE_TYPES", "cpu=0, gpu-4=4")
    monkeypatch.setenv("PREANNOTATE_S3_SECRET_KEY", "very-secret")
    s = load(ServiceSettings)
    assert s.kafka_partitions == 6 and s.pools() == {"cpu": 0, "gpu-4": 4}
    assert "very-secret" not in repr(s)
    with pytest.raises(ValidationError):  # frozen
        s.kafka_partitions = 1


@pytest.mark.parametrize(
    "var,value,named",
    [
        ("PREANNOTATE_KAFKA_PARTITIONS", "zero", "PREANNOTATE_KAFKA_PARTITIONS"),
        ("PREANNOTATE_BUS", "rabbit", "PREANNOTATE_BUS"),
        (
            "PREANNOTATE_MACHINE_TYPES",
            "gpu-4=four",
            "PREANNOTATE_MACHINE_TYPES: Value error, machine type 'gpu-4'",
        ),
        ("PREANNOTATE_DEFAULT_MACHINE_TYPE", "gpu-9", "PREANNOTATE_DEFAULT_MACHINE_TYPE 'gpu-9'"),
    ],
)
def test_a_bad_value_names_its_variable(monkeypatch, var, value, named):
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as err:
        load(ServiceSettings)
    assert named in str(err.value)
