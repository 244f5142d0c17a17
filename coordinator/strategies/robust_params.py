"""The operator's robustness settings of a round (coordinator/strategies/robust.py applies them)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Aggregation = Literal["mean", "trimmed-mean", "median"]
# A class embedding shorter than this cannot be normalised into a direction that means anything.
MIN_CLASS_EMBEDDING_NORM = 1e-6


class RobustParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    norm_bound: Annotated[float, Field(gt=0, le=1e30)] | Literal["adaptive", "off"] = Field(
        default="adaptive",
        description="L2 bound on one update's delta: a number, 'adaptive' (norm_multiplier x the median norm of"
        " the round's first `window` non-zero updates) or 'off'",
    )
    norm_multiplier: float = Field(default=3.0, gt=0, le=1000)
    sample_cap: Annotated[int, Field(ge=1)] | Literal["adaptive", "off"] = Field(
        default="adaptive",
        description="Most samples one device's update weighs: a number, 'adaptive' (sample_multiplier x the median"
        " count of the same window) or 'off'",
    )
    sample_multiplier: float = Field(default=4.0, ge=1, le=1000)
    window: int = Field(default=10, ge=1, le=10_000,
                        description="How many accepted updates set the adaptive bounds")
    aggregation: Aggregation = Field(
        default="mean",
        description="mean (streaming, memory O(model)); trimmed-mean or median (coordinate-wise, unweighted,"
        " memory O(devices x model))",
    )
    trim_fraction: float = Field(default=0.1, ge=0, lt=0.5,
                                 description="Share of the updates cut from each end per coordinate (trimmed-mean)")

    @property
    def adaptive(self) -> bool:
        return self.norm_bound == "adaptive" or self.sample_cap == "adaptive"

    @property
    def streaming(self) -> bool:
        return self.aggregation == "mean"
