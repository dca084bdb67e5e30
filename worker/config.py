"""Bot and api-connector configuration: parsing, checking and the live registry.

Records come from the `SECURE_SESSION_CONFIG` file at start and from the compacted
topics `secure-session.bots` / `secure-session.connectors` while running. Every record
is checked against its JSON Schema (`schemas/`) and then for what a schema cannot say
(JSONPath syntax, vault reference form). A bad file refuses the start; a bad topic
record is logged and skipped (the previous value, if any, stays in force).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import jsonschema
import yaml

from worker.errors import ConfigError
from worker.jsonpath import JsonPath
from worker.vault import check_ref, is_ref, ref_org

log = logging.getLogger(__name__)

SCHEMAS = Path(__file__).parent / "schemas"

MappingType = Literal["requestBody", "header", "queryParameter"]


@dataclass(frozen=True, slots=True)
class Mapping:
    """One RequestMapping entry: a value read from the event's context, placed in the call."""

    key: str
    type: MappingType
    input_path: JsonPath
    """Where the value is read, from the event's `context`."""
    body_path: JsonPath | None = None
    """requestBody: where it goes in the JSON body."""
    name: str = ""
    """header / queryParameter: the header or parameter name."""
    template: str = "{value}"
    """header: how the value is written, e.g. `Bearer {value}`."""


@dataclass(frozen=True, slots=True)
class Auth:
    """How a connector's calls authenticate: `basic`, or `oauth2-client-credentials`."""

    type: Literal["basic", "oauth2-client-credentials"]
    client_id: str
    client_secret_ref: str
    token_url: str | None = None
    scope: str | None = None
    client_auth: Literal["basic", "body"] = "basic"
    """oauth2: how the client credentials go to the token endpoint."""


@dataclass(frozen=True, slots=True)
class Connector:
    """An api-connector: how to call the customer's Authorization API."""

    organization: str
    alias: str
    method: str
    endpoint: str
    headers: dict[str, str]
    mappings: tuple[Mapping, ...]
    body: dict[str, Any]
    timeout_s: float
    auth: Auth | None = None
    identity_path: JsonPath | None = None
    """ResponseMapping.identity: where the API's JSON answer names the user."""

    @property
    def key(self) -> str:
        return f"{self.organization}/{self.alias}"


@dataclass(frozen=True, slots=True)
class Bot:
    """A bot and its SecureSessionConfig."""

    organization: str
    name: str
    secure: bool
    type: Literal["baas", "jwt", "introspection"] = "baas"
    interval_s: float = 0.0
    failure_mode: Literal["closed", "open"] = "closed"
    error_message: str | None = None
    api_alias: str | None = None
    # jwt
    secret_ref: str | None = None
    issuer: str | None = None
    token_path: JsonPath | None = None
    leeway_s: float = 30.0
    revoked_before: float | None = None
    allow_anonymous: bool = False
    identity_claim: str = "sub"
    """introspection: the response claim that names the user."""
    keys: dict[str, str] | None = None
    """jwt: `kid` -> secret reference, for key rotation (tokens without a kid are refused)."""

    @property
    def key(self) -> str:
        return f"{self.organization}/{self.name}"

    def key_refs(self) -> list[str]:
        """Every secret reference of a JWT bot."""
        refs = list(self.keys.values()) if self.keys else []
        return refs + ([self.secret_ref] if self.secret_ref else [])


# --------------------------------------------------------------------------- parsing


@cache
def _validator(schema: str) -> jsonschema.protocols.Validator:
    with (SCHEMAS / f"{schema}.schema.json").open(encoding="utf-8") as f:
        loaded = json.load(f)
    cls = jsonschema.validators.validator_for(loaded)
    return cls(loaded)


def _check_schema(schema: str, data: Any, source: str) -> None:
    error = jsonschema.exceptions.best_match(_validator(schema).iter_errors(data))
    if error is None:
        return
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        path = f"{path}.{missing}" if path else missing
        raise ConfigError(source, path, "is required")
    if error.validator == "pattern" and error.schema.get("pattern") == "^srn:vault::":
        # a credential typed where a reference belongs: never echo it
        why = "must be a vault reference srn:vault::<org>:secret:<name> (value not shown)"
    elif isinstance(error.instance, (dict, list)):
        # never echo a whole object: it may hold a literal credential
        why = f"fails the schema's {error.validator!r} rule"
    else:
        why = error.message
    raise ConfigError(source, path, why)


