"""Writes the parts of docs and manifests that are derived from the code.

- docs/operations.md, between ``<!-- settings:begin -->`` and
  ``<!-- settings:end -->``: a table of every ``PREANNOTATE_*`` variable, made
  from the settings classes (``preannotate/settings.py`` and every
  ``services/<name>/settings.py``), with each field's type, default and the
  ``#:`` comment (or ``description``) that documents it;
- deploy/k8s/base/prometheus-rule.yaml: deploy/prometheus/alerts.yml as a
  Prometheus Operator ``PrometheusRule``.

    .venv/bin/python deploy/generate.py           # rewrite them
    .venv/bin/python deploy/generate.py --check   # exit 1 when one is stale

Imports no TensorFlow: settings modules are light by the house rules.
"""

from __future__ import annotations

import argparse
import ast
import enum
import importlib
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
OPERATIONS = REPO / "docs" / "operations.md"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS_RULE = REPO / "deploy" / "k8s" / "base" / "prometheus-rule.yaml"
#: What a variable does, where its settings class has no comment or
#: description for it (the code's own doc wins once it has one).
NOTES = {
    "PREANNOTATE_KAFKA_BOOTSTRAP": "Kafka bootstrap servers, host:port[,host:port...].",
    "PREANNOTATE_KAFKA_REPLICATION": "Replication factor of topics the service creates at start.",
    "PREANNOTATE_KAFKA_CLIENT_ID": "Kafka client id prefix (broker logs and quotas).",
    "PREANNOTATE_KAFKA_SECURITY_PROTOCOL": "How clients talk to the brokers.",
    "PREANNOTATE_KAFKA_SASL_MECHANISM": "SASL mechanism with SASL_*: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512.",
    "PREANNOTATE_KAFKA_SASL_USERNAME": "SASL user name.",
    "PREANNOTATE_KAFKA_SASL_PASSWORD": "SASL password (keep it in a Secret).",
    "PREANNOTATE_KAFKA_FETCH_MAX_WAIT_MS": "Longest wait of one fetch for new records: the floor of each hop's delay.",
    "PREANNOTATE_MAX_POLL_INTERVAL_MS": "Kafka max.poll.interval.ms of the consumers.",
    "PREANNOTATE_SESSION_TIMEOUT_MS": "Kafka session.timeout.ms: how soon a dead consumer's partitions move.",
    "PREANNOTATE_RETRY_BACKOFF_SECONDS": "Wait between tries of a retryable failure.",
    "PREANNOTATE_STORAGE_ROOT": "Folder of the local storage (PREANNOTATE_STORAGE=local).",
    "PREANNOTATE_S3_ENDPOINT": "S3 endpoint URL (MinIO, Ceph, ...); empty: AWS.",
    "PREANNOTATE_S3_BUCKET": "Bucket of every dataset, model and SavedModel.",
    "PREANNOTATE_S3_REGION": "S3 region.",
    "PREANNOTATE_S3_ACCESS_KEY": "S3 access key (keep it in a Secret); unset: boto3's own lookup.",
    "PREANNOTATE_S3_SECRET_KEY": "S3 secret key (keep it in a Secret).",
    "PREANNOTATE_S3_CREATE_BUCKET": "Create the bucket at start when it is missing.",
    "PREANNOTATE_LOG_LEVEL": "Lowest level logged.",
    "PREANNOTATE_LOG_FORMAT": "json (one object per line) or console (for people).",
    "PREANNOTATE_SHUTDOWN_GRACE_SECONDS": "On SIGTERM, how long in-flight records may finish before the process stops; keep it under the pod's terminationGracePeriodSeconds.",
    "PREANNOTATE_NAMESPACE": "Namespace of requests that name none.",
    "PREANNOTATE_DEFAULT_MACHINE_TYPE": "The pool of training requests that name no machine type; one of PREANNOTATE_MACHINE_TYPES.",
    "PREANNOTATE_CVAT_URL": "CVAT's base URL, e.g. http://cvat:8080.",
    "PREANNOTATE_CVAT_TOKEN": "CVAT access token (keep it in a Secret).",
    "PREANNOTATE_CVAT_VERIFY_TLS": "Check CVAT's TLS certificate.",
    "PREANNOTATE_CVAT_REQUEST_TIMEOUT_SECONDS": "Deadline of one CVAT request.",
    "PREANNOTATE_CVAT_RETRY_BACKOFF_MAX_SECONDS": "Longest wait between tries of a CVAT request.",
    "PREANNOTATE_CVAT_POLL_INTERVAL_SECONDS": "Wait between polls of a CVAT export in progress.",
    "PREANNOTATE_EXPORT_WORK_DIR": "Where archives are downloaded and unpacked (size it for PREANNOTATE_EXPORT_MAX_BYTES).",
    "PREANNOTATE_EXPORT_VAL_FRACTION": "Share of images held out for validation.",
    "PREANNOTATE_EXPORT_KEEP_NEGATIVES": "Keep images without any shape in the dataset.",
    "PREANNOTATE_EXPORT_SHARD_MAX_BYTES": "Largest TFRecord shard.",
    "PREANNOTATE_WEBHOOK_DEDUP_MAX": "Most webhook deliveries remembered at once.",
    "PREANNOTATE_TLS_KEY_FILE": "PEM private key of PREANNOTATE_TLS_CERT_FILE.",
    "PREANNOTATE_GATEWAY_GRPC_PORT": "Port of TrainingService (gRPC); 0 picks a free one.",
    "PREANNOTATE_GATEWAY_HTTP_PORT": "Port of the CVAT webhook endpoint (HTTP); 0 picks a free one.",
    "PREANNOTATE_INFERENCE_BATCH_SIZE": "Most images per model call.",
    "PREANNOTATE_INFERENCE_DEFAULT_THRESHOLD": "Score threshold of shapes written to CVAT when a request names none.",
    "PREANNOTATE_INFERENCE_GRPC_PORT": "Port of InferenceService (gRPC); 0 picks a free one.",
}
BEGIN = "<!-- settings:begin -->"
END = "<!-- settings:end -->"


