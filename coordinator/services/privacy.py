"""The privacy ledger: each DP round's plan before it starts, the budget check, and epsilon so far.

The ledger is the committed DP rounds' stored states (their q and z), composed afresh by the accountant
whenever it is read: nothing lives in process memory, so a restart, another replica or a rolled-back
aggregation all see the same epsilon. Only committed rounds count: a round that fails or is cancelled
releases no model. A committed round without DP releases its devices' updates with no noise at all; the
ledger counts those apart, since no epsilon describes them."""

from __future__ import annotations

import asyncio
import math
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.errors import InvalidConfig, PrivacyBudgetExhausted
from coordinator.privacy import accountant
from coordinator.schemas import PrivacyOut, PrivacyRoundOut, RoundConfig
from coordinator.strategies import make_strategy
from coordinator.strategies.base import StrategyConfigError
from coordinator.strategies.dp import plan_round
from storage.repositories.privacy import PrivacyRepository


def effective_budget(params_budget: float | None, settings_budget: float | None) -> float | None:
    """The deployment's budget is a ceiling: a round's own budget may lower it, never raise it."""
    budgets = [b for b in (params_budget, settings_budget) if b is not None]
    return min(budgets) if budgets else None


def _ledger_rounds(states: list[tuple[int, dict[str, Any]]]) -> list[accountant.DpRound]:
    return [accountant.DpRound(s["sampling_probability"], s["noise_multiplier"]) for _, s in states]


async def plan(session: AsyncSession, config: RoundConfig, settings_budget: float | None) -> dict[str, Any] | None:
    """The dp_state a new round starts with, or None without DP.

    Raises PrivacyBudgetExhausted when committing the round would take epsilon beyond the budget; it reads
    only, so a refusal changes nothing."""
    try:
        dp = make_strategy(config.algorithm, config.params).params.dp
    except StrategyConfigError as exc:
        raise InvalidConfig(str(exc)) from exc
    if dp is None:
        return None
    repo = PrivacyRepository(session)
    history = await repo.committed_dp_rounds()
    carried = next((s["next_clip"] for _, s in reversed(history) if s.get("next_clip") is not None), None)
    try:
        round_plan = plan_round(dp, config.target_devices, carried)
    except StrategyConfigError as exc:
        raise InvalidConfig(str(exc)) from exc
    population = await repo.enrolled_population()
    # Every selected device may submit before the round closes, so the selection cap is the most that take part.
    max_devices = math.ceil(config.target_devices * config.over_selection)
    q = accountant.sampling_probability(max(population, 1), max_devices)
    spent = _ledger_rounds(history)
    before, after = await asyncio.to_thread(
        lambda: (accountant.epsilon(spent, dp.delta),
                 accountant.epsilon([*spent, accountant.DpRound(q, dp.noise_multiplier)], dp.delta)))
    if not math.isfinite(after):
        raise InvalidConfig(f"dp.noise_multiplier {dp.noise_multiplier:g} gives no finite epsilon at delta"
                            f" {dp.delta:g}")
    budget = effective_budget(dp.epsilon_budget, settings_budget)
    if budget is not None and after > budget:
        raise PrivacyBudgetExhausted(
            f"this round would take epsilon from {before:.4g} to {after:.4g} at delta {dp.delta:g}, beyond the privacy"
            f" budget of {budget:g} ({len(history)} DP rounds committed). More noise (dp.noise_multiplier), fewer"
            " devices per round or a larger population spends less per round",
            epsilon_spent=before, epsilon_next=after, epsilon_budget=budget, delta=dp.delta)
    return {**round_plan.to_json(), "population": population, "max_devices": max_devices,
            "sampling_probability": q, "delta": dp.delta, "epsilon_before": before, "epsilon": after,
            "epsilon_budget": budget, "dp_round": len(history) + 1,
            "non_private_rounds": await repo.committed_non_private_rounds()}


async def ledger(session: AsyncSession, delta: float | None, settings_budget: float | None) -> PrivacyOut:
    """Epsilon over every committed DP round, at `delta` (default: the latest DP round's)."""
    repo = PrivacyRepository(session)
    history = await repo.committed_dp_rounds()
    at = delta if delta is not None else (history[-1][1]["delta"] if history else None)
    eps = await asyncio.to_thread(accountant.epsilon, _ledger_rounds(history), at) if at is not None else 0.0
    return PrivacyOut(
        delta=at, epsilon=eps, dp_rounds=len(history), non_private_rounds=await repo.committed_non_private_rounds(),
        epsilon_budget=settings_budget,
        rounds=[PrivacyRoundOut(round_id=rid, sampling_probability=s["sampling_probability"],
                                noise_multiplier=s["noise_multiplier"], clip=s["clip"], delta=s["delta"],
                                epsilon=s["epsilon"]) for rid, s in history],
    )
