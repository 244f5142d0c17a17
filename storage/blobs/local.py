"""Blob store on a local directory: `<root>/ab/cdef...`, written atomically
(temp file, fsync, rename) so a crash never leaves a partial blob in place."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from storage.blobs.base import BlobNotFound, BlobStore, BlobWriter, check_key


class _LocalWriter(BlobWriter):
    def __init__(self, store: LocalBlobStore) -> None:
        super().__init__()
        self._store = store
        fd, name = tempfile.mkstemp(dir=store.tmp_dir, prefix="upload-")
        self._file = os.fdopen(fd, "wb")
        self._path = Path(name)

    async def _write(self, chunk: bytes) -> None:
        # Local disk writes of request-sized chunks are fast; a thread hop per
        # chunk would cost more than it saves.
        self._file.write(chunk)

    def staged_path(self) -> Path:
        self._file.flush()
        return self._path

    async def commit(self) -> str:
        key = self.sha256
        dest = self._store.path_of(key)
        self._file.flush()
        await asyncio.to_thread(os.fsync, self._file.fileno())
        self._file.close()
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._path, dest)
        return key

    async def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._path.unlink(missing_ok=True)


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
