"""Content-addressed blob stores. A blob's key is the SHA-256 of its bytes."""

from storage.blobs.base import BlobNotFound, BlobStore, BlobWriter
from storage.blobs.local import LocalBlobStore

__all__ = ["BlobNotFound", "BlobStore", "BlobWriter", "LocalBlobStore"]