def _path(source: str, field_name: str, text: str) -> JsonPath:
    try:
        return JsonPath(text)
    except ValueError as exc:
        raise ConfigError(source, field_name, str(exc)) from None


def _check_refs(source: str, field_name: str, value: Any, org: str) -> None:
    """Every vault reference in `value` is well formed and names `org`'s own secrets."""
    if isinstance(value, str):
        if is_ref(value):
            if why := check_ref(value):
                raise ConfigError(source, field_name, why)
            if ref_org(value) != org:
                raise ConfigError(
                    source,
                    field_name,
                    f"names a secret of another organization (a {org!r} record may only "
                    f"name srn:vault::{org}:… references)",
                )
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_refs(source, f"{field_name}.{k}", v, org)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_refs(source, f"{field_name}.{i}", v, org)


def parse_bot(data: Any, source: str) -> Bot:
    """A Bot from its record; ConfigError naming `source`, the field and why."""
    _check_schema("bot", data, source)
    secure = bool(data.get("SecureSession", False))
    if not secure:
        return Bot(organization=data["Organization"], name=data["Name"], secure=False)
    ssc = data["SecureSessionConfig"]
    token_path = None
    if "TokenPath" in ssc:
        token_path = _path(source, "SecureSessionConfig.TokenPath", ssc["TokenPath"])
    _check_refs(source, "SecureSessionConfig", ssc, data["Organization"])
    return Bot(
        organization=data["Organization"],
        name=data["Name"],
        secure=True,
        type=ssc["Type"],
        interval_s=float(ssc["ValidationInterval"]),
        failure_mode=ssc.get("FailureMode", "closed"),
        error_message=ssc.get("ErrorMessage"),
        api_alias=ssc.get("ApiAlias"),
        secret_ref=ssc.get("SecretRef"),
        issuer=ssc.get("Issuer"),
        token_path=token_path,
        leeway_s=float(ssc.get("LeewaySeconds", 30)),
        revoked_before=ssc.get("RevokedBefore"),
        allow_anonymous=bool(ssc.get("AllowAnonymous", False)),
        keys=dict(ssc["Keys"]) if ssc.get("Keys") else None,
        identity_claim=ssc.get("IdentityClaim", "sub"),
    )


def parse_connector(data: Any, source: str) -> Connector:
    """A Connector from its record; ConfigError naming `source`, the field and why."""
    _check_schema("connector", data, source)
    mappings = []
    for key, entry in data.get("RequestMapping", {}).items():
        where = f"RequestMapping.{key}"
        body_path = None
        if entry["type"] == "requestBody":
            body_path = _path(source, f"{where}.requestBodyPath", entry["requestBodyPath"])
        mappings.append(
            Mapping(
                key=key,
                type=entry["type"],
                input_path=_path(source, f"{where}.inputPath", entry["inputPath"]),
                body_path=body_path,
                name=entry.get("name", key),
                template=entry.get("valueTemplate", "{value}"),
            )
        )
    headers = data.get("Headers", {})
    body = data.get("Body", {})
    org = data["Organization"]
    for section in ("Headers", "Body", "Auth", "RequestMapping", "ResponseMapping"):
        _check_refs(source, section, data.get(section), org)
    return Connector(
        organization=data["Organization"],
        alias=data["Alias"],
        method=data["Method"],
        endpoint=data["Endpoint"],
        headers=dict(headers),
        mappings=tuple(mappings),
        body=body,
        timeout_s=float(data.get("TimeoutSeconds", 5)),
        auth=_auth(data.get("Auth"), source),
        identity_path=_response_path(data.get("ResponseMapping") or {}, source),
    )


def _auth(data: dict[str, Any] | None, source: str) -> Auth | None:
    if data is None:
        return None
    return Auth(
        type=data["Type"],
        client_id=data["ClientId"],
        client_secret_ref=data["ClientSecret"],
        token_url=data.get("TokenUrl"),
        scope=data.get("Scope"),
        client_auth=data.get("ClientAuth", "basic"),
    )


def _response_path(mapping: dict[str, Any], source: str) -> JsonPath | None:
    identity = mapping.get("identity")
    if identity is None:
        return None
    if not isinstance(identity, str):
        raise ConfigError(source, "ResponseMapping.identity", "must be a JSONPath string")
    return _path(source, "ResponseMapping.identity", identity)


