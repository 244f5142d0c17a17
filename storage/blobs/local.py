"""Blob store on a local directory: `<root>/ab/cdef...`, written atomically
(temp file, fsync, rename) so a crash never leaves a partial blob in place."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

from storage.blobs.base import BlobNotFound, BlobStore, BlobWriter, StagedFileWriter, check_key


class _LocalWriter(StagedFileWriter):
    def __init__(self, store: LocalBlobStore) -> None:
        super().__init__(store.tmp_dir, "upload-")
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
            os.replace(path, dest)
        except BaseException:
            path.unlink(missing_ok=True)
            raise


class LocalBlobStore(BlobStore):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

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
