"""Strict JSON schemas of the custom resources deploy/k8s uses.

Written from the projects' documentation (KEDA ScaledObject and its kafka
trigger, Strimzi KafkaTopic, Prometheus Operator ServiceMonitor and
PrometheusRule), for the fields these manifests may use: an unknown or
misspelt field fails here, where the CRDs' own schemas would prune it in
silence. The upstream CRD schemas are checked too (``validate_crds.mjs``).
"""

from __future__ import annotations

from typing import Any

NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253}
INT_STRING = {"type": "string", "pattern": r"^[0-9]+$"}
BOOL_STRING = {"type": "string", "enum": ["true", "false"]}


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required or [],
        "additionalProperties": False,
    }


METADATA = {
    "type": "object",
    "properties": {
        "name": NAME,
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "required": ["name"],
    "additionalProperties": False,
}

KAFKA_TRIGGER = _object(
    {
        "type": {"const": "kafka"},
        "name": {"type": "string"},
        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
        "authenticationRef": _object({"name": {"type": "string"}, "kind": {"type": "string"}}),
        "metadata": _object(
            {
                "bootstrapServers": {"type": "string", "minLength": 1},
                "consumerGroup": {"type": "string", "minLength": 1},
                "topic": {"type": "string", "minLength": 1},
                "lagThreshold": INT_STRING,
                "activationLagThreshold": INT_STRING,
                "offsetResetPolicy": {"enum": ["earliest", "latest"]},
                "allowIdleConsumers": BOOL_STRING,
                "scaleToZeroOnInvalidOffset": BOOL_STRING,
                "excludePersistentLag": BOOL_STRING,
                "limitToPartitionsWithLag": BOOL_STRING,
                "ensureEvenDistributionOfPartitions": BOOL_STRING,
                "partitionLimitation": {"type": "string"},
                "version": {"type": "string"},
                "sasl": {
                    "enum": ["none", "plaintext", "scram_sha256", "scram_sha512", "oauthbearer"]
                },
                "tls": {"enum": ["enable", "disable"]},
                "unsafeSsl": BOOL_STRING,
            },
            ["bootstrapServers", "consumerGroup", "topic", "lagThreshold"],
        ),
    },
    ["type", "metadata"],
)

SCALE_DOWN = _object(
    {
        "stabilizationWindowSeconds": {"type": "integer", "minimum": 0, "maximum": 3600},
        "selectPolicy": {"enum": ["Max", "Min", "Disabled"]},
        "policies": {
            "type": "array",
            "items": _object(
                {
                    "type": {"enum": ["Pods", "Percent"]},
                    "value": {"type": "integer", "minimum": 1},
                    "periodSeconds": {"type": "integer", "minimum": 1, "maximum": 1800},
                },
                ["type", "value", "periodSeconds"],
            ),
        },
    }
)

SCALED_OBJECT = _object(
    {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": METADATA,
        "spec": _object(
            {
                "scaleTargetRef": _object(
                    {
                        "name": {"type": "string"},
                        "kind": {"type": "string"},
                        "apiVersion": {"type": "string"},
                    },
                    ["name"],
                ),
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {"type": "object"},
                "advanced": _object(
                    {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": _object(
                            {
                                "name": {"type": "string"},
                                "behavior": _object(
                                    {"scaleDown": SCALE_DOWN, "scaleUp": SCALE_DOWN}
                                ),
                            }
                        ),
                    }
                ),
                "triggers": {"type": "array", "minItems": 1, "items": KAFKA_TRIGGER},
            },
            ["scaleTargetRef", "triggers"],
        ),
    },
    ["apiVersion", "kind", "metadata", "spec"],
)

KAFKA_TOPIC = _object(
    {
        "apiVersion": {"const": "kafka.strimzi.io/v1beta2"},
        "kind": {"const": "KafkaTopic"},
        "metadata": {
            **METADATA,
            "properties": {
                **METADATA["properties"],
                "labels": {
                    "type": "object",
                    "properties": {"strimzi.io/cluster": {"type": "string", "minLength": 1}},
                    "required": ["strimzi.io/cluster"],
                    "additionalProperties": {"type": "string"},
                },
            },
            "required": ["name", "labels"],
        },
        "spec": _object(
            {
                "topicName": {"type": "string", "pattern": r"^[A-Za-z0-9._-]{1,249}$"},
                "partitions": {"type": "integer", "minimum": 1},
                "replicas": {"type": "integer", "minimum": 1, "maximum": 32767},
                "config": {
                    "type": "object",
                    "propertyNames": {"pattern": r"^[a-z]+(\.[a-z]+)*$"},
                    "additionalProperties": {"type": ["string", "integer", "boolean"]},
                },
            },
            ["topicName", "partitions", "replicas"],
        ),
    },
    ["apiVersion", "kind", "metadata", "spec"],
)

SERVICE_MONITOR = _object(
    {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": METADATA,
        "spec": _object(
            {
                "jobLabel": {"type": "string"},
                "selector": _object(
                    {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
                    ["matchLabels"],
                ),
                "namespaceSelector": {"type": "object"},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": _object(
                        {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h)$"},
                            "scheme": {"enum": ["http", "https"]},
                        },
                        ["port"],
                    ),
                },
            },
            ["selector", "endpoints"],
        ),
    },
    ["apiVersion", "kind", "metadata", "spec"],
)

PROMETHEUS_RULE = _object(
    {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": METADATA,
        "spec": _object(
            {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": _object(
                        {
                            "name": {"type": "string"},
                            "interval": {"type": "string"},
                            "rules": {
                                "type": "array",
                                "minItems": 1,
                                "items": _object(
                                    {
                                        "alert": {
                                            "type": "string",
                                            "pattern": "^[A-Za-z][A-Za-z0-9]*$",
                                        },
                                        "expr": {"type": "string", "minLength": 1},
                                        "for": {"type": "string", "pattern": r"^[0-9]+(s|m|h)$"},
                                        "labels": {
                                            "type": "object",
                                            "additionalProperties": {"type": "string"},
                                        },
                                        "annotations": {
                                            "type": "object",
                                            "additionalProperties": {"type": "string"},
                                        },
                                    },
                                    ["alert", "expr"],
                                ),
                            },
                        },
                        ["name", "rules"],
                    ),
                }
            },
            ["groups"],
        ),
    },
    ["apiVersion", "kind", "metadata", "spec"],
)

SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT,
    ("kafka.strimzi.io/v1beta2", "KafkaTopic"): KAFKA_TOPIC,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE,
}
