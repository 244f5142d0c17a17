"""The blob store interface.

Blobs are immutable and content-addressed: writing the same bytes twice is a
no-op, so a retried or replayed write can never corrupt a stored blob."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO


class BlobNotFound(KeyError):
    pass


@dataclass(frozen=True)
class StoredObject:
    """A blob (`key` is its sha256) or a staging file (`key` is its file name) as listed.

    `modified` is when the bytes were last committed (UTC): a blob's age counts
    from its latest commit, so bytes committed again are young again."""

    key: str
    size: int
    modified: datetime


class BlobWriter(ABC):
    """Receives a blob in chunks, hashing as it goes; `commit` makes it durable."""

    size: int

    @abstractmethod
    async def write(self, chunk: bytes) -> None: ...

    @abstractmethod
    async def finish(self) -> None:
        """Wait until every byte written so far is hashed and staged."""

    @property
    @abstractmethod
    def sha256(self) -> str:
        """The hash of everything written so far."""

    @abstractmethod
    def staged_path(self) -> Path:
        """A local file holding the bytes written so far (for validation before commit)."""

    @abstractmethod
    async def commit(self) -> str:
        """Make the blob durable under its hash; returns the hash."""

    @abstractmethod
    async def abort(self) -> None: ...


# Bytes gathered on the event loop before one worker thread hashes and writes them.
HANDOFF_BYTES = 1 << 20


class StagedFileWriter(BlobWriter):
    """Stages the blob in a local temp file while hashing it, so the key is
    known and the bytes can be validated before the blob is committed.

    Hashing and writing a multi-megabyte update are the largest costs of an
    upload; they run in a worker thread (hashlib and file writes release the
    GIL) on ~1 MiB batches, so the event loop keeps parsing other requests
    instead of paying for them chunk by chunk."""

    def __init__(self, tmp_dir: Path | None, prefix: str) -> None:
        self._hash = hashlib.sha256()
        self.size = 0
        self._tmp_dir, self._prefix = tmp_dir, prefix
        self._file: BinaryIO | None = None
        self._path: Path | None = None
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._inflight: asyncio.Future[None] | None = None
        self._closed = False

    async def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self._pending.append(chunk)
        self._pending_size += len(chunk)
        if self._pending_size >= HANDOFF_BYTES:
            # Double buffering: the previous batch is hashed and written while
            # this one was received, so the socket is not left idle meanwhile.
            await self._wait_inflight()
            self._inflight = asyncio.get_running_loop().run_in_executor(None, self._drain, self._take_pending())

    async def _wait_inflight(self) -> None:
        if self._inflight is not None:
            inflight, self._inflight = self._inflight, None
            await inflight

    async def finish(self) -> None:
        await self._wait_inflight()
        if self._pending:
            await asyncio.to_thread(self._drain, self._take_pending())

    def _take_pending(self) -> list[bytes]:
        pending, self._pending, self._pending_size = self._pending, [], 0
        return pending

    def _open(self) -> BinaryIO:
        if self._file is None:
            if self._closed:
                raise RuntimeError("the writer was aborted")
            fd, name = tempfile.mkstemp(dir=self._tmp_dir, prefix=self._prefix)
            self._file, self._path = os.fdopen(fd, "wb"), Path(name)
        return self._file

    def _drain(self, chunks: list[bytes]) -> None:
        f = self._open()
        for chunk in chunks:
            self._hash.update(chunk)
            f.write(chunk)

    def _finish_staging(self) -> BinaryIO:
        """Write what is still pending (less than one hand-off) and flush the file."""
        if self._inflight is not None:
            raise RuntimeError("await finish() before reading a writer's hash or staged file")
        self._drain(self._take_pending())
        f = self._open()
        f.flush()
        return f

    @property
    def sha256(self) -> str:
        if self._file is None or not self._file.closed:  # closed: committed, nothing left to add
            self._finish_staging()
        return self._hash.hexdigest()

    def staged_path(self) -> Path:
        self._finish_staging()
        assert self._path is not None
        return self._path

    def _close_staged(self) -> Path:
        """Close the staged file for good and hand its path to the committer,
        which moves or removes it: abort() no longer touches it."""
        f = self._finish_staging()
        f.close()
        path, self._path = self._path, None
        assert path is not None
        return path

    async def abort(self) -> None:
        """Drop the staged bytes; a no-op once the writer committed."""
        with contextlib.suppress(Exception):
            await self._wait_inflight()
        self._pending, self._closed = [], True
        if self._path is not None:
            # Off the event loop: an unlink waits on the directory's lock,
            # which concurrent creates, renames and fsyncs hold.
            await asyncio.to_thread(self._discard_staged)

    def _discard_staged(self) -> None:
        if self._file is not None and not self._file.closed:
            # Closing flushes what is buffered; on a full disk that fails (the file is closed all
            # the same). The bytes are being thrown away: the failure must neither keep the file
            # nor hide the error that made the caller abort.
            with contextlib.suppress(OSError):
                self._file.close()
        if self._path is not None:
            self._path.unlink(missing_ok=True)
            self._path = None


class BlobStore(ABC):
    # Where writers stage uploads, and the prefix of their file names there.
    staging_dir: Path
    staging_prefix: str

    @abstractmethod
    def writer(self) -> BlobWriter: ...

    async def put_bytes(self, data: bytes) -> str:
        w = self.writer()
        try:
            await w.write(data)
            await w.finish()
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

    @abstractmethod
    def list_blobs(self) -> AsyncIterator[StoredObject]:
        """Every stored blob with its size and last commit time, in no particular order."""

    @abstractmethod
    async def delete_if_older(self, sha256: str, before: datetime) -> bool:
        """Delete the blob only if its last commit is still before BEFORE; True when it was deleted.

        The age is read again here, not taken from an earlier listing: bytes
        committed again since (the same content uploaded anew) must stay."""

    async def list_staging(self) -> list[StoredObject]:
        """The staging files of uploads in progress, or left behind by a process that died mid-upload."""
        return await asyncio.to_thread(self._scan_staging)

    def _scan_staging(self) -> list[StoredObject]:
        found = []
        with contextlib.suppress(FileNotFoundError), os.scandir(self.staging_dir) as entries:
            for entry in entries:
                if not entry.name.startswith(self.staging_prefix):
                    continue
                with contextlib.suppress(FileNotFoundError):  # committed or aborted meanwhile
                    st = entry.stat(follow_symlinks=False)
                    if entry.is_file(follow_symlinks=False):
                        found.append(StoredObject(entry.name, st.st_size, mtime_utc(st.st_mtime)))
        return found

    async def delete_staging_if_older(self, name: str, before: datetime) -> bool:
        """Remove a staging file last written before BEFORE; True when it was removed."""
        if os.sep in name or (os.altsep and os.altsep in name) or not name.startswith(self.staging_prefix):
            raise ValueError(f"not a staging file name: {name!r}")
        path = self.staging_dir / name

        def remove() -> bool:
            try:
                if mtime_utc(path.stat().st_mtime) >= before:
                    return False
                path.unlink()
            except FileNotFoundError:
                return False
            return True

        return await asyncio.to_thread(remove)


def mtime_utc(mtime: float) -> datetime:
    return datetime.fromtimestamp(mtime, UTC)


def check_key(sha256: str) -> str:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return sha256
