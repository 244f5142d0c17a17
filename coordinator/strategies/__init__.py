"""Aggregation strategies: pure objects with no I/O, swappable per round."""

from coordinator.strategies.base import Accumulator, AggregationResult, Strategy
from coordinator.strategies.registry import STRATEGIES, make_strategy

__all__ = ["STRATEGIES", "Accumulator", "AggregationResult", "Strategy", "make_strategy"]
