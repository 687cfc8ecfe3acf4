"""One exception hierarchy for the whole product.

Transports map these in one place each: gRPC status codes in
``preannotate.grpc_errors`` (and HTTP answers from those codes in
``preannotate.http_errors``), the bus runner's retry / dead-letter decision in
``preannotate.worker``. Foreign errors are re-raised as one of these with
``raise ... from``.
"""

from __future__ import annotations


class PreannotateError(Exception):
    """Base of every error the product raises on purpose."""

    #: Whether retrying the same input later may succeed.
    retryable: bool = False


class InvalidArgument(PreannotateError):
    """The request or event is wrong; the message says what to change."""


class NotFound(PreannotateError):
    """A named thing (job, model, task) does not exist."""


class AlreadyExists(PreannotateError):
    """The thing to create exists already."""


class PermissionDenied(PreannotateError):
    """The caller may not use this namespace or resource."""


class Unauthenticated(PreannotateError):
    """The caller gave no valid credentials."""


class FailedPrecondition(PreannotateError):
    """The system is not in a state that allows this (e.g. model not ready)."""


class Cancelled(PreannotateError):
    """The job was cancelled by a user."""


class Unavailable(PreannotateError):
    """A dependency (CVAT, S3, TF Serving) failed in a way a retry may fix."""

    retryable = True


class UnsafeName(InvalidArgument):
    """A name or key would escape its place in storage."""


class BadEvent(InvalidArgument):
    """A bus record that cannot be decoded or lacks what its topic needs."""


def is_retryable(exc: BaseException) -> bool:
    """True when a later retry of the same work may succeed."""
    if isinstance(exc, PreannotateError):
        return exc.retryable
    return isinstance(exc, (TimeoutError, ConnectionError))


class Interrupted(PreannotateError):
    """The service is shutting down mid-job; the record is left for redelivery."""

    retryable = True
