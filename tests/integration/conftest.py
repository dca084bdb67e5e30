from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Broker
from tests.integration.harness import Harness

pytestmark = pytest.mark.integration


def connector(alias: str, url: str, timeout: float = 5, secret: str = "api-key") -> dict[str, Any]:
    return {
        "Type": "api-connector",
        "Alias": alias,
        "Organization": "acme",
        "Method": "POST",
        "Endpoint": url,
        "TimeoutSeconds": timeout,
        "Headers": {"Authorization": f"srn:vault::acme:secret:{secret}"},
        "RequestMapping": {
            "tokenToVerify": {
                "type": "requestBody",
                "requestBodyPath": "$.token",
                "inputPath": "$.secureTokenForUser",
            }
        },
        "ResponseMapping": {},
        "Body": {},
    }


def bot(name: str, alias: str = "main", interval: float = 300, **ssc: Any) -> dict[str, Any]:
    return {
        "Name": name,
        "Organization": "acme",
        "Id": f"id-{name}",
        "SecureSession": True,
        "SecureSessionConfig": {
            "Type": "baas",
            "ValidationInterval": interval,
            "ApiAlias": alias,
            "ErrorMessage": "Please sign in again.",
            **ssc,
        },
    }


@pytest.fixture
def harness(broker: Broker, tmp_path: Path) -> Iterator[Harness]:
    h = Harness(broker, tmp_path).start()
    try:
        yield h
        h.assert_clean()
    finally:
        h.stop()
