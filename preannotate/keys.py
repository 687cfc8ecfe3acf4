"""Safe storage keys, with every user-given part checked, and the default model name.

    <namespace>/datasets/<job_id>/
    <namespace>/models/<name>/<version>/
    <namespace>/serving/<name>/<version>/
    <namespace>/jobs/<job_id>/
    <namespace>/reviews/<cvat server>/task-<id>.json
    _job-ids/<job_id>.json          which namespace holds a job id (outside every
                                    namespace: no namespace starts with '_')

Namespaces, model names and job ids match one pattern: lower-case letters,
digits, ``-`` and ``_``, starting and ending with a letter or digit, at most
63 characters. File names inside a prefix match a second, wider pattern. Dots
that make ``..``, absolute paths and separators are refused with ``UnsafeName``.
What is read back from these prefixes (finished versions, checkpoints) is
``preannotate.layout``'s.
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import urlsplit

from preannotate.errors import UnsafeName

NAME_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?$")
FILE_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,254}$")
NAME_RULE = (
    "lower-case letters, digits, '-' and '_', starting and ending with a letter or digit, "
    "1 to 63 characters"
)


def check_name(value: str, what: str = "name") -> str:
    """Return ``value`` if it is a safe namespace, model name or job id."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise UnsafeName(f"{what} {value!r} is not allowed: use {NAME_RULE}")
    if what == "namespace" and value == "weights":  # weights/ holds the pretrained weights
        raise UnsafeName("namespace 'weights' is reserved for the deployment's pretrained weights")
    return value


def check_version(version: int) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise UnsafeName(f"version {version!r} is not allowed: use a whole number from 1")
    return version


def check_relative(path: str) -> str:
    """Return a relative file path whose every part is a safe file name."""
    if not isinstance(path, str) or not path or path.startswith(("/", "\\")) or "\\" in path:
        raise UnsafeName(f"path {path!r} is not allowed: use a relative path with '/' only")
    for part in path.split("/"):
        if part in ("", ".", "..") or not FILE_PATTERN.fullmatch(part):
            raise UnsafeName(
                f"path {path!r} is not allowed: each part must be letters, digits, '.', '-' "
                "or '_', not start with '.', and not be empty"
            )
    return path


def join(prefix: str, path: str) -> str:
    """Join a checked prefix and a checked relative path."""
    return prefix.rstrip("/") + "/" + check_relative(path)


def default_model_name(model_type: str, task_id: int) -> str:
    """The name of a model whose request names none (gateway and trainer alike).

    ``<model type>-task<id>`` for a CVAT task; the model type alone when the
    job names no task (task id 0: a dataset from a file, not from CVAT).
    """
    return f"{model_type}-task{task_id}" if task_id > 0 else model_type


def dataset_prefix(namespace: str, job_id: str) -> str:
    return f"{check_name(namespace, 'namespace')}/datasets/{check_name(job_id, 'job id')}/"


def model_prefix(namespace: str, name: str, version: int) -> str:
    return (
        f"{check_name(namespace, 'namespace')}/models/{check_name(name, 'model name')}/"
        f"{check_version(version)}/"
    )


def models_root(namespace: str, name: str | None = None) -> str:
    root = f"{check_name(namespace, 'namespace')}/models/"
    return root if name is None else root + check_name(name, "model name") + "/"


def serving_base(namespace: str, name: str) -> str:
    """TF Serving's base_path for a model: the folder that holds its versions."""
    return f"{check_name(namespace, 'namespace')}/serving/{check_name(name, 'model name')}"


def serving_prefix(namespace: str, name: str, version: int) -> str:
    return f"{serving_base(namespace, name)}/{check_version(version)}/"


def job_claim_key(job_id: str) -> str:
    """Where the namespace holding ``job_id`` is recorded (created once, never moved)."""
    return f"_job-ids/{check_name(job_id, 'job id')}.json"


def job_prefix(namespace: str, job_id: str) -> str:
    return f"{check_name(namespace, 'namespace')}/jobs/{check_name(job_id, 'job id')}/"


def cvat_server(url: str) -> str:
    """A storage-safe name of one CVAT server: its host, and a hash of its scheme,
    host, port (the default filled in) and path, e.g. ``cvat.example.org-3f2a9c1d0b7e``.

    Two servers never share a name (the hash), and the same server named with or
    without its default port or a trailing '/' keeps one."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeName(f"CVAT URL {url!r} is not allowed: use http://host[:port] or https://...")
    port = parts.port or {"http": 80, "https": 443}[parts.scheme]
    identity = f"{parts.scheme}://{parts.hostname.lower()}:{port}{parts.path.rstrip('/')}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
    host = re.sub(r"[^a-z0-9.-]", "-", parts.hostname.lower()).strip(".-")[:63] or "cvat"
    return f"{host}-{digest}"


def review_key(namespace: str, cvat_url: str, task_id: int) -> str:
    """Where the newest pre-annotation run of a CVAT task keeps its ranking of frames by
    doubt (``services.inference.reviewstore``): one object per namespace, CVAT server
    (``cvat_server``) and task, replaced whole by the task's next run. The namespace
    and the server are both in the key, so two namespaces or two CVAT servers with
    the same task id never read each other's ranking."""
    if isinstance(task_id, bool) or not isinstance(task_id, int) or task_id < 1:
        raise UnsafeName(f"CVAT task id {task_id!r} is not allowed: use a whole number from 1")
    return (
        f"{check_name(namespace, 'namespace')}/reviews/{cvat_server(cvat_url)}/task-{task_id}.json"
    )
