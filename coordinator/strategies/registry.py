from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from coordinator.strategies.base import Strategy, StrategyConfigError
from coordinator.strategies.fedavg import FedAvgStrategy
from coordinator.strategies.fedface import FedFacePrivateStrategy, FedFaceStrategy
from coordinator.strategies.plain import PlainFedAvgStrategy

STRATEGIES: dict[str, type[Strategy]] = {
    s.name: s for s in (FedFaceStrategy, FedAvgStrategy, FedFacePrivateStrategy, PlainFedAvgStrategy)
}


def make_strategy(name: str, params: Mapping[str, Any] | None = None) -> Strategy:
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise StrategyConfigError(f"unknown algorithm {name!r}; known: {sorted(STRATEGIES)}") from None
    return cls(params)
