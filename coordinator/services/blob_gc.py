"""Collecting blobs no row references any more, and staging files no upload owns.

Why an upload never loses its blob (the race: its blob is stored, its row not
yet committed):

- A blob's age counts from its latest commit into the store. Committing bytes
  that are already there makes them young again (the local store renames a
  fresh file over them, S3 copies the object onto itself).
- Every row that references a blob commits within `max_upload_s` of that
  commit: uploads are cut off at `max_upload_s` (routes/deadline.py), the
  engine commits its partial sums and round results right after writing them,
  and the one row that copies a reference instead of writing a blob (a child
  version's class centres) copies it from a row that keeps it.
- So a blob that is older than `blob_gc_grace_s` (> `max_upload_s`) when it is
  listed either had its row committed before the references are read, which
  happens after the listing, or it will never get one.
- Bytes committed again after the listing are young again, and each removal
  reads the age anew just before removing (atomically with the removal on the
  local store, see LocalBlobStore.removal_lock).

Staging files are written as their upload's body arrives; one last written
more than `max_upload_s` ago belongs to an upload that was cut off or to a
process that died mid-upload."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from coordinator.context import AppContext
from coordinator.metrics import BLOB_GC_BYTES, BLOB_GC_REMOVED
from coordinator.schemas import BlobGcReport, CollectedObject
from coordinator.services.retention import prune_model_versions
from coordinator.settings import Settings
from storage.blobs import BlobStore
from storage.blobs.base import StoredObject
from storage.db import utcnow
from storage.repositories.audit import AuditRepository
from storage.repositories.blob_refs import BlobReferenceRepository

log = structlog.get_logger("coordinator.blob_gc")
# Keys per reference query: well under every driver's bound on bind parameters.
_CHUNK = 500


@dataclass(frozen=True)
class GcPolicy:
    grace_s: float
    staging_max_age_s: float
    update_retention_s: float
    keep_model_versions: int | None = None  # None: no version is pruned

    @classmethod
    def of(cls, settings: Settings) -> GcPolicy:
        return cls(settings.blob_gc_grace_s, settings.max_upload_s, settings.update_retention_s,
                   settings.keep_model_versions)


def _collected(obj: StoredObject, now: datetime) -> CollectedObject:
    return CollectedObject(key=obj.key, size_bytes=obj.size, age_s=round((now - obj.modified).total_seconds(), 3))


async def _unreferenced(sessions: async_sessionmaker[AsyncSession], old: Sequence[StoredObject],
                        rounds_finished_before: datetime, released_versions: Sequence[int]) -> list[StoredObject]:
    found: list[StoredObject] = []
    for start in range(0, len(old), _CHUNK):
        chunk = old[start:start + _CHUNK]
        async with sessions() as session:
            referenced = await BlobReferenceRepository(session).referenced_among(
                [b.key for b in chunk], rounds_finished_before, released_versions)
        found.extend(b for b in chunk if b.key not in referenced)
    return found


async def collect(sessions: async_sessionmaker[AsyncSession], blobs: BlobStore, policy: GcPolicy,
                  now: datetime | None = None, dry_run: bool = False) -> BlobGcReport:
    """One pass. NOW is injectable so that tests can age everything at once; in service it is the
    real clock, which the argument above counts from (a clock running ahead would take young blobs)."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=policy.grace_s)
    listed = [b async for b in blobs.list_blobs()]  # before the references are read: see the module's docstring
    old = [b for b in listed if b.modified < cutoff]
    pruned: list[int] = []
    if policy.keep_model_versions is not None:
        async with sessions() as session, session.begin():
            pruned = await prune_model_versions(session, policy.keep_model_versions, now, dry_run)
    doomed = await _unreferenced(sessions, old, now - timedelta(seconds=policy.update_retention_s),
                                 pruned if dry_run else [])
    removed, recommitted = [], 0
    for blob in doomed:
        if dry_run or await blobs.delete_if_older(blob.key, cutoff):
            removed.append(_collected(blob, now))
        else:
            recommitted += 1

    staging_cutoff = now - timedelta(seconds=policy.staging_max_age_s)
    staging = []
    for orphan in await blobs.list_staging():
        if orphan.modified < staging_cutoff and (
                dry_run or await blobs.delete_staging_if_older(orphan.key, staging_cutoff)):
            staging.append(_collected(orphan, now))

    report = BlobGcReport(
        dry_run=dry_run, at=now, grace_s=policy.grace_s, staging_max_age_s=policy.staging_max_age_s,
        update_retention_s=policy.update_retention_s, blobs_scanned=len(listed), blobs_young=len(listed) - len(old),
        blobs_referenced=len(old) - len(doomed), blobs_recommitted=recommitted, blobs_removed=removed,
        staging_removed=staging, bytes_removed=sum(o.size_bytes for o in [*removed, *staging]),
        versions_pruned=pruned,
    )
    if not dry_run:
        BLOB_GC_REMOVED.labels(kind="blob").inc(len(removed))
        BLOB_GC_REMOVED.labels(kind="staging").inc(len(staging))
        BLOB_GC_BYTES.inc(report.bytes_removed)
    log.info("blob_gc", dry_run=dry_run, scanned=len(listed), removed=len(removed), staging_removed=len(staging),
             bytes_removed=report.bytes_removed, recommitted=recommitted)
    return report


async def collect_for_admin(session: AsyncSession, ctx: AppContext, actor: str, dry_run: bool) -> BlobGcReport:
    """A pass an operator asked for. It does not wait for the scheduled pass's lease: two passes at
    once are as safe as one (each removes only what it re-checked), the lease only saves work."""
    report = await collect(ctx.sessions, ctx.blobs, GcPolicy.of(ctx.settings), dry_run=dry_run)
    if not dry_run:
        await AuditRepository(session).record(actor, "blobs.gc", None, blobs_removed=len(report.blobs_removed),
                                              staging_removed=len(report.staging_removed),
                                              bytes_removed=report.bytes_removed)
    return report
