"""infra/k8s/, checked without a cluster.

The resources are those kustomization.yaml lists (and the Secret its secretGenerator makes, from
secrets.env.example), read here directly: every file it lists must exist, and every manifest in the
folder must be listed. The built-in kinds are validated with kubernetes-validate against the
Kubernetes versions below, strictly (an unknown field fails); KEDA's kinds, which no Kubernetes
schema holds, against the JSON schemas written here from KEDA's documentation. When kubectl (or
kustomize) is on PATH, the kustomization is also rendered and its references checked after
kustomize renamed what it renames.

Then the cross-references: a Deployment for every service package and none for a package that does
not exist, its probes on /readyz and /healthz at the port that service's settings make it listen
on, resources, the Secrets, ConfigMaps and claims it names, the queues KEDA watches, the CronJob.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from aiohttp import web
from cronsim import CronSim

from backup_common.adapters.amqp.topology import Topology, load_service_queues
from backup_common.cli import build_parser
from backup_common.cli.api_client import API_TOKEN_VARIABLE, API_URL_VARIABLE, resolve_api
from backup_common.domain.documents import SettingsDocument
from backup_common.domain.events import BackupPart
from backup_common.domain.jobs import part_job_key, restore_job_key, verify_job_key
from backup_common.paths import CONFIG_DIR
from backup_verification.handlers import ROUND_PREFIX, TICK_SECONDS
from tests.unit.deploy_support import (
    REPO_ROOT,
    TEST_JWT_SECRET,
    TEST_MASTER_KEY,
    ServicePackage,
    image_environment,
    image_user,
    listen_address,
    required_setting_names,
    service_packages,
    setting_names,
    settings_from,
)

K8S_DIR = REPO_ROOT / "infra" / "k8s"
KUSTOMIZATION = K8S_DIR / "kustomization.yaml"
# The oldest and the newest minor that current KEDA releases support; kubernetes-validate ships both.
KUBERNETES_VERSIONS = ("1.30.0", "1.33.0")
KEDA_API = "keda.sh/v1alpha1"
# Scaled by KEDA on their queues, down to zero. The others run all the time: the gateway serves the
# API, retention's timers run the schedule.
QUEUE_WORKERS = {"database_backup", "file_backup", "verification"}
# They only read the backups (downloads; checks): mounted read-only. Every other service writes.
STORAGE_READERS = {"gateway", "verification"}
STORAGE_CLAIM = "backup-storage"
# The web application's trees: its own claims, which the kustomization does not create.
APPLICATION_CLAIMS = {"app-uploads", "app-configs", "app-logs"}
TREE_SETTINGS = ("BACKUP_UPLOADS_DIR", "BACKUP_CONFIGS_DIR", "BACKUP_LOGS_DIR")
CRONJOB_COMMAND = ["backupctl", "backup", "--type", "full", "--wait"]
# A stop shorter than this could cut a hand-back short.
MIN_GRACE_SECONDS = 30
# The job leases of each queue worker, as LIKE patterns of their job keys.
LEASE_PATTERNS = {
    "database_backup": {part_job_key("%", BackupPart.DATABASE), restore_job_key("%", BackupPart.DATABASE)},
    "file_backup": {part_job_key("%", BackupPart.FILES), restore_job_key("%", BackupPart.FILES)},
    "verification": {verify_job_key("%"), f"{ROUND_PREFIX}%"},
}

# --- KEDA's kinds, from its documentation (ScaledObject, TriggerAuthentication; scalers rabbitmq,
# mysql, cron): no Kubernetes schema holds them, and the CRDs are not shipped with anything here.

_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {"name": _NAME, "namespace": _NAME, "labels": _STRINGS, "annotations": _STRINGS},
}


def _scaler(kind: str, required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "if": {"properties": {"type": {"const": kind}}},
        "then": {
            "properties": {"metadata": {"required": required, "properties": properties, "additionalProperties": False}}
        },
    }


_TRIGGER = {
    "type": "object",
    "required": ["type", "metadata"],
    "additionalProperties": False,
    "properties": {
        "type": {"enum": ["rabbitmq", "mysql", "cron"]},  # the scalers this schema knows
        "name": {"type": "string"},
        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
        "useCachedMetrics": {"type": "boolean"},
        "metadata": _STRINGS,  # KEDA takes every value as a string
        "authenticationRef": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {"name": _NAME, "kind": {"enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]}},
        },
    },
    "allOf": [
        _scaler(
            "rabbitmq",
            ["queueName", "mode", "value"],
            {
                "queueName": {"type": "string"},
                "mode": {"enum": ["QueueLength", "MessageRate"]},
                "value": {"type": "string", "pattern": r"^\d+(\.\d+)?$"},
                "activationValue": {"type": "string", "pattern": r"^\d+(\.\d+)?$"},
                "protocol": {"enum": ["auto", "amqp", "http"]},
                "vhostName": {"type": "string"},
                "host": {"type": "string"},
                "hostFromEnv": {"type": "string"},
            },
        ),
        _scaler(
            "mysql",
            ["query", "queryValue"],
            {
                "query": {"type": "string"},
                "queryValue": {"type": "string", "pattern": r"^\d+(\.\d+)?$"},
                "activationQueryValue": {"type": "string", "pattern": r"^\d+(\.\d+)?$"},
                "connectionStringFromEnv": {"type": "string"},
                "host": {"type": "string"},
                "port": {"type": "string"},
                "username": {"type": "string"},
                "dbName": {"type": "string"},
                "passwordFromEnv": {"type": "string"},
            },
        ),
        _scaler(
            "cron",
            ["timezone", "start", "end", "desiredReplicas"],
            {
                "timezone": {"type": "string"},
                "start": {"type": "string"},
                "end": {"type": "string"},
                "desiredReplicas": {"type": "string", "pattern": r"^\d+$"},
            },
        ),
    ],
}

KEDA_SCHEMAS: dict[str, dict[str, Any]] = {
    "ScaledObject": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": KEDA_API},
            "kind": {"const": "ScaledObject"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["scaleTargetRef", "triggers"],
                "additionalProperties": False,
                "properties": {
                    "scaleTargetRef": {
                        "type": "object",
                        "required": ["name"],
                        "additionalProperties": False,
                        "properties": {
                            "name": _NAME,
                            "kind": {"type": "string"},
                            "apiVersion": {"type": "string"},
                            "envSourceContainerName": {"type": "string"},
                        },
                    },
                    "pollingInterval": {"type": "integer", "minimum": 1},
                    "cooldownPeriod": {"type": "integer", "minimum": 0},
                    "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                    "idleReplicaCount": {"type": "integer", "minimum": 0},
                    "minReplicaCount": {"type": "integer", "minimum": 0},
                    "maxReplicaCount": {"type": "integer", "minimum": 1},
                    "advanced": {"type": "object"},
                    "fallback": {
                        "type": "object",
                        "required": ["failureThreshold", "replicas"],
                        "properties": {"failureThreshold": {"type": "integer"}, "replicas": {"type": "integer"}},
                    },
                    "triggers": {"type": "array", "minItems": 1, "items": _TRIGGER},
                },
            },
        },
    },
    "TriggerAuthentication": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": KEDA_API},
            "kind": {"const": "TriggerAuthentication"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["secretTargetRef"],
                "additionalProperties": False,
                "properties": {
                    "secretTargetRef": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["parameter", "name", "key"],
                            "additionalProperties": False,
                            "properties": {"parameter": {"type": "string"}, "name": _NAME, "key": {"type": "string"}},
                        },
                    }
                },
            },
        },
    },
}


# --- Reading the kustomization.


@cache
def kustomization() -> dict[str, Any]:
    document = yaml.safe_load(KUSTOMIZATION.read_text())
    assert isinstance(document, dict)
    return document


def listed(key: str) -> list[Path]:
    return [K8S_DIR / str(entry) for entry in kustomization().get(key) or []]


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as kustomize reads an `envs` file (comments and blank lines skipped)."""
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, separator, value = line.partition("=")
            assert separator, f"{path.name}: not KEY=VALUE: {line!r}"
            values[key.strip()] = value
    return values


