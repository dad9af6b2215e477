"""What docker-compose.yml and infra/k8s/ are checked against: the service packages under services/,
the settings they read, the address each one listens on, and the environment the image sets.

Everything here is derived from the code, so that adding a service (or a setting, or moving a port)
without its containers fails the deployment tests rather than a deployment.
"""

from __future__ import annotations

import base64
import importlib
import os
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from backup_common.adapters.settings import ENV_PREFIX, Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICES_DIR = REPO_ROOT / "services"
DOCKERFILE = REPO_ROOT / "Dockerfile"

# Valid stand-ins for the two secrets, for loading the settings a container would get.
TEST_JWT_SECRET = "x" * 48
TEST_MASTER_KEY = base64.b64encode(bytes(32)).decode()

Address = Callable[[Settings], tuple[str, int]]


@dataclass(frozen=True)
class ServicePackage:
    name: str  # as operators name it: its directory under services/ (gateway, database_backup, ...)
    package: str  # its Python package, run as `python -m <package>`

    @property
    def command(self) -> list[str]:
        return ["python", "-m", self.package]

    def bootstrap_source(self) -> str:
        return (SERVICES_DIR / self.name / self.package / "bootstrap.py").read_text()

    @property
    def checks_tokens(self) -> bool:
        """Whether it checks admin tokens, hence needs BACKUP_JWT_SECRET."""
        return "TokenVerifier(" in self.bootstrap_source()

    @property
    def reaches_the_source(self) -> bool:
        """Whether it connects to the application's database server (BACKUP_SOURCE_MYSQL_URL)."""
        return re.search(r"settings\.(source|drill_server)\b", self.bootstrap_source()) is not None


@cache
def service_packages() -> dict[str, ServicePackage]:
    """Every service: services/<name>/<package>/__main__.py."""
    found: dict[str, ServicePackage] = {}
    for main in sorted(SERVICES_DIR.glob("*/*/__main__.py")):
        name = main.parent.parent.name
        assert name not in found, f"services/{name} holds more than one package with a __main__"
        found[name] = ServicePackage(name, main.parent.name)
    assert found, "no service package under services/"
    return found


def setting_names() -> set[str]:
    """Every environment variable the settings read."""
    return {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}


def required_setting_names() -> set[str]:
    """The variables without a default: a container must set them."""
    return {f"{ENV_PREFIX}{name.upper()}" for name, field in Settings.model_fields.items() if field.is_required()}


def settings_from(environment: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a process started with exactly these BACKUP_* variables reads."""
    with monkeypatch.context() as patch:
        for key in list(os.environ):
            if key.startswith(ENV_PREFIX):
                patch.delenv(key)
        for key, value in environment.items():
            patch.setenv(key, value)
        return Settings()


def listen_address(service: ServicePackage, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> tuple[str, int]:
    """Where the service's main() would serve /healthz, /readyz and /metrics, given these settings."""
    bootstrap = importlib.import_module(f"{service.package}.bootstrap")
    captured: list[Address] = []

    def serve(name: str, create_app: Any, address: Address) -> None:
        captured.append(address)

    with monkeypatch.context() as patch:
        patch.setattr(bootstrap, "serve", serve)
        bootstrap.main()
    assert len(captured) == 1, f"{service.package}.bootstrap.main() does not call serve() once"
    return captured[0](settings)


def _instructions(stage: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile stage, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in stage.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def final_stage_instructions() -> list[tuple[str, str]]:
    """The instructions of the Dockerfile's last stage: the image that runs."""
    text = DOCKERFILE.read_text()
    stages = re.split(r"^FROM\s", text, flags=re.M)
    return _instructions("FROM " + stages[-1])


def image_environment() -> dict[str, str]:
    """The ENV the image sets (KEY=VALUE forms)."""
    environment: dict[str, str] = {}
    for instruction, arguments in final_stage_instructions():
        if instruction == "ENV":
            for word in shlex.split(arguments):
                key, separator, value = word.partition("=")
                assert separator, f"ENV {arguments!r}: use the KEY=VALUE form"
                environment[key] = value
    return environment


def image_user() -> tuple[int, int]:
    """The uid and gid the image runs as (its last USER, numeric)."""
    users = [arguments for instruction, arguments in final_stage_instructions() if instruction == "USER"]
    assert users, "the image runs as root"
    uid, _, gid = users[-1].partition(":")
    return int(uid), int(gid or uid)


def go_duration_seconds(text: str) -> float:
    """Seconds of a Go duration as Compose prints it: 1m15s, 30s, 500ms, 1h0m0s."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)", text)
    assert "".join(number + unit for number, unit in parts) == text, f"not a duration: {text!r}"
    assert parts, "an empty duration"
    return sum(float(number) * units[unit] for number, unit in parts)
