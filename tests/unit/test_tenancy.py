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
