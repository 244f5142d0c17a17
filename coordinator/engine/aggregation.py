"""How a round folds its updates: bounded (the robust settings), or DP-FedAvg when the round has dp params.

Both the replicas' partial sums and the close fold through the same object, so every update of a round is
clipped the same way wherever it is folded; the DP noise is added once, by the close's finalize."""

from __future__ import annotations

from coordinator.context import AppContext
from coordinator.engine.bounds import round_bounds
from coordinator.engine.folding import AggregationError
from coordinator.strategies import Strategy
from coordinator.strategies.dp import DpAggregation
from coordinator.strategies.robust import BoundedAggregation
from storage.repositories.privacy import PrivacyRepository


async def round_aggregation(ctx: AppContext, round_id: int, strategy: Strategy,
                            closing: bool) -> BoundedAggregation | None:
    """The round's aggregation; None while its adaptive robust bounds are not fixed yet (fold later)."""
    if strategy.params.dp is not None:
        # The clip and noise were fixed when the round started (coordinator/services/privacy.py).
        async with ctx.sessions() as session:
            state = await PrivacyRepository(session).round_state(round_id)
        if state is None:
            raise AggregationError(f"round {round_id} has dp params but no stored DP plan")
        return DpAggregation(strategy, state)
    robust = strategy.params.robust
    bounds = await round_bounds(ctx, round_id, robust, closing=closing)
    return None if bounds is None else BoundedAggregation(strategy, robust, bounds)
