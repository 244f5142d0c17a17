"""The fleet at a glance: device counts, a page of devices, and the coordinator replicas.

Pages are keyset pages: the cursor names the last row shown, so page 2,000 of a
fleet of 100,000 costs one indexed range read like page 1, never an OFFSET scan."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.context import AppContext
from coordinator.engine.driver import LEASE
from coordinator.errors import InvalidCursor
from storage.db import utcnow
from storage.models import Device, ModelVersion
from storage.repositories.devices import DeviceCounts, DeviceRepository, Participation
from storage.repositories.models_repo import ModelVersionRepository

ACTIVE_WINDOW = timedelta(days=1)
# A replica beats every lease_ttl_s / 3; three missed lease periods mean it is gone.
SILENT_AFTER_LEASES = 3


@dataclass(frozen=True)
class DeviceRow:
    device: Device
    participation: Participation


@dataclass(frozen=True)
class DevicePage:
    rows: Sequence[DeviceRow]
    next_cursor: str | None


@dataclass(frozen=True)
class Replica:
    replica_id: str
    seen_s_ago: float
    drives_rounds: bool
    is_this_process: bool


@dataclass(frozen=True)
class Coordinators:
    replicas: Sequence[Replica]
    driver: str | None


async def device_counts(session: AsyncSession) -> DeviceCounts:
    """Enrolled, active (seen within a day and not revoked) and revoked devices."""
    return await DeviceRepository(session).counts(utcnow() - ACTIVE_WINDOW)


def _cursor(device: Device) -> str:
    return f"{device.created_at.isoformat()}~{device.id.hex}"


def _parse_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    at, _, ident = cursor.partition("~")
    try:
        when = datetime.fromisoformat(at)
        return when, uuid.UUID(hex=ident)
    except ValueError:
        raise InvalidCursor("a device page cursor is '<enrolled at>~<device id>', as the previous page gave it") \
            from None


async def device_page(session: AsyncSession, search: str | None, cursor: str | None, limit: int) -> DevicePage:
    """LIMIT devices, newest first, after CURSOR; with the rounds each joined."""
    repo = DeviceRepository(session)
    # One row more than shown says whether a next page exists without counting the fleet.
    devices = list(await repo.page(search or None, _parse_cursor(cursor) if cursor else None, limit + 1))
    more = len(devices) > limit
    devices = devices[:limit]
    joined = await repo.participation([d.id for d in devices])
    rows = [DeviceRow(d, joined[d.id]) for d in devices]
    return DevicePage(rows, _cursor(devices[-1]) if more and devices else None)


async def coordinators(ctx: AppContext) -> Coordinators:
    """The replicas that beat recently, and which of them holds the round-driver lease."""
    driver = await ctx.state.lease_holder(LEASE)
    silent_after = SILENT_AFTER_LEASES * ctx.settings.lease_ttl_s
    replicas = [Replica(name, ago, name == driver, name == ctx.replica_id)
                for name, ago in await ctx.state.replicas() if ago <= silent_after]
    return Coordinators(replicas, driver)


async def served_version(session: AsyncSession) -> ModelVersion | None:
    """The version devices train from now; None before the first registration."""
    repo = ModelVersionRepository(session)
    served = await repo.served_id()
    return await repo.get(served) if served is not None else None