@dataclass(frozen=True, slots=True)
class ConfigFile:
    """What a configuration file holds, checked."""

    path: str
    bots: tuple[Bot, ...]
    connectors: tuple[Connector, ...]
    raw_bots: tuple[dict[str, Any], ...]
    raw_connectors: tuple[dict[str, Any], ...]


def load_file(path: Path) -> ConfigFile:
    """Read and check a JSON or YAML config file; ConfigError on the first problem."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, "", f"cannot be read ({exc.__class__.__name__}: {exc})") from None
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: e.g. an escape past U+10FFFF
        raise ConfigError(source, "", f"is not valid JSON or YAML: {exc}") from None
    if data is None:
        data = {}
    _check_schema("config-file", data, source)
    bots = _unique(
        [parse_bot(raw, f"{source}: bots[{i}]") for i, raw in enumerate(data.get("bots", []))],
        source,
        "bots",
        "Name",
    )
    connectors = _unique(
        [
            parse_connector(raw, f"{source}: connectors[{i}]")
            for i, raw in enumerate(data.get("connectors", []))
        ],
        source,
        "connectors",
        "Alias",
    )
    return ConfigFile(
        source,
        tuple(bots),
        tuple(connectors),
        tuple(data.get("bots", [])),
        tuple(data.get("connectors", [])),
    )


def _unique(items: list[Any], source: str, section: str, field_name: str) -> list[Any]:
    seen: set[str] = set()
    for i, item in enumerate(items):
        if item.key in seen:
            raise ConfigError(
                f"{source}: {section}[{i}]", field_name, f"{item.key} is defined twice"
            )
        seen.add(item.key)
    return items


# --------------------------------------------------------------------------- registry


@dataclass
class Registry:
    """The configuration in force: the file's records, then the topics' on top."""

    bots: dict[str, Bot] = field(default_factory=dict)
    connectors: dict[str, Connector] = field(default_factory=dict)
    check_bot: Callable[[Bot, str], None] = field(default=lambda bot, source: None)
    """Checks that need the worker's environment (JWT keys); raises ConfigError."""

    @classmethod
    def from_file(
        cls, config: ConfigFile | None, check_bot: Callable[[Bot, str], None] | None = None
    ) -> Registry:
        """The file's records, each checked with `check_bot` (ConfigError refuses the file)."""
        reg = cls() if check_bot is None else cls(check_bot=check_bot)
        if config is not None:
            for i, bot in enumerate(config.bots):
                reg.check_bot(bot, f"{config.path}: bots[{i}]")
            reg.bots.update((b.key, b) for b in config.bots)
            reg.connectors.update((c.key, c) for c in config.connectors)
        return reg

    def bot(self, organization: str, name: str) -> Bot | None:
        return self.bots.get(f"{organization}/{name}")

    def connector(self, organization: str, alias: str) -> Connector | None:
        return self.connectors.get(f"{organization}/{alias}")

    def apply(
        self, kind: Literal["bot", "connector"], key: bytes | None, value: bytes | None
    ) -> None:
        """Apply one config-topic record; a bad one is logged and skipped, never raised."""
        try:
            self._apply(kind, key, value)
        except ConfigError as exc:
            log.error("skipped %s config record: %s", kind, exc)

    def _apply(
        self, kind: Literal["bot", "connector"], key: bytes | None, value: bytes | None
    ) -> None:
        try:
            name = key.decode() if key is not None else ""
        except UnicodeDecodeError:
            raise ConfigError(f"{kind} record", "key", "is not UTF-8") from None
        source = f"{kind} record {name!r}"
        if name.count("/") != 1:
            raise ConfigError(source, "key", "must be <organization>/<name>")
        table: dict[str, Any] = self.bots if kind == "bot" else self.connectors
        if value is None:
            if table.pop(name, None) is not None:
                log.info("%s %s deleted", kind, name)
            return
        try:
            data = json.loads(value)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(source, "", f"is not valid JSON ({exc})") from None
        parsed: Bot | Connector = (
            parse_bot(data, source) if kind == "bot" else parse_connector(data, source)
        )
        if parsed.key != name:
            raise ConfigError(source, "key", f"does not match the record's own key {parsed.key!r}")
        if isinstance(parsed, Bot):
            self.check_bot(parsed, source)
        log.info("%s %s %s", kind, name, "updated" if name in table else "added")
        table[name] = parsed
