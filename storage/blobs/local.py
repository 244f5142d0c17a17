"""Blob store on a local directory: `<root>/ab/cdef...`, written atomically
(temp file, fsync, rename) so a crash never leaves a partial blob in place."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path

from storage.blobs.base import (
    BlobNotFound,
    BlobStore,
    BlobWriter,
    StagedFileWriter,
    StoredObject,
    check_key,
    mtime_utc,
)

_HEX = frozenset("0123456789abcdef")


class _LocalWriter(StagedFileWriter):
    def __init__(self, store: LocalBlobStore) -> None:
        super().__init__(store.staging_dir, store.staging_prefix)
        self._store = store

    async def commit(self) -> str:
        await self.finish()
        key = self.sha256
        # fsync and rename wait on the file system's journal: off the event loop.
        await asyncio.to_thread(self._sync_and_move, self._store.path_of(key))
        return key

    def _sync_and_move(self, dest: Path) -> None:
        os.fsync(self._finish_staging().fileno())
        path = self._close_staged()
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            # The blob's age counts from this commit, not from its last byte received: bytes that
            # are already stored (the same update sent again) become young again, so the collector
            # cannot take them before the row that references them commits.
            os.utime(path)
            with self._store.removal_lock(exclusive=False):
                os.replace(path, dest)
        except BaseException:
            path.unlink(missing_ok=True)
            raise


class LocalBlobStore(BlobStore):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.staging_dir, self.staging_prefix = self.tmp_dir, "upload-"
        self._lock_path = root / ".removal-lock"

    def path_of(self, sha256: str) -> Path:
        check_key(sha256)
        return self.root / sha256[:2] / sha256[2:]

    def writer(self) -> BlobWriter:
        return _LocalWriter(self)

    async def exists(self, sha256: str) -> bool:
        return self.path_of(sha256).is_file()

    async def size(self, sha256: str) -> int:
        try:
            return self.path_of(sha256).stat().st_size
        except FileNotFoundError as exc:
            raise BlobNotFound(sha256) from exc

    async def get_bytes(self, sha256: str) -> bytes:
        try:
            return await asyncio.to_thread(self.path_of(sha256).read_bytes)
        except FileNotFoundError as exc:
            raise BlobNotFound(sha256) from exc

    async def stream(self, sha256: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        path = self.path_of(sha256)
        if not path.is_file():
            raise BlobNotFound(sha256)
        with path.open("rb") as f:
            while chunk := await asyncio.to_thread(f.read, chunk_size):
                yield chunk

    async def delete(self, sha256: str) -> None:
        self.path_of(sha256).unlink(missing_ok=True)

    async def ping(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise OSError(f"blob directory {self.root} is not writable")

    # Collection --------------------------------------------------------------------

    @contextlib.contextmanager
    def removal_lock(self, exclusive: bool) -> Iterator[None]:
        """Commits rename under a shared lock, an age-checked removal holds it exclusively: a commit
        of the same bytes can never land between the removal's age check and its unlink. An flock
        on a file in the store, so that every process using this directory takes part."""
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # releases the lock

    async def list_blobs(self) -> AsyncIterator[StoredObject]:
        for shard in await asyncio.to_thread(self._shards):
            for blob in await asyncio.to_thread(self._scan_shard, shard):
                yield blob

    def _shards(self) -> list[Path]:
        with os.scandir(self.root) as entries:
            return sorted(Path(e.path) for e in entries if len(e.name) == 2 and set(e.name) <= _HEX
                          and e.is_dir(follow_symlinks=False))

    @staticmethod
    def _scan_shard(shard: Path) -> list[StoredObject]:
        found = []
        with os.scandir(shard) as entries:
            for entry in entries:
                if len(entry.name) != 62 or not set(entry.name) <= _HEX:
                    continue
                with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                    st = entry.stat(follow_symlinks=False)
                    found.append(StoredObject(shard.name + entry.name, st.st_size, mtime_utc(st.st_mtime)))
        return found

    async def delete_if_older(self, sha256: str, before: datetime) -> bool:
        path = self.path_of(sha256)

        def remove() -> bool:
            with self.removal_lock(exclusive=True):
                try:
                    if mtime_utc(path.stat().st_mtime) >= before:
                        return False
                    path.unlink()
                except FileNotFoundError:
                    return False
            return True

        return await asyncio.to_thread(remove)
