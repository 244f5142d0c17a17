"""The operator's differential-privacy settings of a round (coordinator/strategies/dp.py applies them).

Only the server reads them: in central mode the devices train and send their updates as without DP; in
distributed mode they learn their share of the noise from the secure round's public parameters."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

# Where the round's Gaussian noise comes from. "central": the coordinator adds all of it to the sum, so it
# must be trusted with the plain sum. "distributed": each device adds a share to its clipped update and
# secure aggregation reveals only the noised sum, so no party sees it without the noise (needs secagg; see
# coordinator/strategies/dp_noise.py).
DpMode = Literal["central", "distributed"]


class DpParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: DpMode = Field(
        default="central",
        description="Who adds the noise: central (the coordinator, to the sum) or distributed (each device a"
        " share of it, to its clipped update; needs secagg)",
    )
    noise_multiplier: float = Field(
        ge=0.01, le=1000,  # below 0.01 epsilon runs to thousands, then to infinity: no privacy worth accounting
        description="z: the round's sum of clipped updates gets Gaussian noise of standard deviation z x clip;"
        " the accountant composes this z",
    )
    clip: Annotated[float, Field(gt=0, le=1e30)] | Literal["adaptive"] = Field(
        default="adaptive",
        description="L2 bound on one device's update: a number, or 'adaptive' (Andrew et al. 2021: moved each"
        " round toward the target quantile of the update norms, from a noised count of unclipped updates)",
    )
    initial_clip: float = Field(default=0.1, gt=0, le=1e30,
                                description="The adaptive clip of the first DP round (later rounds carry it over)")
    target_quantile: float = Field(default=0.5, ge=0, le=1,
                                   description="The share of updates the adaptive clip aims to leave unclipped")
    clip_learning_rate: float = Field(default=0.2, gt=0, le=10,
                                      description="eta_C: the geometric step of the adaptive clip per round")
    clip_count_stddev: float | None = Field(
        default=None, gt=0, le=1e6,
        description="sigma_b: noise on the count of unclipped updates (default target_devices / 20, as Andrew et"
        " al. advise); it must exceed noise_multiplier / 2",
    )
    delta: float = Field(default=1e-5, gt=0, lt=1, description="The delta at which epsilon is reported and budgeted")
    epsilon_budget: float | None = Field(
        default=None, gt=0, le=1e6,
        description="Refuse to start a DP round that would take epsilon (at delta) beyond this; FEDFACE_DP_EPSILON_"
        "BUDGET, when set, is a ceiling this can lower but not raise",
    )

    @property
    def adaptive(self) -> bool:
        return self.clip == "adaptive"
