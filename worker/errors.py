"""The worker's exceptions, one tree.

    SecureSessionError
     ├── SettingsError        an environment variable has a bad value (refused at start)
     ├── TopicSetupError      a topic is missing and cannot be created (refused at start)
     ├── ConfigError          a bot / connector configuration is invalid (file: refused at
     │                        start; config topic: the record is logged and skipped)
     ├── InvalidEvent         an inbound record is not an event of the contract (blocked)
     ├── Misconfigured        a bot's connector or a secret is missing (blocked `misconfigured`)
     │    └── SecretNotFound  an `srn:vault::` reference resolves to nothing
     └── Unavailable          a service a call depends on (a token endpoint) did not answer

Messages never carry a secret value or a token: only names, paths and references.
"""

from __future__ import annotations

from worker.text import printable


class SecureSessionError(Exception):
    """Base of every error raised by the worker."""


class SettingsError(SecureSessionError):
    """An environment variable has a value the worker cannot use."""

    def __init__(self, variable: str, why: str) -> None:
        self.variable = variable
        self.why = why
        super().__init__(f"{variable}: {why}")


class TopicSetupError(SecureSessionError):
    """A topic the worker needs is missing and cannot be created."""


class ConfigError(SecureSessionError):
    """A configuration record is invalid.

    `source` is the file (and list index) or topic key, `field` the offending field as a
    dotted path, `why` the reason.
    """

    def __init__(self, source: str, field: str, why: str) -> None:
        # all three may hold what a record's author chose: escaped and bounded
        source, field, why = printable(source, 300), printable(field, 300), printable(why, 500)
        self.source = source
        self.field = field
        self.why = why
        where = f"{source}: {field}" if field else source
        super().__init__(f"{where}: {why}")


class InvalidEvent(SecureSessionError):
    """The inbound value is not a valid event; `detail` says why."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


class Misconfigured(SecureSessionError):
    """The bot cannot be validated as configured (connector or secret missing)."""


class SecretNotFound(Misconfigured):
    """An `srn:vault::` reference names no file and no environment variable."""

    def __init__(self, ref: str) -> None:
        self.ref = ref
        super().__init__(f"secret {ref} not found")


class Unavailable(SecureSessionError):
    """A service the validation depends on did not answer usefully (the bot's FailureMode)."""
