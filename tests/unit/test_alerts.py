"""infra/prometheus/alerts.yml: valid for Prometheus, firing as its unit tests expect, and complete.

promtool comes with Debian's `prometheus` package (`apt-get install --no-install-recommends
prometheus`); without it these tests fail, saying so, rather than skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from backup_gateway.system_metrics import FAMILIES

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "infra" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
EXAMPLE_CONFIG = PROMETHEUS_DIR / "prometheus.example.yml"
# What the rules may use besides the gateway's system figures: Prometheus's own, and the process's.
OTHER_SERIES = {"up", "backup_broker_connected"}
SEVERITIES = {"critical", "warning"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed: `apt-get install -y --no-install-recommends prometheus` (Debian) provides it"
        )
    return subprocess.run([path, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60, check=False)


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_promtool_finds_the_alert_rules_valid() -> None:
    result = promtool("check", "rules", ALERTS.name)

    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alert_rules_fire_as_their_unit_tests_expect() -> None:
    result = promtool("test", "rules", ALERTS_TEST.name)

    assert result.returncode == 0, result.stdout + result.stderr


def test_the_example_prometheus_configuration_is_valid_and_loads_the_rules() -> None:
    result = promtool("check", "config", EXAMPLE_CONFIG.name)

    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_waits_has_a_severity_a_summary_a_description_and_a_runbook_in_the_readme() -> None:
    for rule in rules():
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), f"{name} has no for:"
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert annotations["summary"], name
        assert annotations["description"], name
        assert annotations["runbook_url"] == f"README.md#{name.lower()}", name


def test_every_alert_has_a_unit_test_that_makes_it_fire() -> None:
    document = yaml.safe_load(ALERTS_TEST.read_text())
    fired = {
        case["alertname"] for test in document["tests"] for case in test["alert_rule_test"] if case.get("exp_alerts")
    }

    assert {rule["alert"] for rule in rules()} <= fired


def test_the_rules_use_only_series_the_gateway_exports() -> None:
    used: set[str] = set()
    for rule in rules():
        used |= set(re.findall(r"\b((?:backup_|up\b)[a-z_]*)", rule["expr"]))

    assert used - set(FAMILIES) - OTHER_SERIES == set()
    assert "backup_schedule_expected_interval_seconds" in used