def example_of(env_file: Path) -> Path:
    """The committed example of a git-ignored env file."""
    return env_file.with_name(env_file.name + ".example")


def generated_secrets() -> list[dict[str, Any]]:
    """The Secrets the secretGenerator makes, from the examples of their (git-ignored) env files."""
    found = []
    for generator in kustomization().get("secretGenerator") or []:
        values: dict[str, str] = {}
        for env_file in generator.get("envs") or []:
            values |= read_env_file(example_of(K8S_DIR / env_file))
        found.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": generator["name"]},
                "type": "Opaque",
                "stringData": values,
            }
        )
    return found


@cache
def documents() -> list[dict[str, Any]]:
    found = []
    for path in listed("resources"):
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                assert isinstance(document, dict), f"{path.name}: not a mapping"
                found.append(document)
    return found + generated_secrets()


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    found = {}
    for document in documents():
        if document["kind"] == kind:
            name = document["metadata"]["name"]
            assert name not in found, f"two {kind}s named {name}"
            found[name] = document
    return found


def one(kind: str, name: str) -> dict[str, Any]:
    found = of_kind(kind)
    assert name in found, f"no {kind} {name}"
    return found[name]


def deployment_of(service: ServicePackage) -> dict[str, Any]:
    """The Deployment whose pods are the service: labelled app.kubernetes.io/component=<service>."""
    found = [
        deployment
        for deployment in of_kind("Deployment").values()
        if pod_template(deployment)["metadata"]["labels"].get("app.kubernetes.io/component") == service.name
    ]
    assert len(found) == 1, f"{len(found)} Deployments for {service.name}"
    return found[0]


