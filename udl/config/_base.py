"""What every config model shares: frozen, no unknown keys, and empty form fields read as None."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict

__all__ = ["Frozen", "IntOrNone", "StrOrNone"]


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _empty_is_none(value: Any) -> Any:
    # The Prefect UI form and CLI overrides send "" for a field the user cleared.
    return None if value == "" else value


StrOrNone = Annotated[str | None, BeforeValidator(_empty_is_none)]
IntOrNone = Annotated[int | None, BeforeValidator(_empty_is_none)]
