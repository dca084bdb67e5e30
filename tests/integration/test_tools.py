"""Operator tools through a real worker: `audit tail` and `sessions show`."""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import bot, connector
from tests.integration.harness import Harness, event

pytestmark = pytest.mark.integration


def test_audit_tail_and_sessions_show(harness: Harness) -> None:
    h = harness
    h.start_worker(h.write_config([bot("secure")], [connector("main", h.server.url)]))
    h.api.tokens["tok-ann"] = "ann"
    h.send(event("s-ann", "m0", "tok-ann"), event("s-eve", "m0", "tok-eve"))
    h.send(event("s-ann", "m1", "tok-ann"))
    h.wait_decisions("s-ann", 2)
    h.wait_decisions("s-eve", 1)

    out = h.cli("audit", "tail", "--since", "10m", "--no-follow", "--json")
    assert out.returncode == 0, out.stderr
    docs = [json.loads(line) for line in out.stdout.splitlines()]
    # one validation each, one blocked for eve; the cached m1 is counted, not audited
    assert sorted((d["sessionId"], d["kind"], d["reason"]) for d in docs) == [
        ("s-ann", "validation", "validated"),
        ("s-eve", "blocked", "denied"),
        ("s-eve", "validation", "denied"),
    ]
    out = h.cli(
        "audit", "tail", "--since", "10m", "--no-follow", "--reason", "denied", "--session", "s-eve"
    )
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and all("denied" in line and "s-eve" in line for line in lines)
    assert any("baas:main 403" in line for line in lines)
    future = h.cli("audit", "tail", "--since", "2099-01-01T00:00:00", "--no-follow")
    assert (future.returncode, future.stdout) == (0, "")
    assert h.cli("audit", "tail", "--since", "yesterday").returncode == 2

    shown = h.cli("sessions", "show", "acme", "secure", "s-ann", "--json")
    assert shown.returncode == 0, shown.stderr
    held = json.loads(shown.stdout)
    assert held["key"] == "acme/secure/s-ann"
    assert held["state"]["allowed"] is True  # (identity: none mapped by this connector)
    assert held["state"]["fingerprint"].startswith("sha256:")
    text = h.cli("sessions", "show", "acme", "secure", "s-eve").stdout
    assert "outcome          denied" in text
    nobody = h.cli("sessions", "show", "acme", "secure", "s-nobody")
    assert nobody.returncode == 1 and "never validated" in nobody.stdout
    assert "tok-ann" not in out.stdout + text + shown.stdout  # tokens only as fingerprints
