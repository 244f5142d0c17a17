"""What the blob collector needs from a store, on the local and the S3 store:
listing blobs with their age, removal that re-checks the age, and staging files.

S3 is moto in server mode on a loopback port (as in test_s3_blobs.py); ages are
set by back-dating (tests/support/blob_age.py), never by waiting."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from storage.blobs import BlobStore, LocalBlobStore
from storage.db import utcnow
from tests.support.blob_age import backdate, backdate_staging

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto.server")

from storage.blobs.s3 import S3BlobStore, make_s3_client  # noqa: E402

HOURS_AGO = timedelta(hours=3)


@pytest.fixture(params=["local", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    if request.param == "local":
        yield LocalBlobStore(tmp_path / "blobs")
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        client = make_s3_client(endpoint_url=endpoint, access_key_id="testing", secret_access_key="testing",
                                max_attempts=1)
        yield await S3BlobStore.open(client, f"fedface-gc-{uuid.uuid4().hex[:12]}", "blobs/",
                                     tmp_dir=tmp_path / "staging")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_lists_every_blob_with_its_size_and_commit_time(store: BlobStore) -> None:
    before = utcnow()
    keys = {await store.put_bytes(f"blob {i}".encode() * (i + 1)) for i in range(3)}
    pending = store.writer()
    await pending.write(b"not committed yet")
    pending.staged_path()
    after = utcnow()

    listed = {b.key: b async for b in store.list_blobs()}
    assert set(listed) == keys  # the staging file is no blob
    for key, blob in listed.items():
        assert blob.size == await store.size(key)
        # S3 reports whole seconds, rounded up so that nothing looks older than it is.
        assert before - timedelta(seconds=1) <= blob.modified <= after + timedelta(seconds=2)
    await pending.abort()


async def test_delete_if_older_takes_only_a_blob_still_old(store: BlobStore) -> None:
    old, young = await store.put_bytes(b"old bytes"), await store.put_bytes(b"young bytes")
    backdate(store, old, utcnow() - HOURS_AGO)
    cutoff = utcnow() - timedelta(hours=1)
    assert await store.delete_if_older(young, cutoff) is False
    assert await store.delete_if_older(old, cutoff) is True
    assert not await store.exists(old) and await store.exists(young)
    assert await store.delete_if_older(old, cutoff) is False  # already gone


async def test_committing_stored_bytes_again_makes_them_young(store: BlobStore, tmp_path: Path) -> None:
    calls: list[str] = []
    if isinstance(store, S3BlobStore):
        for op in ("PutObject", "CreateMultipartUpload", "CopyObject"):
            store.client.meta.events.register(f"before-call.s3.{op}", lambda op=op, **_: calls.append(op))
    key = await store.put_bytes(b"the same update twice")
    backdate(store, key, utcnow() - HOURS_AGO)
    listed_then = [b async for b in store.list_blobs()]
    cutoff = utcnow() - timedelta(hours=1)
    assert listed_then[0].modified < cutoff

    # An upload of the same bytes between the collector's listing and its removal.
    assert await store.put_bytes(b"the same update twice") == key
    assert await store.delete_if_older(key, cutoff) is False
    assert await store.get_bytes(key) == b"the same update twice"
    if isinstance(store, S3BlobStore):
        assert calls == ["PutObject", "CopyObject"]  # the second commit sent no bytes


async def test_stale_staging_files_are_removed_and_live_ones_kept(store: BlobStore) -> None:
    live, crashed = store.writer(), store.writer()
    await live.write(b"an upload in progress")
    await crashed.write(b"left behind by a process that died")
    live_name, crashed_name = live.staged_path().name, crashed.staged_path().name
    backdate_staging(store, crashed_name, utcnow() - HOURS_AGO)

    staged = {f.key: f for f in await store.list_staging()}
    assert set(staged) == {live_name, crashed_name}
    assert staged[crashed_name].size == len(b"left behind by a process that died")
    cutoff = utcnow() - timedelta(minutes=30)
    assert await store.delete_staging_if_older(live_name, cutoff) is False
    assert await store.delete_staging_if_older(crashed_name, cutoff) is True
    assert [f.key for f in await store.list_staging()] == [live_name]
    assert await store.get_bytes(await live.commit()) == b"an upload in progress"
    with pytest.raises(ValueError):
        await store.delete_staging_if_older("../" + live_name, cutoff)


async def test_s3_lists_only_blob_keys_under_its_prefix(s3_endpoint: str, tmp_path: Path) -> None:
    client: Any = make_s3_client(endpoint_url=s3_endpoint, access_key_id="testing", secret_access_key="testing")
    store = await S3BlobStore.open(client, f"fedface-gc-{uuid.uuid4().hex[:12]}", "blobs/", tmp_dir=tmp_path)
    key = await store.put_bytes(b"a blob")
    client.put_object(Bucket=store.bucket, Key="blobs/README", Body=b"not a blob")
    client.put_object(Bucket=store.bucket, Key="other/" + _sha(b"x"), Body=b"another prefix")
    assert [b.key async for b in store.list_blobs()] == [key]
