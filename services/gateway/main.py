"""Entry point of the gateway: load the settings, run the service."""

from __future__ import annotations

from preannotate import runner
from preannotate.errors import InvalidArgument
from preannotate.settings import SettingsError, load
from services.gateway.service import build
from services.gateway.settings import GatewaySettings


def main() -> None:
    settings = load(GatewaySettings)
    try:
        spec = build(settings)
    except InvalidArgument as exc:  # the policy or tokens file; the message names it
        raise SettingsError(f"gateway: {exc}") from None
    runner.run(spec, settings)


if __name__ == "__main__":
    main()