@dataclass
class Setting:
    variable: str
    type: str
    default: str
    doc: str
    services: list[str] = field(default_factory=list)


def _comment_block(source_lines: list[str], lineno: int) -> list[str]:
    """The comment lines right above a class-body line."""
    block: list[str] = []
    i = lineno - 2
    while i >= 0 and source_lines[i].strip().startswith("#"):
        block.insert(0, source_lines[i].strip())
        i -= 1
    return block


def field_comments(cls: type) -> dict[str, str]:
    """Field name -> the comment that documents it in ``cls``'s own source.

    A class that marks its field docs with ``#:`` is read by those alone (its
    plain ``#`` lines are section titles); otherwise the plain comment block
    above a field is its doc, unless it is one short line ("# Telemetry.").
    """
    module = sys.modules[cls.__module__]
    lines = Path(module.__file__ or "").read_text().splitlines()
    tree = ast.parse("\n".join(lines))
    blocks: dict[str, list[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    blocks[item.target.id] = _comment_block(lines, item.lineno)
    marked = any(line.startswith("#:") for block in blocks.values() for line in block)
    out: dict[str, str] = {}
    for name, block in blocks.items():
        if marked:
            out[name] = " ".join(line[2:].strip() for line in block if line.startswith("#:"))
            continue
        plain = [line.lstrip("#").strip() for line in block]
        out[name] = "" if len(plain) == 1 and len(plain[0].split()) <= 3 else " ".join(plain)
    return out


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " \\| ".join(names) + (", optional" if type(None) in args else "")
    if origin is dict:
        return "JSON object"
    if origin in (list, tuple, set, frozenset):
        return "JSON list"
    if isinstance(annotation, type):
        if issubclass(annotation, enum.Enum):
            return " \\| ".join(f"`{m.value}`" for m in annotation)
        return {
            "str": "text",
            "int": "integer",
            "float": "number",
            "bool": "true/false",
            "Path": "path",
            "SecretStr": "secret",
        }.get(annotation.__name__, annotation.__name__)
    return str(annotation)


def _bounds(info: Any) -> str:
    parts = []
    for item in info.metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(item, attr, None)
            if value is not None:
                parts.append(f"{sign} {value}")
        pattern = getattr(item, "pattern", None)
        if pattern:
            parts.append(f"matches `{pattern}`")
    return ", ".join(parts)


def _default(info: Any) -> str:
    from pydantic_core import PydanticUndefined

    if info.default_factory is not None:
        value = info.default_factory()
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if value is None:
        return "unset"
    if hasattr(value, "get_secret_value"):
        return "(empty)" if not value.get_secret_value() else "(set)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, dict | list):
        import json

        return f"`{json.dumps(value)}`"
    if isinstance(value, enum.Enum):
        value = value.value
    text = str(value)
    return f"`{text}`" if text else "(empty)"


def settings_classes() -> dict[str, type]:
    """``{"shared": ServiceSettings, "<service>": <its settings class>}`` in service order."""
    from preannotate.settings import ServiceSettings

    out: dict[str, type] = {"shared": ServiceSettings}
    for path in sorted((REPO / "services").glob("*/settings.py")):
        name = path.parent.name
        module = importlib.import_module(f"services.{name}.settings")
        own = [
            obj
            for obj in vars(module).values()
            if isinstance(obj, type)
            and issubclass(obj, ServiceSettings)
            and obj is not ServiceSettings
            and obj.__module__ == module.__name__
        ]
        if len(own) != 1:
            raise SystemExit(
                f"{path}: expected one settings class extending ServiceSettings, found "
                f"{[c.__name__ for c in own]}"
            )
        out[name] = own[0]
    return out


def env_name(cls: type, name: str, info: Any) -> str:
    prefix = cls.model_config.get("env_prefix", "")
    alias = info.validation_alias or info.alias
    return (alias if isinstance(alias, str) else prefix + name).upper()


def collect() -> tuple[list[Setting], dict[str, list[Setting]]]:
    """The shared settings, and each service's own (a field several services
    declare is listed under each, naming the others)."""
    classes = settings_classes()
    shared_cls = classes.pop("shared")
    shared_names = set(shared_cls.model_fields)

    def rows(cls: type, names: list[str]) -> list[Setting]:
        comments: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            if isinstance(klass, type) and hasattr(klass, "model_fields") and klass.__module__:
                try:
                    comments.update(field_comments(klass))
                except (OSError, KeyError, SyntaxError):
                    continue
        out = []
        for name in names:
            info = cls.model_fields[name]
            variable = env_name(cls, name, info)
            doc = info.description or comments.get(name, "") or NOTES.get(variable, "")
            bounds = _bounds(info)
            out.append(
                Setting(
                    variable=variable,
                    type=_type_name(info.annotation) + (f" ({bounds})" if bounds else ""),
                    default=_default(info),
                    doc=doc,
                )
            )
        return out

    shared = rows(shared_cls, list(shared_cls.model_fields))
    per_service: dict[str, list[Setting]] = {}
    for service, cls in classes.items():
        own = [n for n in cls.model_fields if n not in shared_names]
        per_service[service] = rows(cls, own)
    readers: dict[str, list[str]] = {}
    docs: dict[str, str] = {}
    for service, settings in per_service.items():
        for s in settings:
            readers.setdefault(s.variable, []).append(service)
            docs.setdefault(s.variable, s.doc)
            docs[s.variable] = docs[s.variable] or s.doc
    for service, settings in per_service.items():
        for s in settings:
            s.services = [other for other in readers[s.variable] if other != service]
            # A variable several services read: one's comment documents all.
            s.doc = s.doc or docs[s.variable]
    return shared, per_service


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip()


def settings_markdown() -> str:
    shared, per_service = collect()
    out = [
        BEGIN,
        "<!-- Generated by deploy/generate.py from the settings classes; edit those, then run it. -->",
        "",
        "### Every service (`preannotate/settings.py`)",
        "",
        "| variable | type | default | what it does |",
        "|---|---|---|---|",
    ]
    out += [f"| `{s.variable}` | {s.type} | {_cell(s.default)} | {_cell(s.doc)} |" for s in shared]
    for service, settings in per_service.items():
        out += [
            "",
            f"### {service} (`services/{service}/settings.py`)",
            "",
            "| variable | type | default | what it does |",
            "|---|---|---|---|",
        ]
        for s in settings:
            also = f" Also read by {', '.join(s.services)}." if s.services else ""
            out.append(
                f"| `{s.variable}` | {s.type} | {_cell(s.default)} | {_cell(s.doc + also)} |"
            )
    out.append(END)
    return "\n".join(out)


def all_variables() -> set[str]:
    """Every PREANNOTATE_* variable some settings class reads."""
    shared, per_service = collect()
    return {s.variable for s in shared} | {
        s.variable for settings in per_service.values() for s in settings
    }


def operations_text(current: str) -> str:
    if BEGIN not in current or END not in current:
        raise SystemExit(f"{OPERATIONS}: the markers {BEGIN} and {END} are missing")
    head, rest = current.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + settings_markdown() + tail


def prometheus_rule_text() -> str:
    alerts = yaml.safe_load(ALERTS.read_text())
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "preannotate", "labels": {"app.kubernetes.io/name": "preannotate"}},
        "spec": {"groups": alerts["groups"]},
    }
    header = (
        "# Generated by deploy/generate.py from deploy/prometheus/alerts.yml: edit that\n"
        "# file, then run `.venv/bin/python deploy/generate.py`.\n"
    )
    return header + yaml.safe_dump(rule, sort_keys=False, width=100, allow_unicode=True)


def targets() -> dict[Path, str]:
    return {
        OPERATIONS: operations_text(OPERATIONS.read_text()),
        PROMETHEUS_RULE: prometheus_rule_text(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the generated parts of docs/ and deploy/.")
    parser.add_argument("--check", action="store_true", help="only say which file is stale")
    args = parser.parse_args(argv)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    stale = []
    for path, text in targets().items():
        current = path.read_text() if path.exists() else ""
        if current != text:
            stale.append(path)
            if not args.check:
                path.write_text(text)
    for path in stale:
        verb = "is stale" if args.check else "written"
        shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
        print(f"{shown} {verb}")
    if args.check and stale:
        print("run: .venv/bin/python deploy/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
