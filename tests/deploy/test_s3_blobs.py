"""The blob store contract, run against both the local and the S3 store.

S3 is served by moto in server mode on a loopback port, so the store talks
real HTTP through boto3 exactly as it would to MinIO or AWS."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import SecretStr

from storage.blobs import BlobNotFound, BlobStore, LocalBlobStore
from tests.support.live import free_port

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

from storage.blobs.factory import make_blob_store  # noqa: E402
from storage.blobs.s3 import S3BlobStore, make_s3_client  # noqa: E402


def _client(endpoint: str) -> Any:
    # moto accepts any credentials; fixed ones keep boto3 away from the host's
    # config, and a single attempt keeps the failure tests fast.
    return make_s3_client(endpoint_url=endpoint, access_key_id="testing", secret_access_key="testing", max_attempts=1)


@pytest.fixture
def s3_client(s3_endpoint: str) -> Any:
    return _client(s3_endpoint)


def _bucket() -> str:
    return f"fedface-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["local", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    if request.param == "local":
        yield LocalBlobStore(tmp_path / "blobs")
    else:
        client = request.getfixturevalue("s3_client")
        yield await S3BlobStore.open(client, _bucket(), "blobs/", tmp_dir=tmp_path / "staging")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the shared contract -------------------------------------------------------


async def test_put_get_exists_size(store: BlobStore) -> None:
    data = b"federated face weights" * 1000
    key = await store.put_bytes(data)
    assert key == _sha(data)
    assert await store.exists(key)
    assert await store.size(key) == len(data)
    assert await store.get_bytes(key) == data


async def test_stream_in_chunks(store: BlobStore) -> None:
    data = bytes(range(256)) * 400  # 102_400 bytes
    key = await store.put_bytes(data)
    chunks = [c async for c in store.stream(key, chunk_size=10_000)]
    assert b"".join(chunks) == data
    assert max(len(c) for c in chunks) <= 10_000
    assert len(chunks) >= 11


async def test_writer_in_parts_and_staged_path(store: BlobStore) -> None:
    parts = [b"a" * 7000, b"b" * 5, b"c" * 30_000]
    w = store.writer()
    for p in parts:
        await w.write(p)
    # The staged bytes can be validated before the blob becomes visible.
    assert w.staged_path().read_bytes() == b"".join(parts)
    assert w.size == sum(map(len, parts))
    assert not await store.exists(w.sha256)
    key = await w.commit()
    assert key == _sha(b"".join(parts))
    assert await store.get_bytes(key) == b"".join(parts)


async def test_writer_hands_batches_to_a_thread_and_keeps_order(store: BlobStore) -> None:
    """Parts that cross the 1 MiB hand-off several times are hashed and staged in order."""
    parts = [bytes([i]) * (700 * 1024 + i) for i in range(6)]
    w = store.writer()
    for p in parts:
        await w.write(p)
    await w.finish()
    data = b"".join(parts)
    assert w.staged_path().read_bytes() == data
    key = await w.commit()
    assert key == w.sha256 == _sha(data)  # the hash stays readable after the commit
    assert await store.get_bytes(key) == data
    await w.abort()  # a no-op after the commit
    assert await store.get_bytes(key) == data


async def test_idempotent_reput(store: BlobStore) -> None:
    data = b"same bytes twice"
    first = await store.put_bytes(data)
    second = await store.put_bytes(data)
    assert first == second
    assert await store.get_bytes(first) == data
    assert await store.size(first) == len(data)


async def test_empty_blob(store: BlobStore) -> None:
    key = await store.put_bytes(b"")
    assert key == _sha(b"")
    assert await store.size(key) == 0
    assert await store.get_bytes(key) == b""


async def test_delete(store: BlobStore) -> None:
    key = await store.put_bytes(b"short-lived")
    await store.delete(key)
    assert not await store.exists(key)
    await store.delete(key)  # deleting a missing blob is not an error


async def test_missing_blob(store: BlobStore) -> None:
    key = _sha(b"never stored")
    assert not await store.exists(key)
    with pytest.raises(BlobNotFound):
        await store.size(key)
    with pytest.raises(BlobNotFound):
        await store.get_bytes(key)
    with pytest.raises(BlobNotFound):
        async for _ in store.stream(key):
            pass


async def test_abort_leaves_nothing(store: BlobStore) -> None:
    w = store.writer()
    await w.write(b"half an upload")
    staged = w.staged_path()
    assert staged.exists()
    await w.abort()
    assert not staged.exists()
    assert not await store.exists(_sha(b"half an upload"))


async def test_bad_key_rejected(store: BlobStore) -> None:
    with pytest.raises(ValueError):
        await store.exists("../../etc/passwd")


async def test_ping(store: BlobStore) -> None:
    await store.ping()


# -- S3 specifics --------------------------------------------------------------


async def test_s3_layout_and_no_staging_left(s3_client: Any, tmp_path: Path) -> None:
    bucket = _bucket()
    store = await S3BlobStore.open(s3_client, bucket, "pfx/", tmp_dir=tmp_path)
    key = await store.put_bytes(b"layout")
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == [f"pfx/{key}"]
    assert list(tmp_path.iterdir()) == []


async def test_s3_reput_does_not_upload_again(s3_client: Any, tmp_path: Path) -> None:
    store = await S3BlobStore.open(s3_client, _bucket(), "", tmp_dir=tmp_path)
    key = await store.put_bytes(b"once")
    head1 = s3_client.head_object(Bucket=store.bucket, Key=key)
    sent: list[str] = []
    for op in ("PutObject", "CreateMultipartUpload", "UploadPart", "CopyObject"):
        s3_client.meta.events.register(f"before-call.s3.{op}", lambda op=op, **_: sent.append(op))
    await store.put_bytes(b"once")
    head2 = s3_client.head_object(Bucket=store.bucket, Key=key)
    # No bytes sent again: a server-side copy onto itself only refreshes the object's age.
    assert sent == ["CopyObject"]
    assert head1["ETag"] == head2["ETag"] and head1["LastModified"] <= head2["LastModified"]


async def test_s3_damaged_object_is_replaced(s3_client: Any, tmp_path: Path) -> None:
    store = await S3BlobStore.open(s3_client, _bucket(), "", tmp_dir=tmp_path)
    key = _sha(b"the real bytes")
    s3_client.put_object(Bucket=store.bucket, Key=key, Body=b"truncated")
    assert await store.put_bytes(b"the real bytes") == key
    assert await store.get_bytes(key) == b"the real bytes"


async def test_s3_multipart_upload(s3_client: Any, tmp_path: Path) -> None:
    # Above boto3's 8 MiB multipart threshold: the upload goes in parts.
    store = await S3BlobStore.open(s3_client, _bucket(), "", tmp_dir=tmp_path)
    data = hashlib.sha256(b"seed").digest() * (9 * 1024 * 1024 // 32 + 1)
    key = await store.put_bytes(data)
    assert await store.size(key) == len(data)
    assert _sha(b"".join([c async for c in store.stream(key)])) == key


async def test_s3_bucket_created_on_first_use(s3_client: Any, tmp_path: Path) -> None:
    bucket = _bucket()
    store = S3BlobStore(s3_client, bucket, "", create_bucket=True, tmp_dir=tmp_path)
    await store.ping()
    s3_client.head_bucket(Bucket=bucket)
    await store.ensure_bucket()  # a second replica racing for the same bucket


async def test_s3_ping_fails_without_bucket(s3_client: Any, tmp_path: Path) -> None:
    store = S3BlobStore(s3_client, _bucket(), "", create_bucket=False, tmp_dir=tmp_path)
    with pytest.raises(Exception):  # noqa: B017 - botocore's ClientError, code 404
        await store.ping()


async def test_s3_ping_fails_when_unreachable(tmp_path: Path) -> None:
    client = _client(f"http://127.0.0.1:{free_port()}")  # a free port: nobody listens there
    store = S3BlobStore(client, "b", "", create_bucket=True, tmp_dir=tmp_path)
    with pytest.raises(Exception):  # noqa: B017 - botocore EndpointConnectionError
        await store.ping()


# -- factory -------------------------------------------------------------------


def _settings(**overrides: Any) -> SimpleNamespace:
    base: dict[str, Any] = {
        "blob_backend": "local",
        "resolved_blob_dir": Path("unused"),
        "s3_endpoint_url": None,
        "s3_bucket": "fedface",
        "s3_prefix": "blobs/",
        "s3_region": "us-east-1",
        "s3_access_key_id": None,
        "s3_secret_access_key": None,
    }
    base.update(overrides)
    return SimpleNamespace(**base)


def test_factory_local(tmp_path: Path) -> None:
    store = make_blob_store(_settings(resolved_blob_dir=tmp_path / "b"))
    assert isinstance(store, LocalBlobStore)
    assert store.root == tmp_path / "b"


async def test_factory_s3(s3_endpoint: str, tmp_path: Path) -> None:
    bucket = _bucket()
    settings = _settings(
        blob_backend="s3",
        s3_endpoint_url=s3_endpoint,
        s3_bucket=bucket,
        s3_access_key_id=SecretStr("testing"),
        s3_secret_access_key=SecretStr("testing"),
    )
    store = make_blob_store(settings, tmp_dir=tmp_path)
    assert isinstance(store, S3BlobStore)
    assert (store.bucket, store.prefix) == (bucket, "blobs/")
    assert store.probe_client is not store.client
    key = await store.put_bytes(b"via factory")  # creates the bucket on first use
    assert await store.get_bytes(key) == b"via factory"


async def test_factory_s3_ping_fails_fast_when_unreachable(tmp_path: Path) -> None:
    # /readyz waits ~3 s per check; the probe must give up before that rather
    # than leave a worker thread retrying in the background.
    import time

    settings = _settings(
        blob_backend="s3",
        s3_endpoint_url=f"http://127.0.0.1:{free_port()}",  # a free port: nobody listens there
        s3_access_key_id=SecretStr("testing"),
        s3_secret_access_key=SecretStr("testing"),
    )
    store = make_blob_store(settings, tmp_dir=tmp_path)
    start = time.monotonic()
    with pytest.raises(Exception):  # noqa: B017 - botocore EndpointConnectionError
        await store.ping()
    assert time.monotonic() - start < 2.5


def test_factory_accepts_coordinator_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings_mod = pytest.importorskip("coordinator.settings")
    monkeypatch.setenv("FEDFACE_BLOB_BACKEND", "s3")
    monkeypatch.setenv("FEDFACE_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("FEDFACE_S3_BUCKET", "from-env")
    store = make_blob_store(settings_mod.Settings(), tmp_dir=tmp_path)
    assert isinstance(store, S3BlobStore)
    assert store.bucket == "from-env"


def test_factory_unknown_backend() -> None:
    with pytest.raises(ValueError):
        make_blob_store(_settings(blob_backend="ftp"))
