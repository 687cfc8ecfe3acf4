"""Bearer-token access to gRPC services: who may use which namespaces.

A tokens file (YAML; JSON is YAML too) lists the callers::

    tokens:
      - name: alice                 # shown in logs and job records
        token: "a-long-random-string"
        namespaces: [team-a, team-b]
      - name: ci
        sha256: "<hex SHA-256 of the token>"   # keeps the token itself out of the file
        namespaces: ["*"]                      # every namespace

``TokenAuthInterceptor`` checks ``authorization: Bearer <token>`` on every
call (health and reflection stay open for probes and tools): no or a malformed
header is UNAUTHENTICATED, an unknown token too. Servicers ask ``caller()``
for the ``Access`` of the current call and use ``Access.check(namespace)``
(PERMISSION_DENIED) or ``Access.visible(...)``. Without a tokens file there
is no interceptor and ``caller()`` answers ``Access.open()``.
``server_interceptors(tokens_file)`` gives a service's whole list (errors
mapped first, then tokens), for ``ServiceSpec.grpc_interceptors``.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
import yaml

from preannotate.errors import InvalidArgument, PermissionDenied, Unauthenticated
from preannotate.grpc_errors import guarded, wrap_handler
from preannotate.keys import NAME_PATTERN

ALL = "*"

#: Methods every caller may use without a token (Kubernetes probes, grpcurl).
OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


@dataclass(frozen=True)
class Access:
    """What the caller of one call may see: ``namespaces`` None means every one."""

    caller: str
    namespaces: frozenset[str] | None

    @classmethod
    def open(cls) -> Access:
        return cls(caller="anonymous", namespaces=None)

    def allows(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces

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
        return cls.parse(data, where=str(path))

    @classmethod
    def parse(cls, data: object, where: str = "tokens") -> TokenTable:
        if not isinstance(data, dict) or not isinstance(data.get("tokens"), list):
            raise InvalidArgument(
                f"{where}: expected a mapping with a 'tokens' list of "
                "{name, token or sha256, namespaces}"
            )
        entries = []
        seen: set[bytes] = set()
        for i, item in enumerate(data["tokens"]):
            entry = _entry(item, f"{where}: tokens[{i}]")
            if entry.digest in seen:
                raise InvalidArgument(f"{where}: tokens[{i}] repeats an earlier token")
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


def _entry(item: object, where: str) -> TokenEntry:
    if not isinstance(item, dict):
        raise InvalidArgument(f"{where}: expected a mapping, got {type(item).__name__}")
    unknown = set(item) - {"name", "token", "sha256", "namespaces"}
    if unknown:
        raise InvalidArgument(
            f"{where}: unknown keys {sorted(unknown)}; allowed: name, token, sha256, namespaces"
        )
    name = str(item.get("name") or "")
    if not name:
        raise InvalidArgument(f"{where}: give each token a 'name' (shown in logs)")
    token, sha = item.get("token"), item.get("sha256")
    if (token is None) == (sha is None):
        raise InvalidArgument(f"{where} ({name}): give exactly one of 'token' and 'sha256'")
    if token is not None:
        if not isinstance(token, str) or len(token) < 16:
            raise InvalidArgument(f"{where} ({name}): a token must be a string of 16+ characters")
        digest = hashlib.sha256(token.encode("utf-8")).digest()
    else:
        try:
            digest = bytes.fromhex(str(sha))
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise InvalidArgument(f"{where} ({name}): 'sha256' must be 64 hex digits")
    spaces = item.get("namespaces")
    if not isinstance(spaces, list) or not spaces:
        raise InvalidArgument(
            f"{where} ({name}): 'namespaces' must be a non-empty list (['*'] for all)"
        )
    if ALL in spaces:
        return TokenEntry(name, digest, None)
    for ns in spaces:
        if not isinstance(ns, str) or not NAME_PATTERN.fullmatch(ns):
            raise InvalidArgument(f"{where} ({name}): {ns!r} is not a valid namespace")
    return TokenEntry(name, digest, frozenset(spaces))


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
        return Access(caller=entry.name, namespaces=entry.namespaces)

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
