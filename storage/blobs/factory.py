"""Pick the blob store named by configuration (`blob_backend`: local | s3).

`storage` must not import `coordinator` at run time (a device install has no
coordinator), so the settings are described by a Protocol that
`coordinator.settings.Settings` happens to satisfy."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Protocol

from storage.blobs.base import BlobStore
from storage.blobs.guards import KeyGuard
from storage.blobs.local import LocalBlobStore


class _Secret(Protocol):
    def get_secret_value(self) -> str: ...


class BlobSettings(Protocol):
    # Read-only properties, so that plain attributes, pydantic fields and
    # properties all match (a mutable Protocol attribute would be invariant).
    @property
    def blob_backend(self) -> str: ...
    @property
    def resolved_blob_dir(self) -> Path: ...
    @property
    def s3_endpoint_url(self) -> str | None: ...
    @property
    def s3_bucket(self) -> str: ...
    @property
    def s3_prefix(self) -> str: ...
    @property
    def s3_region(self) -> str: ...
    @property
    def s3_access_key_id(self) -> _Secret | None: ...
    @property
    def s3_secret_access_key(self) -> _Secret | None: ...


def _reveal(secret: _Secret | None) -> str | None:
    return secret.get_secret_value() if secret is not None else None


def make_blob_store(settings: BlobSettings, *, tmp_dir: Path | None = None, guard: KeyGuard | None = None
                    ) -> BlobStore:
    """Build the configured store without network I/O.

    The S3 store creates its bucket on first use if missing, so a coordinator
    started before MinIO/S3 is up simply reports not-ready until it is.
    `tmp_dir` is where S3 uploads are staged (default: the system temp dir);
    `guard` is what every process sharing the bucket takes per key (guards.py)."""
    backend = settings.blob_backend
    if backend == "local":
        return LocalBlobStore(settings.resolved_blob_dir)
    if backend == "s3":
        # Imported here so that a local-only install does not need boto3.
        from storage.blobs.s3 import S3BlobStore, make_s3_client

        connect = functools.partial(
            make_s3_client,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=_reveal(settings.s3_access_key_id),
            secret_access_key=_reveal(settings.s3_secret_access_key),
        )
        return S3BlobStore(
            connect(),
            settings.s3_bucket,
            settings.s3_prefix,
            create_bucket=True,
            region=settings.s3_region,
            tmp_dir=tmp_dir,
            guard=guard,
            # Fails fast for /readyz (which gives up after ~3 s) instead of retrying.
            probe_client=connect(connect_timeout_s=2, read_timeout_s=2, max_attempts=1),
        )
    raise ValueError(f"unknown blob_backend {backend!r} (expected 'local' or 's3')")
