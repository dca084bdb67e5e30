"""The commands as a user runs them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def secure_session(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_dev_mode_shows_decisions_and_stops_what_it_started() -> None:
    done = secure_session("dev", "--duration", "12", "--rate", "10", "--lines")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    assert "ALLOWED validated" in out and "ALLOWED cached" in out
    assert "BLOCKED denied" in out and "BLOCKED unknown_bot" in out
    match = re.search(r"worker pid (\d+)", out)
    assert match is not None
    assert not Path(f"/proc/{match.group(1)}").exists()  # stopped and reaped


def test_config_check_names_file_field_and_why(tmp_path: Path) -> None:
    bad = tmp_path / "bots.yaml"
    bad.write_text(
        "bots:\n  - Name: b\n    Organization: acme\n    SecureSession: true\n"
        "    SecureSessionConfig: {Type: baas, ValidationInterval: 60}\n"
    )
    done = secure_session("config", "check", str(bad))
    assert done.returncode == 2
    assert f"{bad}: bots[0]: SecureSessionConfig.ApiAlias: is required" in done.stderr


@pytest.mark.parametrize(
    "verb",
    [
        ("send", "/dev/null"),
        ("watch",),
        ("config", "publish", "deploy/demo-config.yaml"),
        ("config", "delete", "--bot", "acme/b"),
        ("audit", "tail", "--no-follow"),
        ("sessions", "show", "acme", "b", "s"),
    ],
)
def test_every_client_verb_says_in_one_line_when_kafka_is_unreachable(
    verb: tuple[str, ...],
) -> None:
    """Issue 18: ~40 lines of traceback, `Unclosed AIOKafkaProducer`, exit 1, no hint."""
    import os

    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    root = Path(__file__).parents[2]
    done = subprocess.run(
        [sys.executable, "-m", "worker", *verb],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        env=env,
        cwd=root,
    )
    assert done.returncode == 4, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "127.0.0.1:1" in lines[0] and "KAFKA_BOOTSTRAP_SERVERS" in lines[0]


def test_demo_api_on_a_taken_port_says_so_in_one_line() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = secure_session("demo-api", "--port", str(port), timeout=30)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{port}" in lines[0], done.stderr


def test_config_check_runs_the_workers_checks_and_strict_refuses_typos(tmp_path: Path) -> None:
    import os

    jwt_bot = (
        "bots:\n- {Name: j, Organization: acme, SecureSession: true, SecureSessionConfig:\n"
        "   {Type: jwt, ValidationInterval: 60, Issuer: i, TokenPath: $.context.t,\n"
        "    SecretRef: 'srn:vault::acme:secret:missing'}}\n"
    )
    path = tmp_path / "jwt.yaml"
    path.write_text(jwt_bot)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_SESSION")}
    run = [sys.executable, "-m", "worker", "config", "check"]
    done = subprocess.run([*run, str(path)], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 2 and "srn:vault::acme:secret:missing" in done.stderr
    typo = tmp_path / "typo.yaml"
    typo.write_text(
        "bots:\n- {Name: b, Organization: acme, SecureSession: true, SecureSessionConfig:\n"
        "   {Type: baas, ValidationInterval: 60, ApiAlias: A, FailurMode: open}}\n"
    )
    done = subprocess.run([*run, str(typo)], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0 and "did you mean 'FailureMode'" in done.stderr
    strict = subprocess.run(
        [*run, "--strict", str(typo)], capture_output=True, text=True, env=env, check=False
    )
    assert strict.returncode == 2 and "--strict" in strict.stderr


def test_config_show_gives_every_setting_its_origin_and_masks_secrets() -> None:
    import json
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SECURE_SESSION", "KAFKA_"))}
    env |= {
        "KAFKA_SASL_PASSWORD": "hunter2-sasl",
        "SECURE_SESSION_FINGERPRINT_KEY": "f" * 40,
        "SECURE_SESSION_CONFIG": "deploy/demo-config.yaml",
        "KAFKA_CLIENT_ID": "acme-gatekeeper",
    }
    done = subprocess.run(
        [sys.executable, "-m", "worker", "config", "show", "--json"],
        capture_output=True, text=True, env=env, check=False, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "hunter2" not in done.stdout and "f" * 40 not in done.stdout
    doc = json.loads(done.stdout)
    rows = {r["name"]: r for r in doc["settings"]}
    assert rows["KAFKA_SASL_PASSWORD"] == {
        "name": "KAFKA_SASL_PASSWORD",
        "value": "****",
        "from": "environment",
    }
    assert rows["KAFKA_BOOTSTRAP_SERVERS"]["from"] == "default"
    assert rows["KAFKA_CLIENT_ID"]["value"] == "acme-gatekeeper"
    assert doc["bots"] and doc["connectors"] and "client id acme-gatekeeper" in doc["summary"]
