"""What a device's training reads from a round's parameters, defined once.

The coordinator's strategy parameters extend these models with settings only the server uses
(coordinator/strategies/), and send devices exactly these fields; the agent parses its task's
parameters with the same models (device_agent/algorithms.py). Defaults live here and nowhere else."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from fedface_common.update_codec import DEFAULT_ENCODING, Encoding

FrozenPrefixes = list[Annotated[str, StringConstraints(min_length=1, max_length=200)]]


class ClientParams(BaseModel):
    """Settings of every algorithm whose devices train."""

    model_config = ConfigDict(extra="forbid")

    update_encoding: Encoding = Field(
        default=DEFAULT_ENCODING,
        description="How devices send their backbone deltas: float32 (exact), float16 (half the bytes) or int8"
        " (a quarter: symmetric per-tensor quantisation, each value within half a step). Class embeddings and"
        " moments stay float32 (fedface_common/update_codec.py)",
    )
    frozen: FrozenPrefixes = Field(
        default_factory=list, max_length=64,
        description="Model parameters the devices must not train, by name prefix (e.g. stem.)")
    # A few photos of one person should nudge the shared backbone, not throw it: with frozen BN statistics
    # that do not match the activations (an untrained or mismatched model) one unclipped step can move
    # weights by O(1).
    max_grad_norm: float = Field(default=5.0, ge=0, le=1e6,
                                 description="Gradient-norm clip of each local step on the device; 0 disables it")


class PositiveLossClientParams(ClientParams):
    """The positive-only loss of FedAwS/FedFace (`fedface`, `fedavg`)."""

    margin: float = Field(default=0.9, ge=-1, le=1, description="m in max(0, m - cos(f(x), w_c))^2")
    wc_lr_scale: float = Field(
        default=1.0, ge=0, le=100,
        description="The device's learning rate for its own w_c, as a multiple of the backbone's (0 freezes w_c"
        " on the device, so the backbone alone moves the features toward the server's spread-out target)",
    )
    embedding_stats: bool = Field(
        default=False,
        description="Devices report their photos' moments at the embedding BatchNorm and the server takes their"
        " sample-weighted mean as its running statistics: the embedding is re-centred on the devices' faces",
    )
    embedding_lda_dims: int | None = Field(
        default=None, ge=1, le=1024,
        description="Devices also report the moments of the features entering the embedding projection,"
        " within-person scatter included, and the server replaces the projection and the embedding BN by the"
        " linear discriminant of the identities, keeping this many dimensions (strategies/discriminant.py)",
    )
    embedding_lda_mirror: bool = Field(
        default=False,
        description="Devices measure the discriminant's moments on each photo and its left-right mirror image:"
        " twice the evidence of how their owner's face varies, for one more forward pass",
    )


class PrivateClientParams(ClientParams):
    """Client-side CosFace over the device's own w_c and its nearest public centres (`fedface-private`)."""

    k_negatives: int = Field(default=64, ge=1, le=100_000)
    scale: float = Field(default=32.0, gt=0, le=128)
    cosface_margin: float = Field(default=0.35, ge=0, le=1)
    # Every device pushes its faces away from the same public centres, so the cheapest way down the loss is
    # one shift shared by all faces, which the server's average compounds; the anchor keeps each photo's
    # cosines to all public centres where the round found them.
    anchor: float = Field(default=0.0, ge=0, le=10_000,
                          description="Weight of the photos' start-of-round cosines to all public centres")


CLIENT_PARAMS: dict[str, type[ClientParams]] = {
    "fedface": PositiveLossClientParams,
    "fedavg": PositiveLossClientParams,
    "fedface-private": PrivateClientParams,
    "fedavg-plain": ClientParams,
}


def parse_client_params(algorithm: str, raw: Mapping[str, Any]) -> ClientParams:
    """A task's parameters as its device reads them. Fields this agent does not know are ignored, so a newer
    coordinator's additions do not stop an older agent; known fields are validated like the server's."""
    model = CLIENT_PARAMS.get(algorithm, ClientParams)
    return model.model_validate({k: v for k, v in raw.items() if k in model.model_fields})
