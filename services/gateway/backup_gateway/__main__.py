"""`python -m backup_gateway`: serves the admin API until SIGINT or SIGTERM."""

from __future__ import annotations

from aiohttp import web

from backup_common.adapters.logs import configure_logging
from backup_common.adapters.settings import SettingsError, load_settings
from backup_gateway.app import create_app


def main() -> None:
    settings = load_settings()
    configure_logging(settings, "gateway")
    try:
        app = create_app(settings)
    except SettingsError as exc:
        raise SystemExit(f"invalid configuration:\n{exc}") from None
    web.run_app(app, host=settings.gateway_host, port=settings.gateway_port, print=None, access_log=None)


if __name__ == "__main__":
    main()
