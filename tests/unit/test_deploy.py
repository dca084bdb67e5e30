"""What ships for users to run: the compose file, its config files, the Grafana dashboard.

docker-compose.yml is validated against the Compose specification's JSON Schema
(tests/data/compose-spec.json: compose/config/compose_spec.json from the docker-compose
1.29.2 wheel on PyPI, the version Debian packages; Apache-2.0). No Docker engine needed.
The CI workflow shipped for users (.github/workflows/ci.yml) is validated the same way,
against SchemaStore's GitHub workflow schema (tests/data/github-workflow.json, the copy
vendored in the check-jsonschema 0.39.0 wheel on PyPI; Apache-2.0).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from prometheus_client import generate_latest

from worker.metrics import Metrics
from worker.settings import Settings

ROOT = Path(__file__).parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DASHBOARD = json.loads((ROOT / "deploy/grafana/dashboards/secure-session.json").read_text())


def test_compose_file_follows_the_compose_specification() -> None:
    assert schema_errors("compose-spec.json", COMPOSE) == []


def schema_errors(schema_file: str, document: object) -> list[str]:
    schema = json.loads((ROOT / "tests/data" / schema_file).read_text())
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(document)
    ]


@pytest.mark.parametrize("workflow", sorted((ROOT / ".github/workflows").glob("*.yml")))
def test_ci_workflow_follows_the_github_workflow_schema(workflow: Path) -> None:
    document = yaml.safe_load(workflow.read_text())
    document["on"] = document.pop(True)  # YAML 1.1 reads the key `on` as true
    assert schema_errors("github-workflow.json", document) == []
    for job in document["jobs"].values():  # every job runs the README's commands
        assert any(
            "make " in step.get("run", "") or ".ci/run" in step.get("run", "")
            for step in job["steps"]
        )


def test_the_workflow_schema_check_can_fail() -> None:
    assert schema_errors("github-workflow.json", {"on": "push", "jobs": {"a": {"stepz": []}}})


def test_compose_refers_to_files_that_exist() -> None:
    for name, service in COMPOSE["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: {source}"
        if "build" in service:
            assert (ROOT / service["build"] / "Dockerfile").exists()
        for needed in service.get("depends_on", {}):
            assert needed in COMPOSE["services"], f"{name} depends on unknown {needed}"


@pytest.mark.parametrize("service", ["worker", "traffic"])
def test_compose_environment_is_what_the_worker_reads(service: str) -> None:
    """No misspelt variable silently ignored: each one is read by worker/settings.py."""
    known = set(
        re.findall(
            r'"((?:SECURE_SESSION|KAFKA)_[A-Z0-9_]+)"', (ROOT / "worker/settings.py").read_text()
        )
    )
    env = {k: str(v) for k, v in COMPOSE["services"][service]["environment"].items()}
    unknown = {k for k in env if k not in known and not k.startswith("SECURE_SESSION_SECRET__")}
    assert unknown == set()
    Settings.from_env(env)  # and every value is accepted


def _exported() -> set[str]:
    metrics = Metrics()
    metrics.watch(circuits=lambda: {"acme/api": False}, lag=lambda: {0: 0})
    metrics.decided("cached", "acme", "bot")
    metrics.would_block("acme", "bot", "denied")
    metrics.validated("baas", "acme/api", "allowed", 0.01)
    return set(
        re.findall(
            r"^(secure_session_\w+?)(?:\{| )", generate_latest(metrics.registry).decode(), re.M
        )
    )


def test_dashboard_queries_only_metrics_the_worker_exports() -> None:
    exported = _exported()
    exprs = [t["expr"] for p in DASHBOARD["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"secure_session_\w+", e)}
    assert used and used <= exported, used - exported
    assert len({p["id"] for p in DASHBOARD["panels"]}) == len(DASHBOARD["panels"])
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"  # an input, not a fixed uid
    assert {"organization", "bot", "instance"} <= set(variables)
    for panel in DASHBOARD["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            # every worker reports the whole group's lag: no per-worker filter there
            if "consumer_lag" not in target["expr"]:
                assert 'instance=~"$instance"' in target["expr"], target["expr"]


PROMETHEUS = ROOT / "deploy" / "prometheus"


def test_alert_rules_use_only_metrics_the_worker_exports() -> None:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"][0]["rules"]
    used = {m for r in rules for m in re.findall(r"secure_session_\w+", r["expr"])}
    exported = _exported()
    # counters are exported as <name>_total, histograms as <name>_bucket
    assert used and {re.sub(r"_(total|bucket)$", "", m) for m in used} <= {
        re.sub(r"_(total|bucket)$", "", m) for m in exported
    }


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not on PATH")
@pytest.mark.parametrize(
    "args",
    [
        ("check", "config", "prometheus.yml"),
        ("check", "rules", "alerts.yml"),
        ("test", "rules", "alerts.test.yml"),
    ],
)
def test_promtool_accepts_the_config_and_the_alert_rules_pass_their_tests(
    args: tuple[str, ...],
) -> None:
    done = subprocess.run(
        ["promtool", *args], cwd=PROMETHEUS, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_prometheus_scrapes_the_worker_port() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    targets = config["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == [f"worker:{Settings().web_port}"]
    assert "6066:6066" in COMPOSE["services"]["worker"]["ports"]


def test_the_ci_workflow_runs_the_suite_on_tansu_and_on_apache_kafka() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    jobs = workflow["jobs"]
    assert any("bash .ci/run" in step.get("run", "") for step in jobs["embedded-broker"]["steps"])
    kafka = jobs["apache-kafka"]
    assert kafka["env"]["KAFKA_BOOTSTRAP_SERVERS"] == "localhost:9092"
    assert kafka["services"]["kafka"]["image"] == COMPOSE["services"]["kafka"]["image"]
    assert any(step.get("run") == "make test" for step in kafka["steps"])
