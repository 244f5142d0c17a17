"""Which blobs the database still needs: every sha256 column of the schema."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import CompoundSelect, and_, or_, select, union
from sqlalchemy.ext.asyncio import AsyncSession

from fedface_common.wire import ACTIVE_ROUND_STATES
from storage.models import ModelVersion, PartialAggregate, Round, Update


class BlobReferenceRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def referenced_among(self, shas: Collection[str], rounds_finished_before: datetime,
                               released_versions: Collection[int] = ()) -> set[str]:
        """The SHAS that some row still references, in one statement (so one snapshot).

        A model version keeps its weights and class centres until retention prunes it (pruned_at, or
        RELEASED_VERSIONS: those a dry run would prune). An update or a partial sum is kept
        while its round is active and until its round has been finished for the retention window:
        nothing reads them once the round is over (the driver folds only an aggregating round's,
        a replica only a collecting round's), and the rows stay for history."""
        if not shas:
            return set()
        keys = list(shas)
        kept_versions = and_(ModelVersion.pruned_at.is_(None), ModelVersion.id.not_in(list(released_versions)))
        retained_rounds = select(Round.id).where(or_(
            Round.state.in_(ACTIVE_ROUND_STATES), Round.finished_at.is_(None),
            Round.finished_at >= rounds_finished_before))
        stmt: CompoundSelect[Any] = union(
            select(ModelVersion.blob_sha256.label("sha")).where(ModelVersion.blob_sha256.in_(keys), kept_versions),
            select(ModelVersion.class_centres_sha256).where(ModelVersion.class_centres_sha256.in_(keys),
                                                            kept_versions),
            select(Update.blob_sha256).where(Update.blob_sha256.in_(keys), Update.round_id.in_(retained_rounds)),
            select(PartialAggregate.blob_sha256).where(PartialAggregate.blob_sha256.in_(keys),
                                                      PartialAggregate.round_id.in_(retained_rounds)),
        )
        return {str(sha) for sha in (await self.session.scalars(stmt)).all()}
