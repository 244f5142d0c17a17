"""Streaming a content-addressed blob, with its hash as a strong ETag."""

from __future__ import annotations

from fastapi import Response
from fastapi.responses import StreamingResponse

from coordinator.context import AppContext
from coordinator.services.downloads import BlobRef


async def blob_response(ctx: AppContext, blob: BlobRef, if_none_match: str | None) -> Response:
    etag = f'"{blob.sha256}"'
    if if_none_match is not None and (if_none_match.strip() == "*" or etag in [
        t.strip().removeprefix("W/") for t in if_none_match.split(",")
    ]):
        return Response(status_code=304, headers={"ETag": etag})
    size = await ctx.blobs.size(blob.sha256)
    return StreamingResponse(
        ctx.blobs.stream(blob.sha256), media_type="application/octet-stream",
        headers={"ETag": etag, "Content-Length": str(size), "Cache-Control": "private, max-age=31536000, immutable",
                 "Content-Disposition": f'attachment; filename="{blob.filename}"'},
    )