def pod_template(workload: dict[str, Any]) -> dict[str, Any]:
    if workload["kind"] == "CronJob":
        template: dict[str, Any] = workload["spec"]["jobTemplate"]["spec"]["template"]
    else:
        template = workload["spec"]["template"]
    return template


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = pod_template(workload)["spec"]
    return spec


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1, f"{workload['metadata']['name']}: one container expected"
    found: dict[str, Any] = containers[0]
    return found


def workloads() -> Iterator[dict[str, Any]]:
    yield from of_kind("Deployment").values()
    yield from of_kind("CronJob").values()


def secret_values(name: str) -> dict[str, str]:
    values: dict[str, str] = one("Secret", name).get("stringData") or {}
    return values


def effective_environment(workload: dict[str, Any]) -> dict[str, str]:
    """What the container's process sees: the image's ENV, then envFrom, then env; the secrets with
    their examples' values, but valid stand-ins for the JWT secret, the master key and the webhook key."""
    stand_ins = {
        "BACKUP_JWT_SECRET": TEST_JWT_SECRET,
        "BACKUP_MASTER_KEY": TEST_MASTER_KEY,
        "BACKUP_NOTIFICATION_SECRET": "n" * 48,
    }
    environment = image_environment()
    found = container(workload)
    for source in found.get("envFrom") or []:
        if "configMapRef" in source:
            environment |= one("ConfigMap", source["configMapRef"]["name"])["data"]
        else:
            environment |= secret_values(source["secretRef"]["name"])
    for variable in found.get("env") or []:
        if "value" in variable:
            environment[variable["name"]] = str(variable["value"])
            continue
        reference = variable["valueFrom"]
        if "secretKeyRef" in reference:
            key = reference["secretKeyRef"]["key"]
            environment[variable["name"]] = stand_ins.get(key) or secret_values(reference["secretKeyRef"]["name"])[key]
        else:
            key = reference["configMapKeyRef"]["key"]
            environment[variable["name"]] = one("ConfigMap", reference["configMapKeyRef"]["name"])["data"][key]
    return environment


def set_env_names(workload: dict[str, Any]) -> set[str]:
    """The variables the manifest itself sets (not the image)."""
    found = container(workload)
    names = {variable["name"] for variable in found.get("env") or []}
    for source in found.get("envFrom") or []:
        if "configMapRef" in source:
            names |= set(one("ConfigMap", source["configMapRef"]["name"])["data"])
    return names


