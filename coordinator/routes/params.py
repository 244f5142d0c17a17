"""Path and query parameter types shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path
from pydantic import BeforeValidator

from coordinator.services.headers import strict_int


def _plain_decimal(value: object) -> object:
    # Lax int parsing would also take "1_0", "+1" and "01": one resource under many URLs.
    if isinstance(value, str) and strict_int(value) is None:
        raise ValueError("an integer is written in plain decimal digits")
    return value


# Ids are 32-bit serial columns: anything outside is refused as a validation
# error before it reaches the database driver (which would raise).
RowId = Annotated[int, BeforeValidator(_plain_decimal), Path(ge=1, le=2_147_483_647)]

# A page size: the same plain decimal digits, so that one listing is not spelled many ways either.
PlainInt = BeforeValidator(_plain_decimal)
