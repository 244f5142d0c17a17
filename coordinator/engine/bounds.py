"""The bounds a round folds with, fixed once for the whole round.

Adaptive bounds come from the round's first accepted updates. Replicas fold
partial sums while the round collects, so every fold must use the same bound:
the first process that sees a full window stores the bounds in the round row
(a conditional UPDATE, so exactly one set wins) and everyone reads them from
there. At close the driver fixes them from whatever was accepted if no window
filled. A crash at any point leaves either no bounds (computed again from the
same rows) or the stored ones."""

from __future__ import annotations

from coordinator.context import AppContext
from coordinator.strategies.robust import RoundBounds
from coordinator.strategies.robust_params import RobustParams
from storage.repositories.rounds import RoundRepository
from storage.repositories.updates import UpdateRepository


async def round_bounds(ctx: AppContext, round_id: int, params: RobustParams, closing: bool) -> RoundBounds | None:
    """The round's bounds; None while collecting and the window is not yet full (fold later)."""
    fixed = RoundBounds.fixed(params)
    if fixed is not None:
        return fixed
    async with ctx.sessions() as session, session.begin():
        rounds = RoundRepository(session)
        stored = await rounds.stored_bounds(round_id)
        if stored is None:
            updates = UpdateRepository(session)
            norms = await updates.first_nonzero_norms(round_id, params.window)
            counts = await updates.first_sample_counts(round_id, params.window)
            if not closing and (len(norms) < params.window or len(counts) < params.window):
                return None
            stored = await rounds.fix_bounds(round_id, RoundBounds.from_window(params, norms, counts).to_json())
        assert stored is not None
        return RoundBounds(norm_bound=stored["norm_bound"], sample_cap=stored["sample_cap"])
