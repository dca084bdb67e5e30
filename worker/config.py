"""Bot and api-connector configuration: parsing, checking and the live registry.

Records come from the `SECURE_SESSION_CONFIG` file at start and from the compacted
topics `secure-session.bots` / `secure-session.connectors` while running. Every record
is checked against its JSON Schema (`schemas/`) and then for what a schema cannot say
(JSONPath syntax, vault reference form). A bad file refuses the start; a bad topic
record is logged and skipped (the previous value, if any, stays in force).
"""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import jsonschema
import orjson
import yaml

from worker.errors import ConfigError
from worker.jsonpath import JsonPath
from worker.vault import check_ref, is_ref, ref_org

log = logging.getLogger(__name__)

SCHEMAS = Path(__file__).parent / "schemas"

MAX_FILE_BYTES = 4 * 1024 * 1024
"""A configuration file larger than this is refused unread."""
MAX_RECORD_BYTES = 1024 * 1024
"""A config-topic record larger than this is skipped unread (Kafka's default record limit)."""
MAX_DEPTH = 64
"""Nesting deeper than this is refused: no record of ours nests more than a few levels,
and the checks that walk a record must never run out of stack (RecursionError)."""
MAX_NODES = 200_000
"""What a YAML file may expand to, aliases counted each time they are used: a few hundred
bytes of nested aliases otherwise expand to gigabytes ("billion laughs")."""

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
    enforcement: Literal["enforce", "monitor"] = "enforce"
    """monitor: what would be blocked is allowed, marked and audited `would_block`."""
    refresh_ahead: float | None = None
    """f in (0, 1): a cached message after f x interval starts a background validation."""
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


