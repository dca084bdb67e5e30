"""Tenant isolation (issue 17): no organization reaches another's secrets, by any route."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from worker.config import Registry, parse_bot, parse_connector
from worker.errors import ConfigError, SecretNotFound
from worker.validators.jwt import signing_key
from worker.vault import Vault

ACME_KEY = "a" * 40
ENV = {
    "SECURE_SESSION_SECRET__ACME__KEY": ACME_KEY,
    "SECURE_SESSION_SECRET__MY_ORG__KEY": ACME_KEY,
}


def connector(**change: Any) -> dict[str, Any]:
    return {
        "Type": "api-connector",
        "Alias": "A",
        "Organization": "evil",
        "Method": "POST",
        "Endpoint": "https://evil.example.com/v",
        **change,
    }


def jwt_bot(**ssc: Any) -> dict[str, Any]:
    return {
        "Name": "b",
        "Organization": "evil",
        "SecureSession": True,
        "SecureSessionConfig": {
            "Type": "jwt",
            "ValidationInterval": 60,
            "Issuer": "i",
            "TokenPath": "$.context.t",
            **ssc,
        },
    }


ACME_REF = "srn:vault::acme:secret:key"


@pytest.mark.parametrize(
    ("record", "field"),
    [
        (connector(Headers={"Authorization": ACME_REF}), "Headers.Authorization"),
        (connector(Headers={"X": f"Bearer {ACME_REF}"}), None),  # not a reference: literal
        (connector(Body={"nested": [{"k": ACME_REF}]}), "Body.nested.0.k"),
        (
            connector(Auth={"Type": "basic", "ClientId": "c", "ClientSecret": ACME_REF}),
            "Auth.ClientSecret",
        ),
        (
            connector(
                Auth={
                    "Type": "oauth2-client-credentials",
                    "ClientId": "c",
                    "ClientSecret": ACME_REF,
                    "TokenUrl": "https://evil.example.com/token",
                }
            ),
            "Auth.ClientSecret",
        ),
    ],
)
def test_a_connector_naming_another_organizations_secret_is_refused(
    record: dict[str, Any], field: str | None
) -> None:
    if field is None:
        parse_connector(record, "src")  # a literal that merely contains the text: not resolved
        return
    with pytest.raises(ConfigError) as err:
        parse_connector(record, "src")
    assert err.value.field == field
    assert "another organization" in str(err.value)


@pytest.mark.parametrize(
    ("ssc", "field"),
    [
        ({"SecretRef": ACME_REF}, "SecureSessionConfig.SecretRef"),
        (
            {"Keys": {"k1": "srn:vault::evil:secret:k", "k2": ACME_REF}},
            "SecureSessionConfig.Keys.k2",
        ),
    ],
)
def test_a_jwt_bot_naming_another_organizations_key_is_refused(
    ssc: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_bot(jwt_bot(**ssc), "src")
    assert err.value.field == field


def test_a_topic_record_naming_another_organizations_secret_is_skipped() -> None:
    registry = Registry()
    record = connector(Headers={"Authorization": ACME_REF})
    registry.apply("connectors", b"evil/A", orjson.dumps(record))
    assert registry.connector("evil", "A") is None


def test_the_vault_resolves_a_reference_only_for_its_own_organization(tmp_path: Path) -> None:
    (tmp_path / "acme").mkdir()
    (tmp_path / "acme" / "key").write_text(ACME_KEY + "\n")
    for vault in (Vault(tmp_path, {}), Vault(None, ENV)):
        assert vault.resolve(ACME_REF, "acme") == ACME_KEY
        with pytest.raises(SecretNotFound):
            vault.resolve(ACME_REF, "evil")
        with pytest.raises(SecretNotFound):
            vault.resolve_in({"h": ACME_REF}, "evil")
        with pytest.raises(SecretNotFound):
            signing_key(vault, ACME_REF, "evil")


@pytest.mark.parametrize(
    ("org", "ref"),
    [
        ("ACME", "srn:vault::ACME:secret:key"),  # folds to acme's variable
        ("Acme", "srn:vault::Acme:secret:key"),
        ("my_org", "srn:vault::my_org:secret:key"),  # folds to my-org's
    ],
)
def test_no_spelling_of_an_organization_reads_anothers_environment(org: str, ref: str) -> None:
    vault = Vault(None, ENV)
    with pytest.raises(SecretNotFound):
        vault.resolve(ref, org)
    assert vault.resolve("srn:vault::my-org:secret:key", "my-org") == ACME_KEY  # its own


def test_a_literal_credential_where_a_reference_belongs_is_not_echoed() -> None:
    for record, parse in (
        (
            connector(Auth={"Type": "basic", "ClientId": "c", "ClientSecret": "hunter2-literal"}),
            parse_connector,
        ),
        (jwt_bot(SecretRef="hunter2-literal"), parse_bot),
        (jwt_bot(Keys={"k": "hunter2-literal"}), parse_bot),
    ):
        with pytest.raises(ConfigError) as err:
            parse(record, "src")  # type: ignore[operator]
        assert "hunter2" not in str(err.value)
        assert "vault reference" in str(err.value)


async def test_one_tenants_hanging_api_delays_no_other_tenants_validations() -> None:
    """Issue 17: one global limit of concurrent calls let one tenant take every slot."""
    import asyncio
    import time

    import httpx

    from worker.events import parse_inbound
    from worker.validators.auth import ConnectorAuth
    from worker.validators.baas import BaasValidator
    from worker.validators.calls import ConnectorCalls, TenantLimits
    from worker.validators.circuit import CircuitBreaker
    from worker.validators.http import Http

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "slow.example.com":
            await asyncio.sleep(30)  # hangs (the test ends long before)
        return httpx.Response(200)

    vault = Vault(None, {})
    http = Http(
        httpx.MockTransport(handler), retries=0, backoff_s=0, connect_timeout_s=1, max_concurrent=20
    )
    limits = TenantLimits(per_org=5, per_connector=5, queued=50)
    calls = ConnectorCalls(http, ConnectorAuth(http, vault), CircuitBreaker(100, 1), limits)
    baas = BaasValidator(calls, vault)

    def call(org: str, n: int) -> Any:
        con = parse_connector(
            {
                "Alias": "A",
                "Organization": org,
                "Method": "POST",
                "Endpoint": f"https://{'slow' if org == 'evil' else 'fast'}.example.com/v",
                "TimeoutSeconds": 60,
                "RequestMapping": {"t": {"type": "header", "name": "X-T", "inputPath": "$.t"}},
            },
            "t",
        )
        doc = {
            "id": "m",
            "organization": org,
            "bot": "b",
            "sessionId": f"s{n}",
            "context": {"t": f"t{n}"},
        }
        return baas.prepare(None, con, parse_inbound(orjson.dumps(doc)))  # type: ignore[arg-type]

    flood = [asyncio.create_task(baas.validate(call("evil", n))) for n in range(200)]
    await asyncio.sleep(0.05)
    started = time.monotonic()
    results = await asyncio.gather(*(baas.validate(call("acme", n)) for n in range(100)))
    assert time.monotonic() - started < 2
    assert {r.outcome for r, _ in results} == {"allowed"}
    # the flood beyond its queue bound was answered at once, not queued without end
    done = [t.result()[0] for t in flood if t.done()]
    assert len(done) >= 200 - 5 - 50 and {r.outcome for r in done} == {"unavailable"}
    assert "calls waiting" in done[0].detail
    for t in flood:
        t.cancel()
    await asyncio.gather(*flood, return_exceptions=True)
