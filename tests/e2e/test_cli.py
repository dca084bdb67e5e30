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