def _check_depth(data: Any, source: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH (walked without recursion)."""
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth >= MAX_DEPTH:
                raise ConfigError(source, "", f"nests deeper than {MAX_DEPTH} levels")
            items = value.values() if isinstance(value, dict) else value
            stack.extend((v, depth + 1) for v in items)


def _load_yaml(text: str, source: str) -> Any:
    """yaml.safe_load, bounded: the expansion of aliases and the nesting are checked on
    the composed node graph, before anything is built from it."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, source)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_expansion(root: yaml.Node, source: str) -> None:
    sizes: dict[int, int] = {}  # expanded size of each finished node (shared by aliases)
    open_nodes: set[int] = set()  # the ancestors of the node being looked at
    stack: list[tuple[yaml.Node, bool, int]] = [(root, False, 0)]
    while stack:
        node, done, depth = stack.pop()
        children = _children(node)
        if done:
            open_nodes.discard(id(node))
            size = 1 + sum(sizes[id(c)] for c in children)
            if size > MAX_NODES:
                raise ConfigError(
                    source, "", f"expands to more than {MAX_NODES:,} values (YAML aliases)"
                )
            sizes[id(node)] = size
        elif id(node) not in sizes:
            if id(node) in open_nodes:
                raise ConfigError(source, "", "holds a recursive YAML alias")
            if depth >= MAX_DEPTH:
                raise ConfigError(source, "", f"nests deeper than {MAX_DEPTH} levels")
            open_nodes.add(id(node))
            stack.append((node, True, depth))
            stack.extend((c, False, depth + 1) for c in children if id(c) not in sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


@cache
def _known(schema: str, *path: str) -> frozenset[str]:
    """The property names the schema gives at `path` (names of `properties` or `$defs`)."""
    node: Any = json.loads((SCHEMAS / f"{schema}.schema.json").read_text(encoding="utf-8"))
    for step in path:
        node = node[step]
    return frozenset(node["properties"])


def likely_typos(kind: Literal["bot", "connector"], data: Any) -> list[str]:
    """Unknown keys close to a known one (`FailurMode`: did you mean `FailureMode`?), in
    the places whose keys are all the worker's own: a bot's SecureSessionConfig, a
    connector, its mappings and Auth. Unknown keys elsewhere are normal (ServisBOT bots
    carry many) and unknown keys far from every known one are let be."""
    if not isinstance(data, dict):
        return []
    places: list[tuple[str, Any, frozenset[str]]] = []
    if kind == "bot":
        places.append(
            (
                "SecureSessionConfig",
                data.get("SecureSessionConfig"),
                _known("bot", "$defs", "SecureSessionConfig"),
            )
        )
        places.append(("", data, _known("bot")))
    else:
        places.append(("", data, _known("connector")))
        places.append(("Auth", data.get("Auth"), _known("connector", "properties", "Auth")))
        mappings = data.get("RequestMapping")
        if isinstance(mappings, dict):
            for key, entry in mappings.items():
                places.append(
                    (f"RequestMapping.{key}", entry, _known("connector", "$defs", "Mapping"))
                )
    found = []
    for where, value, known in places:
        if not isinstance(value, dict):
            continue
        for key in value:
            if key in known or not isinstance(key, str):
                continue
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
            if close:
                field_name = f"{where}.{key}" if where else key
                found.append(f"{field_name}: unknown field; did you mean {close[0]!r}?")
    return found


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
        enforcement=ssc.get("Enforcement", "enforce"),
        refresh_ahead=ssc.get("RefreshAhead"),
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
    warnings: tuple[str, ...] = ()
    """Likely typos (`likely_typos`), each naming the file, the entry and the field."""


def load_file(path: Path) -> ConfigFile:
    """Read and check a JSON or YAML config file; ConfigError on the first problem."""
    source = str(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ConfigError(source, "", f"is larger than {MAX_FILE_BYTES:,} bytes")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, "", f"cannot be read ({exc.__class__.__name__}: {exc})") from None
    try:
        data = _load_yaml(text, source)
    except (yaml.YAMLError, ValueError, RecursionError) as exc:  # ValueError: e.g. an escape
        # past U+10FFFF; the message of a YAML error quotes a line, never a whole document
        why = exc if not isinstance(exc, RecursionError) else "nests too deep"
        raise ConfigError(source, "", f"is not valid JSON or YAML: {why}") from None
    if data is None:
        data = {}
    _check_depth(data, source)
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
    warnings = [
        f"{source}: {section}[{i}]: {typo}"
        for section, kind in (("bots", "bot"), ("connectors", "connector"))
        for i, raw in enumerate(data.get(section, []))
        for typo in likely_typos(kind, raw)  # type: ignore[arg-type]
    ]
    return ConfigFile(
        source,
        tuple(bots),
        tuple(connectors),
        tuple(data.get("bots", [])),
        tuple(data.get("connectors", [])),
        tuple(warnings),
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
class Revocations:
    """What `secure-session.revocations` says is revoked: revokedAt (epoch ms) by key."""

    sessions: dict[str, int] = field(default_factory=dict)
    """`<organization>/<bot>/<sessionId>`."""
    identities: dict[str, int] = field(default_factory=dict)
    """`<organization>/<identity>`."""

    def revoked_at(self, org: str, bot: str, session: str, identity: str | None) -> int | None:
        """The latest revocation that covers this session (by itself or by its identity)."""
        # asked for every message: no key is made while nothing is revoked
        found = self.sessions.get(f"{org}/{bot}/{session}") if self.sessions else None
        if (
            identity is not None
            and self.identities
            and (by_identity := self.identities.get(f"{org}/{identity}"))
        ):
            found = by_identity if found is None else max(found, by_identity)
        return found

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """One revocation record (null: lifted); a bad one is logged and skipped."""
        try:
            name = (key or b"").decode()
        except UnicodeDecodeError:
            log.error("skipped revocation record: key is not UTF-8")
            return
        parts = name.split("/", 3)
        if len(parts) == 4 and parts[2] == "session" and all(parts):
            table, entry = self.sessions, f"{parts[0]}/{parts[1]}/{parts[3]}"
        elif len(parts) >= 3 and parts[1] == "identity" and parts[0]:
            table, entry = self.identities, f"{parts[0]}/{name.split('/', 2)[2]}"
        else:
            log.error(
                "skipped revocation record %r: key must be <organization>/<bot>/session/<id> "
                "or <organization>/identity/<identity>",
                name[:300],
            )
            return
        if value is None:
            if table.pop(entry, None) is not None:
                log.info("revocation lifted: %s", name[:300])
            return
        try:
            doc = orjson.loads(value)
            revoked_at = doc["revokedAt"]
            if type(revoked_at) is not int or revoked_at <= 0:
                raise TypeError
        except (orjson.JSONDecodeError, TypeError, KeyError):
            log.error(
                'skipped revocation record %r: value must be {"revokedAt": <epoch ms>}', name[:300]
            )
            return
        table[entry] = revoked_at
        log.info("revocation in force: %s (since %d)", name[:300], revoked_at)


@dataclass
class Registry:
    """The configuration in force: the file's records, then the topics' on top."""

    bots: dict[str, Bot] = field(default_factory=dict)
    connectors: dict[str, Connector] = field(default_factory=dict)
    revocations: Revocations = field(default_factory=Revocations)
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
        except Exception as exc:  # noqa: BLE001 - no config record may stop a worker
            # a bug in a check: named by its class only (a message could quote the record)
            log.error(
                "skipped %s config record at key %r: internal error checking it (%s)",
                kind,
                (key or b"")[:200],
                exc.__class__.__name__,
            )

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
        if len(value) > MAX_RECORD_BYTES:
            raise ConfigError(source, "", f"is larger than {MAX_RECORD_BYTES:,} bytes")
        try:
            data = orjson.loads(value)  # its own depth bound (1024): no RecursionError
        except orjson.JSONDecodeError as exc:
            raise ConfigError(source, "", f"is not valid JSON ({exc})") from None
        _check_depth(data, source)
        parsed: Bot | Connector = (
            parse_bot(data, source) if kind == "bot" else parse_connector(data, source)
        )
        if parsed.key != name:
            raise ConfigError(source, "key", f"does not match the record's own key {parsed.key!r}")
        if isinstance(parsed, Bot):
            self.check_bot(parsed, source)
        for typo in likely_typos(kind, data):
            log.warning("%s: %s", source, typo)
        log.info("%s %s %s", kind, name, "updated" if name in table else "added")
        table[name] = parsed