def container_port(workload: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    for entry in container(workload).get("ports") or []:
        if entry.get("name") == port:
            return int(entry["containerPort"])
    raise AssertionError(f"{workload['metadata']['name']}: no container port named {port}")


def mounts(workload: dict[str, Any]) -> dict[str, tuple[dict[str, Any], bool]]:
    """mountPath -> (the volume, read_only)."""
    volumes = {volume["name"]: volume for volume in pod_spec(workload).get("volumes") or []}
    found = {}
    for mount in container(workload).get("volumeMounts") or []:
        assert mount["name"] in volumes, f"{workload['metadata']['name']}: no volume {mount['name']}"
        found[mount["mountPath"]] = (volumes[mount["name"]], bool(mount.get("readOnly", False)))
    return found


def claim_at(workload: dict[str, Any], path: Path | str) -> tuple[str, bool]:
    found = mounts(workload).get(str(path))
    name = workload["metadata"]["name"]
    assert found is not None, f"{name}: nothing mounted at {path}"
    volume, read_only = found
    assert "persistentVolumeClaim" in volume, f"{name}: {path} is not a claim"
    return volume["persistentVolumeClaim"]["claimName"], read_only


def service_items() -> list[ServicePackage]:
    return list(service_packages().values())


def service_ids() -> list[str]:
    return list(service_packages())


def quantity(text: str | int) -> float:
    """A Kubernetes quantity (100m, 2, 512Mi, 1Gi) as a number."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|Ti|k|M|G|T)?", str(text))
    assert match, f"not a quantity: {text!r}"
    factors = {None: 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    binary = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    unit = match.group(2)
    return float(match.group(1)) * (binary[unit] if unit in binary else factors[unit])


def validate_built_in(document: dict[str, Any], version: str) -> None:
    """Fails naming the object and the field (not with the whole schema) when the version refuses it."""
    problem = None
    try:
        kubernetes_validate.validate(copy.deepcopy(document), version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        problem = f"{'/'.join(str(part) for part in exc.path)}: {exc.message}"
    if problem is not None:  # outside the except: the error's chain would print the whole schema
        pytest.fail(f"Kubernetes {version}: {document['kind']} {document['metadata']['name']}: {problem}")


# --- The kustomization and the manifests' validity.


def test_every_file_the_kustomization_lists_exists_and_every_manifest_in_the_folder_is_listed() -> None:
    resources, configurations = listed("resources"), listed("configurations")
    for path in [*resources, *configurations]:
        assert path.is_file(), f"kustomization.yaml lists {path.name}, which does not exist"
    manifests = {path for pattern in ("*.yaml", "*.yml") for path in K8S_DIR.glob(pattern)} - {KUSTOMIZATION}
    unlisted = manifests - set(resources) - set(configurations)
    assert not unlisted, f"not in kustomization.yaml: {sorted(path.name for path in unlisted)}"


def test_the_secrets_come_from_a_git_ignored_env_file_kept_out_of_the_image_whose_example_is_committed() -> None:
    generators = kustomization().get("secretGenerator") or []
    assert generators, "no secretGenerator"
    ignored = (K8S_DIR / ".gitignore").read_text().split()
    for generator in generators:
        for env_file in generator.get("envs") or []:
            assert f"/{env_file}" in ignored, f"{env_file} is not git-ignored"
            assert example_of(K8S_DIR / env_file).is_file(), f"no {env_file}.example"
    assert "infra/k8s" in (REPO_ROOT / ".dockerignore").read_text().split(), "infra/k8s is in the image's context"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_of_a_built_in_kind_is_valid_for_kubernetes(version: str) -> None:
    for document in documents():
        if document["apiVersion"] != KEDA_API:
            validate_built_in(document, version)


def test_every_keda_object_matches_its_schema_and_no_other_custom_kind_goes_unchecked() -> None:
    for document in documents():
        if document["apiVersion"] != KEDA_API:
            continue
        assert document["kind"] in KEDA_SCHEMAS, f"no schema for {document['kind']}"
        jsonschema.validate(document, KEDA_SCHEMAS[document["kind"]])


def test_the_keda_schemas_refuse_what_keda_would() -> None:
    scaled = copy.deepcopy(next(iter(of_kind("ScaledObject").values())))
    scaled["spec"]["triggers"][0]["metadata"]["value"] = 1  # not a string
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, KEDA_SCHEMAS["ScaledObject"])
    scaled = copy.deepcopy(next(iter(of_kind("ScaledObject").values())))
    scaled["spec"]["minReplicas"] = 0  # misspelt
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, KEDA_SCHEMAS["ScaledObject"])


def test_the_namespace_enforces_the_restricted_pod_security_standard() -> None:
    namespace = one("Namespace", kustomization()["namespace"])
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# --- One Deployment per service, both ways.


@pytest.mark.parametrize("package", service_items(), ids=service_ids())
def test_every_service_package_has_a_deployment_that_runs_it(package: ServicePackage) -> None:
    deployment = deployment_of(package)
    assert deployment["metadata"]["name"] == package.package.replace("_", "-")
    assert container(deployment)["command"] == package.command
    assert container(deployment)["image"] == kustomization()["images"][0]["name"]


def test_every_deployment_runs_a_service_package_that_exists() -> None:
    packages = service_packages()
    for deployment in of_kind("Deployment").values():
        component = pod_template(deployment)["metadata"]["labels"].get("app.kubernetes.io/component")
        assert component in packages, f"Deployment {deployment['metadata']['name']} runs no service package (stale?)"
        assert (
            deployment["spec"]["selector"]["matchLabels"].items()
            <= pod_template(deployment)["metadata"]["labels"].items()
        )


@pytest.mark.parametrize("package", service_items(), ids=service_ids())
def test_every_service_is_ready_on_readyz_and_alive_on_healthz_at_the_port_it_listens_on(
    package: ServicePackage, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = deployment_of(package)
    settings = settings_from(effective_environment(deployment), monkeypatch)
    host, port = listen_address(package, settings, monkeypatch)
    assert host == "0.0.0.0", f"{package.name} listens on {host}: the kubelet cannot probe it"  # noqa: S104
    assert [entry["containerPort"] for entry in container(deployment)["ports"]] == [port]
    probes = {kind: container(deployment).get(kind) for kind in ("readinessProbe", "livenessProbe", "startupProbe")}
    expected = {"readinessProbe": "/readyz", "livenessProbe": "/healthz", "startupProbe": "/healthz"}
    for kind, path in expected.items():
        probe = probes[kind]
        assert probe is not None, f"{package.name}: no {kind}"
        assert probe["httpGet"]["path"] == path, f"{package.name}: {kind} on {probe['httpGet']['path']}"
        assert container_port(deployment, probe["httpGet"]["port"]) == port, f"{package.name}: {kind} port"


@pytest.mark.parametrize("package", service_items(), ids=service_ids())
def test_every_service_loads_its_settings_and_its_secrets_from_its_pod_environment(
    package: ServicePackage, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = deployment_of(package)
    unknown = {name for name in set_env_names(deployment) if name.startswith("BACKUP_")} - setting_names()
    assert not unknown, f"{package.name} sets variables no setting reads (stale?): {sorted(unknown)}"
    environment = effective_environment(deployment)
    assert not required_setting_names() - set(environment)
    given = set_env_names(deployment)
    for variable in ("BACKUP_MYSQL_URL", "BACKUP_AMQP_URL", "BACKUP_MASTER_KEY"):
        assert variable in given, f"{package.name}: no {variable}"
    assert ("BACKUP_JWT_SECRET" in given) == package.checks_tokens, f"{package.name}: BACKUP_JWT_SECRET"
    assert ("BACKUP_SOURCE_MYSQL_URL" in given) == package.reaches_the_source, f"{package.name}: source URL"
    settings = settings_from(environment, monkeypatch)
    assert settings.load_master_key()
    if package.checks_tokens:
        assert settings.jwt_verification_key()


def test_every_container_has_cpu_and_memory_requests_within_limits() -> None:
    for workload in workloads():
        resources = container(workload).get("resources") or {}
        for resource in ("cpu", "memory"):
            request = (resources.get("requests") or {}).get(resource)
            limit = (resources.get("limits") or {}).get(resource)
            assert request, f"{workload['metadata']['name']}: no {resource} request"
            assert limit, f"{workload['metadata']['name']}: no {resource} limit"
            assert quantity(request) <= quantity(limit), f"{workload['metadata']['name']}: {resource}"


def test_every_pod_runs_as_the_images_user_unprivileged_with_a_read_only_root_and_no_service_links() -> None:
    uid, gid = image_user()
    for workload in workloads():
        name, spec = workload["metadata"]["name"], pod_spec(workload)
        # A Service's variables (BACKUP_GATEWAY_PORT=tcp://... for backup-gateway) would be read as settings.
        assert spec.get("enableServiceLinks") is False, f"{name}: service links on"
        assert spec.get("automountServiceAccountToken") is False, f"{name}: it needs no API token"
        security = spec.get("securityContext") or {}
        assert security.get("runAsNonRoot") is True
        assert (security.get("runAsUser"), security.get("runAsGroup")) == (uid, gid), f"{name}"
        assert security.get("seccompProfile") == {"type": "RuntimeDefault"}, f"{name}"
        own = container(workload).get("securityContext") or {}
        assert own.get("allowPrivilegeEscalation") is False, f"{name}"
        assert own.get("readOnlyRootFilesystem") is True, f"{name}"
        assert own.get("capabilities") == {"drop": ["ALL"]}, f"{name}"
        tmp = mounts(workload).get("/tmp")
        assert tmp is not None, f"{name}: no /tmp (the root filesystem is read-only)"
        assert "emptyDir" in tmp[0], f"{name}: /tmp"
        assert not tmp[1], f"{name}: /tmp is read-only"


def test_every_secret_config_map_and_claim_a_pod_or_keda_names_exists() -> None:
    secrets = {name: set(secret_values(name)) for name in of_kind("Secret")}
    claims = set(of_kind("PersistentVolumeClaim"))
    for workload in workloads():
        name = workload["metadata"]["name"]
        for source in container(workload).get("envFrom") or []:
            for kind, reference in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if reference in source:
                    assert source[reference]["name"] in of_kind(kind), f"{name}: no {kind} {source[reference]}"
        for variable in container(workload).get("env") or []:
            key_reference = (variable.get("valueFrom") or {}).get("secretKeyRef")
            if key_reference is not None:
                assert key_reference["key"] in secrets.get(key_reference["name"], set()), f"{name}: {key_reference}"
        for volume in pod_spec(workload).get("volumes") or []:
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if claim is not None:
                assert claim in claims or claim in APPLICATION_CLAIMS, f"{name}: no claim {claim}"
                if claim in APPLICATION_CLAIMS:
                    assert workload is deployment_of(service_packages()["file_backup"]), f"{name} mounts {claim}"
    for authentication in of_kind("TriggerAuthentication").values():
        for reference in authentication["spec"]["secretTargetRef"]:
            assert reference["key"] in secrets.get(reference["name"], set()), f"no secret key {reference}"


def test_the_secrets_example_holds_exactly_the_keys_something_reads() -> None:
    used: set[str] = set()
    for workload in workloads():
        for variable in container(workload).get("env") or []:
            reference = (variable.get("valueFrom") or {}).get("secretKeyRef")
            if reference is not None:
                used.add(reference["key"])
    for authentication in of_kind("TriggerAuthentication").values():
        used |= {reference["key"] for reference in authentication["spec"]["secretTargetRef"]}
    provided = {key for name in of_kind("Secret") for key in secret_values(name)}
    assert provided == used, f"unused: {sorted(provided - used)}; missing: {sorted(used - provided)}"


# --- Storage.


@pytest.mark.parametrize("package", service_items(), ids=service_ids())
def test_every_service_mounts_the_shared_storage_at_its_storage_dir_read_only_unless_it_writes_there(
    package: ServicePackage, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = deployment_of(package)
    settings = settings_from(effective_environment(deployment), monkeypatch)
    claim, read_only = claim_at(deployment, settings.storage_dir)
    assert claim == STORAGE_CLAIM
    assert read_only == (package.name in STORAGE_READERS), f"{package.name}: read-only={read_only}"


def test_the_shared_claims_are_read_write_many() -> None:
    for name, claim in of_kind("PersistentVolumeClaim").items():
        assert "ReadWriteMany" in claim["spec"]["accessModes"], f"{name}: replicas on several nodes share it"


def test_file_backup_mounts_the_application_trees_and_the_restore_dir_writable_at_the_configured_dirs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deployment = deployment_of(service_packages()["file_backup"])
    settings = settings_from(effective_environment(deployment), monkeypatch)
    for path in (settings.uploads_dir, settings.configs_dir, settings.logs_dir, settings.restore_dir):
        _, read_only = claim_at(deployment, path)
        assert not read_only, f"{path} is read-only: restores write there"
    trees = {claim_at(deployment, path)[0] for path in (settings.uploads_dir, settings.configs_dir, settings.logs_dir)}
    assert trees == APPLICATION_CLAIMS


def test_the_gateway_sees_the_restore_dir_read_only_as_file_backup_does(monkeypatch: pytest.MonkeyPatch) -> None:
    gateway = deployment_of(service_packages()["gateway"])
    file_backup = deployment_of(service_packages()["file_backup"])
    restore_dir = settings_from(effective_environment(gateway), monkeypatch).restore_dir
    # It resolves a restore's target directory (links and all) before file_backup writes there.
    assert claim_at(gateway, restore_dir) == (claim_at(file_backup, restore_dir)[0], True)


# --- Stopping.


@pytest.mark.parametrize("package", service_items(), ids=service_ids())
def test_every_pod_gets_a_grace_period_sized_to_what_it_does_when_stopped(
    package: ServicePackage, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = deployment_of(package)
    grace = pod_spec(deployment).get("terminationGracePeriodSeconds")
    assert isinstance(grace, int), f"{package.name}: terminationGracePeriodSeconds not set"
    assert grace >= MIN_GRACE_SECONDS
    if package.name == "gateway":
        pre_stop = container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep"
        shutdown_timeout = inspect.signature(web.run_app).parameters["shutdown_timeout"].default
        # The pause while the endpoints drop it, then the requests in flight (downloads).
        assert grace > int(pre_stop[1]) + shutdown_timeout
    else:
        # It hands its jobs back in seconds; past a lease's lifetime the job is requested again anyway.
        assert grace <= settings_from(effective_environment(deployment), monkeypatch).lease_seconds


def test_the_gateway_service_selects_the_gateway_pods_and_targets_its_port() -> None:
    gateway = deployment_of(service_packages()["gateway"])
    services = list(of_kind("Service").values())
    assert len(services) == 1
    spec = services[0]["spec"]
    assert spec["selector"].items() <= pod_template(gateway)["metadata"]["labels"].items()
    assert [container_port(gateway, port["targetPort"]) for port in spec["ports"]] == [
        container(gateway)["ports"][0]["containerPort"]
    ]


# --- KEDA.


def scaled_objects() -> dict[str, dict[str, Any]]:
    """The ScaledObjects by the service of the Deployment they scale."""
    by_name = {deployment["metadata"]["name"]: deployment for deployment in of_kind("Deployment").values()}
    found = {}
    for scaled in of_kind("ScaledObject").values():
        target = scaled["spec"]["scaleTargetRef"]
        assert target.get("kind", "Deployment") == "Deployment"
        assert target["name"] in by_name, f"ScaledObject {scaled['metadata']['name']} scales no Deployment"
        service = pod_template(by_name[target["name"]])["metadata"]["labels"]["app.kubernetes.io/component"]
        assert service not in found, f"two ScaledObjects scale {service}"
        found[service] = scaled
    return found


def triggers(scaled: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [trigger for trigger in scaled["spec"]["triggers"] if trigger["type"] == kind]


def test_keda_scales_exactly_the_queue_workers_down_to_zero_and_nothing_else_sets_their_replicas() -> None:
    found = scaled_objects()
    assert set(found) == QUEUE_WORKERS
    for scaled in found.values():
        assert scaled["spec"]["minReplicaCount"] == 0
        assert scaled["spec"]["maxReplicaCount"] >= 1
    for package in service_items():
        replicas = deployment_of(package)["spec"].get("replicas")
        if package.name in QUEUE_WORKERS:
            assert replicas is None, f"{package.name}: every apply would reset KEDA's choice"
        else:
            assert isinstance(replicas, int), f"{package.name} must always run"
            assert replicas >= 1, f"{package.name} must always run"


@pytest.mark.parametrize("service", sorted(QUEUE_WORKERS))
def test_every_scaled_worker_wakes_on_its_own_queue(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    scaled = scaled_objects()[service]
    settings = settings_from(effective_environment(deployment_of(service_packages()[service])), monkeypatch)
    assert service in load_service_queues(), f"{service} has no queue in infra/rabbitmq/topology.json"
    (rabbitmq,) = triggers(scaled, "rabbitmq")
    assert rabbitmq["metadata"]["queueName"] == Topology(settings).queue_name(service)
    assert rabbitmq["metadata"]["mode"] == "QueueLength"
    authentication = one("TriggerAuthentication", rabbitmq["authenticationRef"]["name"])
    assert {(ref["parameter"], ref["key"]) for ref in authentication["spec"]["secretTargetRef"]} == {
        ("host", "BACKUP_AMQP_URL")
    }


@pytest.mark.parametrize("service", sorted(QUEUE_WORKERS))
def test_every_scaled_worker_stays_while_it_holds_a_job_lease(service: str) -> None:
    # It acknowledges a job's message once it claimed the job: on its queue alone KEDA would stop it
    # mid-job, and the job handed back would start over, again and again.
    (mysql,) = triggers(scaled_objects()[service], "mysql")
    query = " ".join(mysql["metadata"]["query"].split())
    assert re.match(r"SELECT COUNT\(\*\) FROM job_leases WHERE state = 'held' AND ", query), query
    patterns = set(re.findall(r"job_key LIKE '([^']+)'", query))
    assert patterns == LEASE_PATTERNS[service]
    authentication = one("TriggerAuthentication", mysql["authenticationRef"]["name"])
    assert {ref["parameter"] for ref in authentication["spec"]["secretTargetRef"]} == {"connectionString"}


def test_the_verification_scaler_is_up_before_each_default_restore_drill_fires() -> None:
    # The drill timer only fires in a running replica, which must have ticked once before the firing.
    document = SettingsDocument.model_validate_json((CONFIG_DIR / "backup-settings.json").read_text())
    drill = document.verification.restore_drill_cron
    assert drill is not None
    (cron,) = triggers(scaled_objects()["verification"], "cron")
    assert cron["metadata"]["timezone"] in ("Etc/UTC", "UTC")  # the drill cron is UTC
    firings = CronSim(drill, datetime(2025, 1, 1))
    for _ in range(12):
        firing = next(firings)
        start = max(
            (moment for moment in _firings(cron["metadata"]["start"], firing - timedelta(days=1), firing)),
            default=None,
        )
        assert start is not None, f"no scale-up in the day before the drill at {firing}"
        end = next(CronSim(cron["metadata"]["end"], start))
        assert start <= firing - timedelta(seconds=2 * TICK_SECONDS), f"scaled up at {start}, drill at {firing}"
        assert end > firing, f"scaled down at {end}, drill at {firing}"


def _firings(expression: str, since: datetime, until: datetime) -> Iterator[datetime]:
    for moment in CronSim(expression, since):
        if moment >= until:
            return
        yield moment


# --- The CronJob.


def the_cronjob() -> dict[str, Any]:
    cronjobs = list(of_kind("CronJob").values())
    assert len(cronjobs) == 1
    return cronjobs[0]


def test_the_cronjob_asks_the_gateway_service_for_a_full_backup_and_follows_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cronjob = the_cronjob()
    assert container(cronjob)["command"] == CRONJOB_COMMAND
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    assert cronjob["spec"]["jobTemplate"]["spec"]["backoffLimit"] == 0, "a retry would ask for another backup"
    assert pod_spec(cronjob)["restartPolicy"] == "Never"
    unknown = {name for name in set_env_names(cronjob) if name.startswith("BACKUP_")} - setting_names()
    assert unknown <= {API_URL_VARIABLE, API_TOKEN_VARIABLE}, f"read by nothing: {sorted(unknown)}"
    # Where backupctl itself finds the gateway and its token, from the Job's environment.
    monkeypatch.chdir(tmp_path)  # no `make run` secrets of this checkout
    with monkeypatch.context() as patch:
        for key in list(os.environ):
            if key.startswith("BACKUP_"):
                patch.delenv(key)
        for key, value in effective_environment(cronjob).items():
            patch.setenv(key, value)
        target = resolve_api(None)
    (service,) = of_kind("Service").values()
    url = urlsplit(target.url)
    assert (url.scheme, url.hostname) == ("http", service["metadata"]["name"])
    assert url.port in [port["port"] for port in service["spec"]["ports"]]
    assert target.token, target.token_from


def test_backupctl_takes_the_cronjob_command() -> None:
    parser = build_parser()
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    if CRONJOB_COMMAND[1] not in commands.choices:
        pytest.skip("backupctl has no `backup` command yet")
    arguments = parser.parse_args(CRONJOB_COMMAND[1:])
    assert (arguments.type, arguments.wait) == ("full", True)


# --- Rendered by kustomize, when there is one.


def kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    command = kustomize_command()
    if command is None:
        pytest.skip("neither kustomize nor kubectl on PATH")
    directory = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S_DIR, directory, ignore=shutil.ignore_patterns("secrets.env"))
    for generator in kustomization().get("secretGenerator") or []:
        for env_file in generator.get("envs") or []:
            shutil.copy(example_of(directory / env_file), directory / env_file)
    result = subprocess.run([*command, str(directory)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def test_kustomize_renders_every_resource_into_the_namespace(rendered: list[dict[str, Any]]) -> None:
    def names(found: list[dict[str, Any]]) -> set[tuple[str, str]]:
        return {(document["kind"], re.sub(r"-[a-z0-9]{10}$", "", document["metadata"]["name"])) for document in found}

    assert names(rendered) == names(documents())
    namespace = kustomization()["namespace"]
    for document in rendered:
        if document["kind"] != "Namespace":
            assert document["metadata"].get("namespace") == namespace, f"{document['kind']} {document['metadata']}"


def secret_references(node: Any) -> Iterator[str]:
    """The Secret names anything below ``node`` refers to (env, envFrom, KEDA's secretTargetRef)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("secretKeyRef", "secretRef"):
                yield value["name"]
            elif key == "secretTargetRef":
                yield from (reference["name"] for reference in value)
            else:
                yield from secret_references(value)
    elif isinstance(node, list):
        for item in node:
            yield from secret_references(item)


def test_kustomize_keeps_every_secret_reference_pointing_at_the_renamed_secret(rendered: list[dict[str, Any]]) -> None:
    secrets = {document["metadata"]["name"] for document in rendered if document["kind"] == "Secret"}
    references = set(secret_references(rendered))
    assert references, "no reference to a Secret rendered"
    assert references <= secrets, f"not rendered: {sorted(references - secrets)}"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_what_kustomize_renders_is_valid_for_kubernetes(rendered: list[dict[str, Any]], version: str) -> None:
    for document in rendered:
        if document["apiVersion"] == KEDA_API:
            jsonschema.validate(document, KEDA_SCHEMAS[document["kind"]])
        else:
            validate_built_in(document, version)
