"""Path parameter types shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

# Ids are 32-bit serial columns: anything outside is refused as a validation
# error before it reaches the database driver (which would raise).
RowId = Annotated[int, Path(ge=1, le=2_147_483_647)]
