"""The CVAT connection: its settings, the frozen value built from them, the auth headers.

- ``CvatSettings``: the connection fields (``PREANNOTATE_CVAT_URL``,
  ``PREANNOTATE_CVAT_TOKEN``, ...), one set of variables for the exporter and
  the inference service; each service's settings class extends it.
- ``CvatConnection``: those fields as a frozen value for one organisation
  context, built with ``CvatConnection.from_settings``.
- ``cvat_headers``: ``Authorization: Bearer <token>`` (a personal access
  token) or ``Token <key>`` (a legacy API key), and ``X-Organization`` when an
  organisation is named.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from preannotate.settings import ServiceSettings

AuthScheme = Literal["bearer", "token"]

MISSING_TOKEN = (
    "no CVAT token is configured: set PREANNOTATE_CVAT_TOKEN to a personal access token "
    "(or a legacy API key with PREANNOTATE_CVAT_AUTH_SCHEME=token)"
)


class CvatSettings(ServiceSettings):
    """The CVAT connection, read from ``PREANNOTATE_CVAT_*`` (shared by every service
    that talks to CVAT, so one set of variables serves them all)."""

    model_config = SettingsConfigDict(use_attribute_docstrings=True)

    cvat_url: str = "http://127.0.0.1:8080"
    """CVAT's address as CVAT calls itself (http:// or https://, no path)."""

    cvat_token: SecretStr = SecretStr("")
    """A personal access token, or a legacy API key with ``cvat_auth_scheme=token``."""

    cvat_auth_scheme: AuthScheme = "bearer"
    """How the token is sent: "bearer" (Authorization: Bearer) or "token" (Authorization: Token)."""

    cvat_organization: str = ""
    """Organisation slug sent as X-Organization; a request's or event's own organisation wins."""

    cvat_verify_tls: bool = True
    """Whether CVAT's TLS certificate is checked (https only)."""

    cvat_request_timeout_seconds: float = Field(60.0, gt=0)
    """Time limit of one request to CVAT (of each read, for a download)."""

    cvat_retry_attempts: int = Field(3, ge=1)
    """Tries of one request that fails with 5xx, 408, 429, a timeout or a broken connection."""

    cvat_retry_backoff_seconds: float = Field(1.0, ge=0)
    """Wait before the second try; doubled for each further try, up to the max."""

    cvat_retry_backoff_max_seconds: float = Field(30.0, ge=0)
    """Longest wait between two tries."""

    @field_validator("cvat_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http:// or https:// URL, e.g. http://cvat:8080")
        return value.rstrip("/")


def cvat_headers(
    token: str, scheme: AuthScheme = "bearer", organization: str = ""
) -> dict[str, str]:
    """The headers that authenticate a request to CVAT (and pick the organisation)."""
    if scheme not in ("bearer", "token"):
        raise ValueError(f"auth scheme must be 'bearer' or 'token', not {scheme!r}")
    headers = {"Authorization": f"{'Bearer' if scheme == 'bearer' else 'Token'} {token}"}
    if organization:
        headers["X-Organization"] = organization
    return headers


@dataclass(frozen=True)
class CvatConnection:
    """One CVAT server and organisation context, with the retry policy."""

    url: str
    token: str
    auth_scheme: AuthScheme = "bearer"
    organization: str = ""
    verify_tls: bool = True
    request_timeout: float = 60.0
    retry_attempts: int = 3
    backoff: float = 1.0
    backoff_max: float = 30.0

    @classmethod
    def from_settings(cls, settings: CvatSettings, organization: str = "") -> Self:
        """The settings' connection; ``organization`` (a request's own) wins when set."""
        return cls(
            url=settings.cvat_url,
            token=settings.cvat_token.get_secret_value(),
            auth_scheme=settings.cvat_auth_scheme,
            organization=organization or settings.cvat_organization,
            verify_tls=settings.cvat_verify_tls,
            request_timeout=settings.cvat_request_timeout_seconds,
            retry_attempts=settings.cvat_retry_attempts,
            backoff=settings.cvat_retry_backoff_seconds,
            backoff_max=settings.cvat_retry_backoff_max_seconds,
        )

    def headers(self) -> dict[str, str]:
        return cvat_headers(self.token, self.auth_scheme, self.organization)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed try number ``attempt`` (1, 2, ...)."""
        return min(self.backoff * 2 ** (attempt - 1), self.backoff_max)
