"""How a command-line client reaches one of the product's gRPC services.

``Connection`` holds the address, the bearer token and the TLS choice, reads
them from the environment and opens the channel. Each client subclasses it
to name its service's variables::

    @dataclass(frozen=True)
    class Connection(grpc_client.Connection):
        env_prefix = "PREANNOTATE_GATEWAY"
        default_address = "127.0.0.1:50051"
        address: str = default_address

so that ``from_env`` reads ``PREANNOTATE_GATEWAY_ADDRESS`` (default
``default_address``), ``PREANNOTATE_TOKEN`` (sent as ``authorization:
Bearer``), ``PREANNOTATE_GATEWAY_TLS=1`` or ``PREANNOTATE_GATEWAY_CA_FILE`` (a
PEM bundle, which turns TLS on).

A token sent without TLS to an address other than this machine's loopback
could be read on the way: ``channel()`` says so on stderr (and connects).
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Self

import grpc

#: Values of a ``*_TLS`` variable that turn TLS on.
_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Connection:
    """Where a gRPC service is and how to authenticate to it."""

    #: ``<prefix>_ADDRESS``, ``<prefix>_TLS``, ``<prefix>_CA_FILE``: set by each client.
    env_prefix: ClassVar[str] = ""
    default_address: ClassVar[str] = ""
    #: Extra channel arguments, e.g. ``("grpc.max_send_message_length", n)``.
    channel_options: ClassVar[tuple[tuple[str, int], ...]] = ()

    address: str
    token: str = ""
    tls: bool = False
    ca_file: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        if not cls.env_prefix:
            raise TypeError(f"{cls.__name__} names no env_prefix to read the environment with")
        env = os.environ if env is None else env
        ca = env.get(f"{cls.env_prefix}_CA_FILE", "")
        tls = env.get(f"{cls.env_prefix}_TLS", "").lower() in _TRUE
        return cls(
            address=env.get(f"{cls.env_prefix}_ADDRESS", "") or cls.default_address,
            token=env.get("PREANNOTATE_TOKEN", ""),
            tls=tls or bool(ca),
            ca_file=Path(ca) if ca else None,
        )

    def plaintext_warning(self) -> str:
        """The warning for a token sent without TLS to a non-local address ("" if none)."""
        if not self.token or self.tls or is_local(self.address):
            return ""
        prefix = self.env_prefix or "the client's"
        return (
            f"warning: sending PREANNOTATE_TOKEN without TLS to {self.address}: anyone on "
            f"the way can read it; set {prefix}_TLS=1 or {prefix}_CA_FILE to use TLS"
        )

    def channel(self) -> grpc.aio.Channel:
        options = list(self.channel_options)
        warning = self.plaintext_warning()
        if warning:
            print(warning, file=sys.stderr)
        if not self.tls:
            return grpc.aio.insecure_channel(self.address, options=options)
        roots = self.ca_file.read_bytes() if self.ca_file else None
        creds = grpc.ssl_channel_credentials(roots)
        return grpc.aio.secure_channel(self.address, creds, options=options)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


def is_local(address: str) -> bool:
    """Whether a gRPC target is this machine: a loopback host or a unix socket."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    target = address.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:")
    if target.startswith("["):
        host = target[1:].partition("]")[0]
    elif target.count(":") > 1:
        host = target  # a bare IPv6 address
    else:
        host = target.rpartition(":")[0] if ":" in target else target
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
