"""The blob store interface.

Blobs are immutable and content-addressed: writing the same bytes twice is a
no-op, so a retried or replayed write can never corrupt a stored blob."""

from __future__ import annotations

import hashlib
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from pathlib import Path


class BlobNotFound(KeyError):
    pass


class BlobWriter(ABC):
    """Receives a blob in chunks, hashing as it goes; `commit` makes it durable."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.size = 0

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    async def write(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self.size += len(chunk)
        await self._write(chunk)

    @abstractmethod
    async def _write(self, chunk: bytes) -> None: ...

    @abstractmethod
    def staged_path(self) -> Path:
        """A local file holding the bytes written so far (for validation before commit)."""

    @abstractmethod
    async def commit(self) -> str:
        """Make the blob durable under its hash; returns the hash."""

    @abstractmethod
    async def abort(self) -> None: ...


class StagedFileWriter(BlobWriter):
    """Stages the blob in a local temp file while hashing it, so the key is
    known and the bytes can be validated before the blob is committed."""

    def __init__(self, tmp_dir: Path | None, prefix: str) -> None:
        super().__init__()
        fd, name = tempfile.mkstemp(dir=tmp_dir, prefix=prefix)
        self._file = os.fdopen(fd, "wb")
        self._path = Path(name)

    async def _write(self, chunk: bytes) -> None:
        # Appending a request-sized chunk to a local file is cheaper than a thread hop.
        self._file.write(chunk)

    def staged_path(self) -> Path:
        self._file.flush()
        return self._path

    async def abort(self) -> None:
        """Drop the staged bytes; a no-op once the writer committed."""
        if not self._file.closed:
            self._file.close()
        self._path.unlink(missing_ok=True)


class BlobStore(ABC):
    @abstractmethod
    def writer(self) -> BlobWriter: ...

    async def put_bytes(self, data: bytes) -> str:
        w = self.writer()
        try:
            await w.write(data)
            return await w.commit()
        except BaseException:
            await w.abort()
            raise

    @abstractmethod
    async def exists(self, sha256: str) -> bool: ...

    @abstractmethod
    async def size(self, sha256: str) -> int: ...

    @abstractmethod
    async def get_bytes(self, sha256: str) -> bytes: ...

    @abstractmethod
    def stream(self, sha256: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]: ...

    @abstractmethod
    async def delete(self, sha256: str) -> None: ...

    @abstractmethod
    async def ping(self) -> None:
        """Raise when the store cannot be reached (readiness probe)."""


def check_key(sha256: str) -> str:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return sha256
