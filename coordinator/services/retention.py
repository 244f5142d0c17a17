"""Which model versions keep their weights: the newest `keep_model_versions`, the served version's
lineage (what a rollback returns to) and the lineage of every active round's base. Others are pruned:
the row and its metrics stay for history, the weights and class centres go with the next blob
collection, and a download answers 410 version_pruned."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from storage.repositories.models_repo import ModelVersionRepository
from storage.repositories.rounds import RoundRepository


async def versions_to_prune(session: AsyncSession, keep_newest: int) -> list[int]:
    """The unpruned versions retention releases, read under the served-version row lock so that a
    promotion cannot make one of them the served version meanwhile."""
    versions = ModelVersionRepository(session)
    served = await versions.served_id(lock=True)
    unpruned = await versions.unpruned_ids()
    keep = set(unpruned[-keep_newest:])
    if served is not None:
        keep |= await versions.lineage(served)
    active = await RoundRepository(session).active()
    if active is not None:
        keep |= await versions.lineage(active.base_version_id)
    return [v for v in unpruned if v not in keep]


async def prune_model_versions(session: AsyncSession, keep_newest: int, now: datetime,
                               dry_run: bool = False) -> list[int]:
    """Mark the versions retention releases (none with `dry_run`); returns their ids."""
    doomed = await versions_to_prune(session, keep_newest)
    if not dry_run:
        await ModelVersionRepository(session).mark_pruned(doomed, now)
    return doomed
