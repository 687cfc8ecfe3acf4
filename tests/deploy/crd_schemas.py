"""Strict JSON schemas of the custom resources deploy/k8s uses.

Written from the projects' documentation (KEDA ScaledObject, ScaledJob and
their kafka trigger, Strimzi Kafka, KafkaNodePool and KafkaTopic of the v1 API,
Prometheus Operator ServiceMonitor, PodMonitor and PrometheusRule), for the
fields these manifests may use: an unknown or misspelt field fails here, where the CRDs' own schemas would prune it in
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

STRIMZI_CLUSTER_LABELS = {
    "type": "object",
    "properties": {"strimzi.io/cluster": {"type": "string", "minLength": 1}},
    "required": ["strimzi.io/cluster"],
    "additionalProperties": {"type": "string"},
}
#: Kafka configuration: dotted lower-case keys (broker or topic config).
KAFKA_CONFIG = {
    "type": "object",
    "propertyNames": {"pattern": r"^[a-z]+(\.[a-z]+)*$"},
    "additionalProperties": {"type": ["string", "integer", "boolean"]},
}

KAFKA_TOPIC = _object(
    {
        "apiVersion": {"const": "kafka.strimzi.io/v1"},
        "kind": {"const": "KafkaTopic"},
        "metadata": {
            **METADATA,
            "properties": {
                **METADATA["properties"],
                "labels": STRIMZI_CLUSTER_LABELS,
            },
            "required": ["name", "labels"],
        },
        "spec": _object(
            {
                "topicName": {"type": "string", "pattern": r"^[A-Za-z0-9._-]{1,249}$"},
                "partitions": {"type": "integer", "minimum": 1},
                "replicas": {"type": "integer", "minimum": 1, "maximum": 32767},
                "config": KAFKA_CONFIG,
            },
            ["topicName", "partitions", "replicas"],
        ),
    },
    ["apiVersion", "kind", "metadata", "spec"],
)


def _monitor(kind: str, endpoints: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ServiceMonitor or PodMonitor: a label selector and scrape endpoints
    (``endpoints`` names the list: ``endpoints`` / ``podMetricsEndpoints``)."""
    return _object(
        {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": METADATA,
            "spec": _object(
                {
                    **(extra or {}),
                    "selector": _object(
                        {
                            "matchLabels": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            }
                        },
                        ["matchLabels"],
                    ),
                    "namespaceSelector": {"type": "object"},
                    endpoints: {
                        "type": "array",
                        "minItems": 1,
                        "items": _object(
                            {
                                "port": {"type": "string"},
                                "path": {"type": "string", "pattern": "^/"},
                                "interval": {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h)$"},
                                "scheme": {"enum": ["http", "https"]},
                                "honorLabels": {"type": "boolean"},
                            },
                            ["port"],
                        ),
                    },
                },
                ["selector", endpoints],
            ),
        },
        ["apiVersion", "kind", "metadata", "spec"],
    )


SERVICE_MONITOR = _monitor("ServiceMonitor", "endpoints", {"jobLabel": {"type": "string"}})
POD_MONITOR = _monitor("PodMonitor", "podMetricsEndpoints")

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

#: jobTargetRef is a batch/v1 JobSpec: the tests check it as a Job with the
#: Kubernetes schemas (``kubernetes-validate``), so here it is only an object.
SCALED_JOB = _object(
    {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledJob"},
        "metadata": METADATA,
        "spec": _object(
            {
                "jobTargetRef": {"type": "object", "required": ["template"]},
                "pollingInterval": {"type": "integer", "minimum": 1},
                "successfulJobsHistoryLimit": {"type": "integer", "minimum": 0},
                "failedJobsHistoryLimit": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "rolloutStrategy": {"enum": ["default", "gradual"]},
                "scalingStrategy": _object(
                    {
                        "strategy": {"enum": ["default", "custom", "accurate", "eager"]},
                        "pendingPodConditions": {"type": "array", "items": {"type": "string"}},
                    }
                ),
                "triggers": {"type": "array", "minItems": 1, "items": KAFKA_TRIGGER},
            },
            ["jobTargetRef", "triggers"],
        ),
    },
    ["apiVersion", "kind", "metadata", "spec"],
)

RESOURCES = _object(
    {
        "requests": {"type": "object", "additionalProperties": {"type": "string"}},
        "limits": {"type": "object", "additionalProperties": {"type": "string"}},
    }
)

#: Strimzi's KafkaNodePool (v1): the nodes, their KRaft roles and storage.
KAFKA_NODE_POOL = _object(
    {
        "apiVersion": {"const": "kafka.strimzi.io/v1"},
        "kind": {"const": "KafkaNodePool"},
        "metadata": {
            **METADATA,
            "properties": {**METADATA["properties"], "labels": STRIMZI_CLUSTER_LABELS},
            "required": ["name", "labels"],
        },
        "spec": _object(
            {
                "replicas": {"type": "integer", "minimum": 1},
                "roles": {
                    "type": "array",
                    "items": {"enum": ["controller", "broker"]},
                    "minItems": 1,
                    "uniqueItems": True,
                },
                "storage": {
                    "oneOf": [
                        _object({"type": {"const": "ephemeral"}, "sizeLimit": {"type": "string"}}),
                        _object(
                            {
                                "type": {"const": "persistent-claim"},
                                "size": {"type": "string"},
                                "class": {"type": "string"},
                                "deleteClaim": {"type": "boolean"},
                                "kraftMetadata": {"enum": ["shared"]},
                            },
                            ["type", "size"],
                        ),
                    ]
                },
                "resources": RESOURCES,
            },
            ["replicas", "roles", "storage"],
        ),
    },
    ["apiVersion", "kind", "metadata", "spec"],
)

LISTENER = _object(
    {
        "name": {"type": "string", "pattern": r"^[a-z0-9]{1,11}$"},
        "port": {"type": "integer", "minimum": 9092},
        "type": {
            "enum": ["internal", "route", "loadbalancer", "nodeport", "ingress", "cluster-ip"]
        },
        "tls": {"type": "boolean"},
    },
    ["name", "port", "type", "tls"],
)

#: Strimzi's Kafka (v1): KRaft on node pools, so no replicas or storage here.
KAFKA = _object(
    {
        "apiVersion": {"const": "kafka.strimzi.io/v1"},
        "kind": {"const": "Kafka"},
        "metadata": METADATA,
        "spec": _object(
            {
                "kafka": _object(
                    {
                        "version": {"type": "string"},
                        "metadataVersion": {"type": "string"},
                        "listeners": {"type": "array", "items": LISTENER, "minItems": 1},
                        "config": KAFKA_CONFIG,
                        "resources": RESOURCES,
                    },
                    ["listeners"],
                ),
                "entityOperator": _object(
                    {
                        "topicOperator": _object({"resources": RESOURCES}),
                        "userOperator": _object({}),
                    }
                ),
                "kafkaExporter": _object(
                    {"topicRegex": {"type": "string"}, "groupRegex": {"type": "string"}}
                ),
            },
            ["kafka"],
        ),
    },
    ["apiVersion", "kind", "metadata", "spec"],
)

SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("kafka.strimzi.io/v1", "Kafka"): KAFKA,
    ("kafka.strimzi.io/v1", "KafkaNodePool"): KAFKA_NODE_POOL,
    ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT,
    ("keda.sh/v1alpha1", "ScaledJob"): SCALED_JOB,
    ("kafka.strimzi.io/v1", "KafkaTopic"): KAFKA_TOPIC,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE,
    ("monitoring.coreos.com/v1", "PodMonitor"): POD_MONITOR,
}
