"""Bearer-token access to gRPC services: who may use which namespaces.

A tokens file (YAML; JSON is YAML too) lists the callers::

    tokens:
      - name: alice                 # shown in logs and job records
        token: "a-long-random-string"
        namespaces: [team-a, team-b]
        admin: [team-a]             # roles: admin of team-a (may cancel others' jobs)
        cvat_projects: [3, 8]       # optional: only tasks of these CVAT projects
        cvat_organizations: [lab-a] # optional: only tasks of these CVAT organisations
      - name: ci
        sha256: "<hex SHA-256 of the token>"   # keeps the token itself out of the file
        namespaces: ["*"]                      # every namespace

The file is checked with pydantic models (``TokensFile``, ``TokenSpec``), as
the webhook policy is: a bad file stops the service with the file's name and
one line per bad entry (its position and name).

``TokenAuthInterceptor`` checks ``authorization: Bearer <token>`` on every
call (health and reflection stay open for probes and tools): no or a malformed
header is UNAUTHENTICATED, an unknown token too. Servicers ask ``caller()``
for the ``Access`` of the current call and use ``Access.check(namespace)``
(PERMISSION_DENIED) or ``Access.visible(...)``; ``Access.check_admin``
asks for the admin role of a namespace (``admin:`` in the file, a subset of
the token's namespaces; ``["*"]``: every namespace it may use).
``cvat_projects`` / ``cvat_organizations`` limit the CVAT tasks a token may
name (``Access.cvat``, a ``CvatScope``; none given: every task the service's
CVAT token reaches); ``preannotate.cvat.scope.check_task`` asks CVAT where a
task lies before a service exports or writes anything. Without a
tokens file there is no interceptor and ``caller()`` answers
``Access.open()``, which may do everything.
``server_interceptors(tokens_file)`` gives a service's whole list (errors
mapped first, then tokens), for ``ServiceSpec.grpc_interceptors``.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import grpc
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from preannotate.errors import InvalidArgument, PermissionDenied, Unauthenticated
from preannotate.grpc_errors import guarded, wrap_handler
from preannotate.keys import NAME_PATTERN

ALL = "*"
#: A CVAT organisation slug as CVAT accepts it.
ORG_SLUG = re.compile(r"[A-Za-z0-9_-]{1,16}")

#: Methods every caller may use without a token (Kubernetes probes, grpcurl).
OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


@dataclass(frozen=True)
class CvatScope:
    """The CVAT tasks a caller may name: None means no limit of that kind."""

    projects: frozenset[int] | None = None
    organizations: frozenset[str] | None = None

    @property
    def limited(self) -> bool:
        return self.projects is not None or self.organizations is not None


@dataclass(frozen=True)
class Access:
    """What the caller of one call may see: ``namespaces`` None means every one."""

    caller: str
    namespaces: frozenset[str] | None
    #: Namespaces where the caller holds the admin role; None: every one it may use.
    admin: frozenset[str] | None = frozenset()
    #: The CVAT projects and organisations whose tasks the caller may name.
    cvat: CvatScope = CvatScope()

    @classmethod
    def open(cls) -> Access:
        return cls(caller="anonymous", namespaces=None, admin=None)

    def allows(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces

    def is_admin(self, namespace: str) -> bool:
        return self.allows(namespace) and (self.admin is None or namespace in self.admin)

    def check_admin(self, namespace: str, action: str) -> str:
        """Return ``namespace`` if the caller is its admin, else raise PermissionDenied."""
        if not self.is_admin(namespace):
            raise PermissionDenied(
                f"{action} needs the admin role of namespace {namespace!r}, which the token "
                f"of {self.caller!r} does not hold (add {namespace!r} to its 'admin' list "
                "in the tokens file)"
            )
        return namespace

    def check(self, namespace: str) -> str:
        """Return ``namespace`` if the caller may use it, else raise PermissionDenied."""
        if not self.allows(namespace):
            allowed = ", ".join(sorted(self.namespaces or ())) or "none"
            raise PermissionDenied(
                f"the token of {self.caller!r} may not use namespace {namespace!r}; "
                f"it may use: {allowed}"
            )
        return namespace

    def visible(self, wanted: str = "") -> list[str] | None:
        """Namespaces to show for a request naming ``wanted`` ('' = all the caller's).

        None means "every namespace" (an open or an all-namespaces caller).
        """
        if wanted:
            return [self.check(wanted)]
        return None if self.namespaces is None else sorted(self.namespaces)


@dataclass(frozen=True)
class TokenEntry:
    name: str
    digest: bytes
    namespaces: frozenset[str] | None
    admin: frozenset[str] | None = frozenset()
    cvat: CvatScope = CvatScope()


def _text(value: object) -> str:
    """A name written as any scalar (``name: 7``) is its text; nothing at all is ""."""
    return "" if value is None else str(value)


def _optional_text(value: object) -> str | None:
    return None if value is None else str(value)


class TokenSpec(BaseModel):
    """One entry of the tokens file, as written."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, BeforeValidator(_text)] = Field("", validate_default=True)
    token: str | None = None
    sha256: Annotated[str | None, BeforeValidator(_optional_text)] = None
    namespaces: list[str] = Field(default_factory=list, validate_default=True)
    admin: list[str] = Field(default_factory=list)
    cvat_projects: list[int] | None = None
    cvat_organizations: list[str] | None = None

    @field_validator("name")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value:
            raise ValueError("give each token a 'name' (shown in logs)")
        return value

    @field_validator("token")
    @classmethod
    def _long(cls, value: str | None) -> str | None:
        if value is not None and len(value) < 16:
            raise ValueError("a token must be a string of 16+ characters")
        return value

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        if value is not None and len(_from_hex(value)) != 32:
            raise ValueError("'sha256' must be 64 hex digits")
        return value

    @field_validator("namespaces")
    @classmethod
    def _spaces(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("'namespaces' must be a non-empty list (['*'] for all)")
        if ALL not in value:
            for ns in value:
                if not NAME_PATTERN.fullmatch(ns):
                    raise ValueError(f"{ns!r} is not a valid namespace")
        return value

    @field_validator("admin")
    @classmethod
    def _admin_names(cls, value: list[str]) -> list[str]:
        for ns in value:
            if ns != ALL and not NAME_PATTERN.fullmatch(ns):
                raise ValueError(f"{ns!r} is not a valid namespace")
        return value

    @field_validator("cvat_projects")
    @classmethod
    def _project_ids(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or any(p < 1 for p in value)):
            raise ValueError("'cvat_projects' must list CVAT project ids (1 or more)")
        return value

    @field_validator("cvat_organizations")
    @classmethod
    def _slugs(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or not all(ORG_SLUG.fullmatch(s) for s in value)):
            raise ValueError(
                "'cvat_organizations' must list CVAT organisation slugs (letters, digits, '-')"
            )
        return value

    @model_validator(mode="after")
    def _admin_within(self) -> TokenSpec:
        if ALL in self.admin or ALL in self.namespaces:
            return self
        outside = sorted(set(self.admin) - set(self.namespaces))
        if outside:
            raise ValueError(
                f"'admin' names {outside}, outside the token's 'namespaces' {self.namespaces}"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _one_secret(cls, data: object) -> object:
        if isinstance(data, dict) and (data.get("token") is None) == (data.get("sha256") is None):
            raise ValueError("give exactly one of 'token' and 'sha256'")
        return data

    def entry(self) -> TokenEntry:
        if self.token is not None:
            digest = hashlib.sha256(self.token.encode("utf-8")).digest()
        else:
            digest = _from_hex(self.sha256 or "")
        spaces = None if ALL in self.namespaces else frozenset(self.namespaces)
        admin = None if ALL in self.admin else frozenset(self.admin)
        cvat = CvatScope(
            projects=None if self.cvat_projects is None else frozenset(self.cvat_projects),
            organizations=None
            if self.cvat_organizations is None
            else frozenset(self.cvat_organizations),
        )
        return TokenEntry(self.name, digest, spaces, admin, cvat)


class TokensFile(BaseModel):
    """The whole file: ``tokens:`` and its entries (other top-level keys are ignored)."""

    tokens: list[TokenSpec]


def _from_hex(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        return b""


SHAPE = "expected a mapping with a 'tokens' list of {name, token or sha256, namespaces, admin}"
KEYS = "name, token, sha256, namespaces, admin, cvat_projects, cvat_organizations"


def _problems(exc: ValidationError, data: object) -> list[str]:
    """One line per problem, naming the entry by its position and its name."""
    items = data.get("tokens") if isinstance(data, dict) else None
    found: dict[str, list[str]] = {}
    unknown: dict[str, list[str]] = {}
    for err in exc.errors():
        loc = err["loc"]
        if len(loc) < 2:  # not a mapping, or no 'tokens' list
            return [SHAPE]
        item = items[int(loc[1])] if isinstance(items, list) else None
        name = item.get("name") if isinstance(item, dict) else None
        label = f"tokens[{loc[1]}]" + (f" ({name})" if name else "")
        field = str(loc[2]) if len(loc) > 2 else ""
        if err["type"] == "extra_forbidden":
            unknown.setdefault(label, []).append(field)
        elif err["type"] == "value_error":
            found.setdefault(label, []).append(str(err["ctx"]["error"]))
        elif not field:
            found.setdefault(label, []).append(f"expected a mapping, got {type(item).__name__}")
        else:
            found.setdefault(label, []).append(f"{field}: {err['msg']}")
    for label, keys in unknown.items():
        found.setdefault(label, []).append(f"unknown keys {sorted(keys)}; allowed: {KEYS}")
    return [f"{label}: {message}" for label, messages in found.items() for message in messages]


class TokenTable:
    """The callers of a tokens file; ``lookup`` compares in constant time."""

    def __init__(self, entries: Iterable[TokenEntry]) -> None:
        self.entries = list(entries)
        if not self.entries:
            raise InvalidArgument("the tokens file lists no tokens")

    @classmethod
    def load(cls, path: str | Path) -> TokenTable:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise InvalidArgument(f"tokens file {str(path)!r} cannot be read: {exc}") from exc
        except yaml.YAMLError as exc:
            raise InvalidArgument(f"tokens file {str(path)!r} is not YAML: {exc}") from exc
        return cls.parse(data, where=f"tokens file {str(path)!r}")

    @classmethod
    def parse(cls, data: object, where: str = "the tokens file") -> TokenTable:
        """Check ``data`` (the file's YAML); ``InvalidArgument`` names ``where`` and each bad entry."""
        try:
            specs = TokensFile.model_validate(data).tokens
        except ValidationError as exc:
            lines = _problems(exc, data)
            raise InvalidArgument(f"{where} is not valid:\n  " + "\n  ".join(lines)) from None
        if not specs:
            raise InvalidArgument(f"{where} lists no tokens")
        entries = []
        seen: set[bytes] = set()
        for i, spec in enumerate(specs):
            entry = spec.entry()
            if entry.digest in seen:
                raise InvalidArgument(
                    f"{where}: tokens[{i}] ({spec.name}) repeats an earlier token"
                )
            seen.add(entry.digest)
            entries.append(entry)
        return cls(entries)

    def lookup(self, token: str) -> TokenEntry | None:
        digest = hashlib.sha256(token.encode("utf-8")).digest()
        found = None
        for entry in self.entries:  # no early exit: the time does not tell which matched
            if hmac.compare_digest(entry.digest, digest):
                found = entry
        return found


_current: contextvars.ContextVar[Access | None] = contextvars.ContextVar(
    "preannotate_access", default=None
)


def caller() -> Access:
    """The ``Access`` of the gRPC call being served (open when no tokens are configured)."""
    return _current.get() or Access.open()


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The token of an ``authorization: Bearer <token>`` header; Unauthenticated otherwise."""
    for key, value in metadata or ():
        if key.lower() != "authorization":
            continue
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("the authorization header must be 'Bearer <token>'")
        return token.strip()
    raise Unauthenticated(
        "this server needs a token: send 'authorization: Bearer <token>' "
        "(the CLI reads PREANNOTATE_TOKEN)"
    )


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates every call and makes its ``Access`` the current one."""

    def __init__(self, table: TokenTable) -> None:
        self.table = table

    def authenticate(self, metadata) -> Access:
        token = bearer_token(metadata)
        entry = self.table.lookup(token)
        if entry is None:
            raise Unauthenticated("the token is not known to this server")
        return Access(
            caller=entry.name, namespaces=entry.namespaces, admin=entry.admin, cvat=entry.cvat
        )

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler_call_details.method.startswith(OPEN_PREFIXES):
            return handler

        def before(context) -> None:
            _current.set(self.authenticate(context.invocation_metadata()))

        return wrap_handler(handler, lambda b, s: guarded(b, s, before))


def server_interceptors(tokens_file: str | Path | None) -> list[grpc.aio.ServerInterceptor]:
    """The interceptors of a gRPC service: errors mapped, and tokens checked when a file is set.

    Raises ``InvalidArgument`` (with the file and the entry) for a bad tokens file.
    """
    from preannotate.grpc_errors import ErrorInterceptor

    out: list[grpc.aio.ServerInterceptor] = [ErrorInterceptor()]
    if tokens_file:
        out.append(TokenAuthInterceptor(TokenTable.load(tokens_file)))
    return out
