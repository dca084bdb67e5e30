"""`srn:vault::<org>:secret:<name>` references: resolution at call time.

A reference resolves to the file `<secrets dir>/<org>/<name>` (one trailing newline
stripped), or else to the environment variable `SECURE_SESSION_SECRET__<ORG>__<NAME>`
(upper case, `-` -> `_`). Values are never logged; errors name only the reference.

Tenancy: a reference is resolved only for its own organization (`resolve(ref, org)`;
config records naming another organization's references are refused in worker/config.py).
The environment fallback folds case and `-`/`_`, so it is offered only to organizations
whose name is already in the one spelling that folds to it (no upper case, no `_`):
`ACME` or `my_org` would otherwise read `acme`'s or `my-org`'s variables. Those names
use the secrets directory.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from worker.errors import SecretNotFound

PREFIX = "srn:vault::"
_REF = re.compile(
    r"srn:vault::([A-Za-z0-9_-][A-Za-z0-9_.-]*):secret:([A-Za-z0-9_-][A-Za-z0-9_.-]*)"
)


def is_ref(value: object) -> bool:
    """True when `value` is a string that looks like a vault reference."""
    return isinstance(value, str) and value.startswith(PREFIX)


def ref_org(value: str) -> str | None:
    """The organization a well-formed reference names."""
    match = _REF.fullmatch(value)
    return None if match is None else match.group(1)


def env_fallback_allowed(org: str) -> bool:
    """Whether `org`'s name is the one spelling its environment variables fold to."""
    return org == org.lower() and "_" not in org


def check_ref(value: str) -> str | None:
    """Why `value` is not a well-formed reference, or None when it is."""
    if _REF.fullmatch(value) is None:
        return f"{value!r} is not of the form srn:vault::<org>:secret:<name>"
    return None


class Vault:
    """Resolves references from a directory and the environment."""

    def __init__(self, directory: Path | None, environ: Mapping[str, str]) -> None:
        self._dir = directory
        self._env = environ

    def resolve(self, ref: str, org: str) -> str:
        """The secret's value for organization `org`; SecretNotFound when neither source
        has it, or when `ref` names another organization's secret."""
        match = _REF.fullmatch(ref)
        if match is None or match.group(1) != org:
            raise SecretNotFound(ref)
        name = match.group(2)
        if self._dir is not None:
            path = self._dir / org / name
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                pass
            else:
                return text[:-1] if text.endswith("\n") else text
        if not env_fallback_allowed(org):
            raise SecretNotFound(ref)
        var = f"SECURE_SESSION_SECRET__{org}__{name}".upper().replace("-", "_")
        value = self._env.get(var)
        if value is None:
            raise SecretNotFound(ref)
        return value

    def resolve_in(self, value: Any, org: str) -> Any:
        """A copy of a JSON value with every reference string replaced by its secret."""
        if isinstance(value, str):
            return self.resolve(value, org) if is_ref(value) else value
        if isinstance(value, dict):
            return {k: self.resolve_in(v, org) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve_in(v, org) for v in value]
        return value
