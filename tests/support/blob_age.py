"""Making a stored blob or staging file look old without waiting: its mtime
(local store), or its LastModified inside moto's in-process backend (S3)."""

from __future__ import annotations

import os
from datetime import UTC, datetime

from storage.blobs import BlobStore, LocalBlobStore


def backdate(store: BlobStore, sha256: str, when: datetime) -> None:
    if isinstance(store, LocalBlobStore):
        os.utime(store.path_of(sha256), (when.timestamp(), when.timestamp()))
        return
    from moto.s3.models import s3_backends  # the moto server of the tests runs in this process

    from storage.blobs.s3 import S3BlobStore

    assert isinstance(store, S3BlobStore)
    for account in list(s3_backends.keys()):
        for backend in s3_backends[account].values():
            bucket = backend.buckets.get(store.bucket)
            if bucket is not None:
                bucket.keys[store.key_of(sha256)].last_modified = when.astimezone(UTC).replace(tzinfo=None)
                return
    raise KeyError(f"bucket {store.bucket} not found in moto's backend")


def backdate_staging(store: BlobStore, name: str, when: datetime) -> None:
    os.utime(store.staging_dir / name, (when.timestamp(), when.timestamp()))
