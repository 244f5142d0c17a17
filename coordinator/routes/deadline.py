"""Uploads are cut off at `max_upload_s`, body included.

The blob collector relies on the bound: a blob nobody references is removed
only once it is older than `blob_gc_grace_s` (> `max_upload_s`), and a staging
file older than `max_upload_s` belongs to no upload still running."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from coordinator.context import AppContext
from coordinator.errors import UploadTimeout


@asynccontextmanager
async def upload_deadline(ctx: AppContext) -> AsyncIterator[None]:
    limit = ctx.settings.max_upload_s
    scope = asyncio.timeout(limit)
    try:
        async with scope:
            yield
    except TimeoutError:
        if not scope.expired():  # a timeout of something inside (a store, a database), not the upload's
            raise
        raise UploadTimeout(f"the upload did not finish within {limit:g} s", limit_s=limit) from None
