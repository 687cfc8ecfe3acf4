"""preannotate.http_errors: every error of the hierarchy gets the HTTP status of its gRPC
code (google.api's mapping); unknown errors become 500 without details."""

from __future__ import annotations

import json

import grpc
import pytest
from structlog.testing import capture_logs

from preannotate import errors
from preannotate.grpc_errors import STATUS_CODES
from preannotate.http_errors import HTTP_STATUS, error_response, status_for
from tests.gateway.test_grpc_errors import CODES, RAISES

#: The answers the webhook and the Nuclio API give; the first two rows are where
#: they disagreed before (webhook 422 for both, Nuclio 409 for FailedPrecondition).
STATUSES = {
    "precondition": 400,
    "not-found": 404,
    "invalid": 400,
    "unsafe": 400,
    "bad-event": 400,
    "exists": 409,
    "denied": 403,
    "unauthenticated": 401,
    "cancelled": 499,
    "unavailable": 503,
    "interrupted": 503,
    "crash": 500,
}


def body_of(response) -> dict:
    return json.loads(response.body)


@pytest.mark.parametrize("key", sorted(RAISES))
def test_each_error_gets_its_status_and_a_json_body(key):
    response = error_response(RAISES[key])
    assert response.status == STATUSES[key]
    body = body_of(response)
    assert body["status"] == "error" and body["code"] == CODES[key].name.lower()
    if key != "crash":
        assert body["error"] == str(RAISES[key])


def test_every_mapped_error_class_has_an_http_status():
    for _, code in STATUS_CODES:
        assert code in HTTP_STATUS
    assert set(HTTP_STATUS) == set(grpc.StatusCode)


def test_unknown_errors_are_500_logged_with_the_reference_and_no_details():
    with capture_logs() as captured:
        status, body = status_for(ZeroDivisionError("secret path /etc/shadow"))
    assert status == 500 and "shadow" not in body["error"]
    ref = body["error"].split("ref ")[1].split(")")[0]
    [entry] = [e for e in captured if e.get("ref") == ref]
    assert isinstance(entry["exc_info"], ZeroDivisionError)


def test_an_error_without_a_message_is_named():
    assert status_for(errors.NotFound())[1]["error"] == "NotFound"
