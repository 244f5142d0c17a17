"""Blob store on S3 or any S3-compatible service (MinIO, Ceph RGW, moto).

Every coordinator replica shares one bucket, which is what makes the
coordinator horizontally scalable: a blob uploaded through one replica can be
served by another. Objects live at `<prefix><sha256>`; because keys are the
hash of the content, an upload of a key that already exists sends no bytes
again (a server-side copy refreshes the object's age) and two replicas racing
to store the same bytes write identical objects.

boto3 is synchronous, so every network call runs in a worker thread
(`asyncio.to_thread`) to keep the event loop free."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from storage.blobs.base import BlobNotFound, BlobStore, BlobWriter, StagedFileWriter, StoredObject, check_key
from storage.blobs.guards import KeyGuard, ProcessKeyGuard

# Error codes S3 and its look-alikes use for "no such object/bucket". A HEAD
# response has no body, so botocore reports it by HTTP status ("404").
_NOT_FOUND = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}
_BUCKET_OURS = {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _is_not_found(exc: ClientError) -> bool:
    return _error_code(exc) in _NOT_FOUND


def make_s3_client(
    *,
    endpoint_url: str | None = None,
    region: str = "us-east-1",
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    connect_timeout_s: float = 5.0,
    read_timeout_s: float = 60.0,
    max_attempts: int = 5,
) -> Any:
    """A boto3 S3 client suited to the coordinator.

    With no keys given boto3's default credential chain applies (env, instance
    or pod identity), which is what a cloud deployment wants."""
    config = Config(
        region_name=region,
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
        retries={"max_attempts": max_attempts, "mode": "standard"},
        # One pooled connection per worker thread that `asyncio.to_thread` may use.
        max_pool_connections=32,
        # Self-hosted S3 (MinIO) rarely has wildcard DNS for virtual-host buckets.
        s3={"addressing_style": "path" if endpoint_url else "auto"},
    )
    # boto3 clients are thread-safe once built (sessions are not), so one
    # client is shared by all threads of the store.
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=config,
    )


class _S3Writer(StagedFileWriter):
    """Stages the blob in a local temp file (hashing as it goes), so the key is
    known and the bytes can be validated before anything reaches S3."""

    def __init__(self, store: S3BlobStore) -> None:
        super().__init__(store.staging_dir, store.staging_prefix)
        self._store = store

    async def commit(self) -> str:
        await self.finish()
        key = self.sha256
        path = self._close_staged()
        try:
            await self._store.upload_file(path, key)
        finally:
            path.unlink(missing_ok=True)
        return key


class S3BlobStore(BlobStore):
    """Content-addressed blobs in `s3://<bucket>/<prefix><sha256>`.

    The constructor does no network I/O, so a coordinator can start while S3
    is still coming up (its readiness probe reports it). With
    `create_bucket=True` the bucket is created on first use when missing;
    `ensure_bucket()` does it eagerly."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        *,
        create_bucket: bool = False,
        region: str | None = None,
        tmp_dir: Path | None = None,
        probe_client: Any | None = None,
        guard: KeyGuard | None = None,
    ) -> None:
        self.client = client
        # Readiness probes time out after a few seconds but cannot cancel the
        # worker thread of a blocked boto3 call; a client with short timeouts
        # and no retries keeps an S3 outage from tying up the thread pool.
        self.probe_client = probe_client or client
        self.bucket = bucket
        self.prefix = prefix
        self.region = region
        self.tmp_dir = tmp_dir
        if tmp_dir is not None:
            tmp_dir.mkdir(parents=True, exist_ok=True)
        # Without a directory of its own the store stages in the system's temp directory; the
        # prefix tells its files from everything else there.
        self.staging_dir, self.staging_prefix = tmp_dir or Path(tempfile.gettempdir()), "s3-upload-"
        self._create_bucket = create_bucket
        self._bucket_ready = False
        # Replicas sharing the bucket need a guard they share too (the coordinator passes a Redis one).
        self.guard = guard or ProcessKeyGuard()

    @classmethod
    async def open(
        cls,
        client: Any,
        bucket: str,
        prefix: str = "",
        *,
        region: str | None = None,
        tmp_dir: Path | None = None,
    ) -> S3BlobStore:
        """Construct the store and make sure its bucket exists."""
        store = cls(client, bucket, prefix, create_bucket=True, region=region, tmp_dir=tmp_dir)
        await store.ensure_bucket()
        return store

    def key_of(self, sha256: str) -> str:
        return self.prefix + check_key(sha256)

    # -- bucket --------------------------------------------------------------

    async def ensure_bucket(self, *, client: Any | None = None) -> None:
        """Create the bucket unless it exists. Safe to race with other replicas."""
        await asyncio.to_thread(self._ensure_bucket_sync, client or self.client)
        self._bucket_ready = True

    def _ensure_bucket_sync(self, client: Any) -> None:
        try:
            client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if not _is_not_found(exc):
                raise
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        # us-east-1 is the one region S3 rejects as an explicit LocationConstraint.
        if self.region and self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            client.create_bucket(**kwargs)
        except ClientError as exc:
            # Another replica created it between our HEAD and CREATE.
            if _error_code(exc) not in _BUCKET_OURS:
                raise

    async def _maybe_ensure_bucket(self, client: Any | None = None) -> None:
        # No lock: ensure_bucket is idempotent, so a concurrent duplicate call is harmless.
        if self._create_bucket and not self._bucket_ready:
            await self.ensure_bucket(client=client)

    # -- BlobStore -----------------------------------------------------------

    def writer(self) -> BlobWriter:
        return _S3Writer(self)

    async def upload_file(self, path: Path, sha256: str) -> None:
        """Upload a staged file under its hash, unless that object already exists."""
        key = self.key_of(sha256)
        await self._maybe_ensure_bucket()
        try:
            existing = int((await self._head(sha256))["ContentLength"])
        except BlobNotFound:
            existing = -1
        if existing < 0:
            await self._put(path, key)  # nothing there that the collector could remove
            return
        async with self.guard.hold(sha256, wait=True):
            # Same key means same bytes, so an object of the right size is kept;
            # one of another size can only be damaged, and is replaced.
            if existing != path.stat().st_size or not await self._refresh(key):
                await self._put(path, key)

    async def _put(self, path: Path, key: str) -> None:
        # upload_file switches to a multipart upload for big files; botocore
        # adds a CRC checksum per request, so corruption in transit is caught.
        await asyncio.to_thread(self.client.upload_file, str(path), self.bucket, key)

    async def _refresh(self, key: str) -> bool:
        """Make an existing object young again without sending its bytes (a copy onto itself);
        False when it is gone (collected meanwhile), and must be uploaded.

        The collector removes only objects older than its grace period; an object kept as it was
        would keep its old age, and could be taken before the row of this upload commits."""
        try:
            await asyncio.to_thread(self.client.copy_object, Bucket=self.bucket, Key=key,
                                    CopySource={"Bucket": self.bucket, "Key": key}, MetadataDirective="REPLACE")
        except ClientError as exc:
            if _is_not_found(exc):
                return False
            raise
        return True

    async def exists(self, sha256: str) -> bool:
        try:
            await self._head(sha256)
        except BlobNotFound:
            return False
        return True

    async def _head(self, sha256: str) -> dict[str, Any]:
        key = self.key_of(sha256)
        try:
            result: dict[str, Any] = await asyncio.to_thread(self.client.head_object, Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _is_not_found(exc):
                raise BlobNotFound(sha256) from exc
            raise
        return result

    async def size(self, sha256: str) -> int:
        return int((await self._head(sha256))["ContentLength"])

    async def _get_body(self, sha256: str) -> Any:
        key = self.key_of(sha256)
        try:
            response = await asyncio.to_thread(self.client.get_object, Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _is_not_found(exc):
                raise BlobNotFound(sha256) from exc
            raise
        return response["Body"]

    async def get_bytes(self, sha256: str) -> bytes:
        body = await self._get_body(sha256)
        try:
            data: bytes = await asyncio.to_thread(body.read)
        finally:
            body.close()
        return data

    async def stream(self, sha256: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        body = await self._get_body(sha256)
        try:
            while chunk := await asyncio.to_thread(body.read, chunk_size):
                yield chunk
        finally:
            # Release the pooled connection even if the consumer stops early.
            body.close()

    async def delete(self, sha256: str) -> None:
        # S3's DELETE succeeds for a missing key, matching the local store.
        await asyncio.to_thread(self.client.delete_object, Bucket=self.bucket, Key=self.key_of(sha256))

    async def ping(self) -> None:
        await self._maybe_ensure_bucket(self.probe_client)
        await asyncio.to_thread(self.probe_client.head_bucket, Bucket=self.bucket)

    # -- collection -------------------------------------------------------------

    async def list_blobs(self) -> AsyncIterator[StoredObject]:
        await self._maybe_ensure_bucket()
        pages = iter(self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix))
        while (page := await asyncio.to_thread(next, pages, None)) is not None:
            for obj in page.get("Contents", []):
                sha = obj["Key"][len(self.prefix):]
                if len(sha) == 64 and all(c in "0123456789abcdef" for c in sha):  # others share the prefix
                    yield StoredObject(sha, int(obj["Size"]), _utc(obj["LastModified"]))

    async def delete_if_older(self, sha256: str, before: datetime) -> bool:
        # S3 has no delete conditional on age: the age is read just before the DELETE, under the
        # key's guard, which a commit of bytes already stored holds while it makes them young again.
        async with self.guard.hold(sha256, wait=False) as held:
            if not held:  # being committed now, or the guard is unreachable: leave it
                return False
            try:
                modified = _utc((await self._head(sha256))["LastModified"])
            except BlobNotFound:
                return False
            if modified >= before:
                return False
            await self.delete(sha256)
            return True


def _utc(value: datetime) -> datetime:
    """S3 reports whole seconds: rounded up, so that an object never looks older than it is."""
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.replace(microsecond=0) + timedelta(seconds=1)
