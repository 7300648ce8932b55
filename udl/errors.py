"""One exception hierarchy for udl; each message names what is wrong and how to fix it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = ["ConfigError", "InputDataError", "NotFittedError", "SchemaError", "UdlError"]


class UdlError(Exception):
    """Base class: a problem in the user's configuration or data, or a misuse of udl's API;
    deterministic, so never worth a retry."""


class ConfigError(UdlError, ValueError):
    """A configuration value is invalid or does not fit the data."""

    @classmethod
    def from_validation_error(cls, exc: ValidationError, model: str) -> ConfigError:
        """Render each pydantic error as `The 'a.b' parameter of Model ...: reason. Got X.`."""
        lines = []
        for err in exc.errors():
            loc = ".".join(str(part) for part in err["loc"]) or "<root>"
            message = err["msg"].removeprefix("Value error, ")
            lines.append(f"The '{loc}' parameter of {model}: {message}.{_got(err)}")
        return cls("\n".join(lines))


MAX_SHOWN_CHARS = 120


def _got(err: Any) -> str:
    """The offending value, when there is one worth showing: a model-level check's input is the
    whole config, which would bury the message."""
    if err["type"] == "missing" or isinstance(err["input"], dict):
        return ""
    shown = repr(err["input"])
    if len(shown) > MAX_SHOWN_CHARS:
        shown = shown[: MAX_SHOWN_CHARS - 1] + "…"
    return f" Got {shown} instead."


class InputDataError(UdlError):
    """The input cannot be read as a corpus at all (as opposed to single bad rows)."""

    def __init__(self, source: str, reason: str, row: int | None = None) -> None:
        where = f"{source}:{row}" if row is not None else source
        super().__init__(f"{where}: {reason}")
        self.source = source
        self.row = row
        self.reason = reason

    def __reduce__(self) -> tuple[type[InputDataError], tuple[str, str, int | None]]:
        # Raised inside Dask workers: pickling must rebuild it from its fields, not `args`.
        return (type(self), (self.source, self.reason, self.row))


class SchemaError(UdlError):
    """A dataset written by an earlier step does not have the columns this step needs."""


class NotFittedError(UdlError, RuntimeError):
    """A fitted-state method (transform, save) was called on an estimator before `fit`."""
