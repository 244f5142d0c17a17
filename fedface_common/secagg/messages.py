"""Wire models of the SecAgg+ stages (Bell et al., CCS 2020, Sec. 3: AdvertiseKeys, ShareKeys,
MaskedInputCollection, Unmasking; the consistency-check round exists only against an actively malicious
server and is left out, as the threat model here is an honest-but-curious server).

Every list and byte string is bounded, so a hostile device cannot make the server parse or store
unbounded data: device ids, key and ciphertext lengths are exact or capped, lists of neighbours are at
most `MAX_NEIGHBOURS` long, the round's device list at most `MAX_ROUND_DEVICES`. Bytes travel as
base64 in JSON. The masked vector itself is a safetensors body (one uint32 tensor named
`MASKED_INPUT_TENSOR` of shape (vector_length,)); only its metadata is modelled here."""

from __future__ import annotations

import bisect
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from fedface_common.secagg import fixedpoint
from fedface_common.secagg.crypto import KEY_BYTES, NONCE_BYTES, SEED_BYTES, TAG_BYTES
from fedface_common.secagg.graph import MAX_NEIGHBOURS, valid_degree
from fedface_common.secagg.shamir import ELEMENT_BYTES

MAX_ROUND_DEVICES = 10_000
MAX_VECTOR_LENGTH = 2**27  # 512 MiB of uint32: far beyond any model this project trains
# The largest max_weight: a device of one sample then weighs 1e-5, whose coordinate w clip_norm still encodes
# as at least one fixed-point step in any round the protocol takes (clip_norm x scale > 2^30 / n, n <= 10^4).
MAX_WEIGHT = 100_000
MASKED_INPUT_TENSOR = "secagg.masked_input"
# A share ciphertext carries two field elements: the share of b_u and the share of s_u^SK.
SHARE_PLAINTEXT_BYTES = 2 * ELEMENT_BYTES
SHARE_CIPHERTEXT_BYTES = NONCE_BYTES + SHARE_PLAINTEXT_BYTES + TAG_BYTES

# Canonical device ids are UUID strings; the protocol orders devices by plain string comparison.
DeviceId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[0-9A-Za-z._:-]+$")]
PublicKey = Annotated[bytes, Field(min_length=KEY_BYTES, max_length=KEY_BYTES)]
ShareCiphertext = Annotated[bytes, Field(min_length=SHARE_CIPHERTEXT_BYTES, max_length=SHARE_CIPHERTEXT_BYTES)]
ShareValue = Annotated[bytes, Field(min_length=ELEMENT_BYTES, max_length=ELEMENT_BYTES)]
ShareKind = Literal["self_mask_seed", "mask_key"]


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")


def _distinct(ids: list[str], what: str) -> None:
    if len(set(ids)) != len(ids):
        raise ValueError(f"{what} lists a device twice")


class SecAggParams(_Wire):
    """The round's public secure-aggregation parameters, sent to every selected device at the start."""

    round_id: int = Field(ge=0, lt=2**63)
    devices: list[DeviceId] = Field(min_length=2, max_length=MAX_ROUND_DEVICES, description="Sorted, distinct")
    neighbours: int = Field(ge=1, le=MAX_NEIGHBOURS, description="k: degree of the neighbour graph")
    threshold: int = Field(ge=1, le=MAX_NEIGHBOURS, description="t: shares needed to reconstruct a secret")
    graph_seed: bytes = Field(min_length=SEED_BYTES, max_length=SEED_BYTES)
    vector_length: int = Field(ge=1, le=MAX_VECTOR_LENGTH)
    clip_norm: float = Field(gt=0, allow_inf_nan=False)
    scale: float = Field(gt=0, allow_inf_nan=False)
    min_survivors: int = Field(ge=1, le=MAX_ROUND_DEVICES, description="Fewest masked inputs the server unmasks")
    noise_stddev: float = Field(
        default=0.0, ge=0, allow_inf_nan=False,
        description="Distributed DP: the Gaussian noise each device adds per coordinate to its clipped update"
        " before encoding (fedface_common/dp_noise.py); 0 without it")
    max_weight: int | None = Field(
        default=None, ge=1, le=MAX_WEIGHT,
        description="A device of n samples weighs min(n, max_weight) / max_weight and sends that times clip_norm"
        " as the layout's weight coordinate; None: every device weighs 1")
    statistics_clip_norm: float | None = Field(
        default=None, gt=0, allow_inf_nan=False,
        description="The clip of the layout's statistics group (a statistics round's moments)")
    statistics_scale: float | None = Field(default=None, gt=0, allow_inf_nan=False,
                                           description="The fixed-point scale of the statistics group")

    @model_validator(mode="after")
    def _consistent(self) -> SecAggParams:
        n = len(self.devices)
        if self.devices != sorted(self.devices) or len(set(self.devices)) != n:
            raise ValueError("devices must be sorted and distinct")
        if not valid_degree(n, self.neighbours):
            raise ValueError(f"neighbours must be even and below {n - 1}, or {n - 1} (complete graph)")
        if not self.neighbours / 2 < self.threshold <= self.neighbours:
            raise ValueError("threshold must satisfy k/2 < t <= k")
        if self.min_survivors > n:
            raise ValueError("min_survivors exceeds the number of devices")
        if not fixedpoint.fits(n, fixedpoint.coordinate_bound(self.clip_norm, self.noise_stddev), self.scale):
            raise ValueError("scale lets the sum of the round's inputs wrap modulo 2^32")
        if (self.statistics_clip_norm is None) != (self.statistics_scale is None):
            raise ValueError("statistics_clip_norm and statistics_scale come together")
        if self.statistics_clip_norm is not None and self.statistics_scale is not None and not fixedpoint.fits(
                n, self.statistics_clip_norm, self.statistics_scale):
            raise ValueError("statistics_scale lets the sum of the round's statistics wrap modulo 2^32")
        # Distributed DP's accounting assumes unit weights and covers the noised update group only.
        if self.noise_stddev > 0 and self.max_weight is not None:
            raise ValueError("device noise needs unit weights: max_weight must be absent")
        if self.noise_stddev > 0 and self.statistics_clip_norm is not None:
            raise ValueError("device noise covers the update group only: a round with statistics cannot carry it")
        return self

    @property
    def weighted(self) -> bool:
        return self.max_weight is not None

    def index_of(self, device: str) -> int:
        """1 + the device's position: the x value of the shares it holds."""
        position = bisect.bisect_left(self.devices, device)
        if position == len(self.devices) or self.devices[position] != device:
            raise ValueError(f"{device} is not one of the round's devices")
        return position + 1


class AdvertiseKeys(_Wire):
    """Stage 0, device -> server: its two public keys for this round."""

    enc_public_key: PublicKey
    mask_public_key: PublicKey

    @model_validator(mode="after")
    def _different(self) -> AdvertiseKeys:
        if self.enc_public_key == self.mask_public_key:
            raise ValueError("the two public keys must differ")
        return self


class DeviceKeys(_Wire):
    device_id: DeviceId
    enc_public_key: PublicKey
    mask_public_key: PublicKey


class NeighbourKeys(_Wire):
    """Stage 0 -> 1, server -> device: the public keys of its neighbours that advertised."""

    keys: list[DeviceKeys] = Field(max_length=MAX_NEIGHBOURS)

    @model_validator(mode="after")
    def _distinct_devices(self) -> NeighbourKeys:
        _distinct([k.device_id for k in self.keys], "keys")
        return self


class EncryptedShare(_Wire):
    recipient: DeviceId
    ciphertext: ShareCiphertext


class ShareKeys(_Wire):
    """Stage 1, device -> server: for each neighbour that advertised, its shares of b_u and s_u^SK, encrypted."""

    shares: list[EncryptedShare] = Field(max_length=MAX_NEIGHBOURS)

    @model_validator(mode="after")
    def _distinct_recipients(self) -> ShareKeys:
        _distinct([s.recipient for s in self.shares], "shares")
        return self


class IncomingShare(_Wire):
    sender: DeviceId
    ciphertext: ShareCiphertext


class ForwardedShares(_Wire):
    """Stage 1 -> 2, server -> device: the ciphertexts addressed to it by neighbours that completed stage 1.

    Their senders are exactly the neighbours the device must pairwise-mask with."""

    shares: list[IncomingShare] = Field(max_length=MAX_NEIGHBOURS)

    @model_validator(mode="after")
    def _distinct_senders(self) -> ForwardedShares:
        _distinct([s.sender for s in self.shares], "shares")
        return self

    def senders(self) -> list[str]:
        return sorted(s.sender for s in self.shares)


class MaskedInputMeta(_Wire):
    """Stage 2, device -> server, beside the safetensors body of the masked vector."""

    vector_length: int = Field(ge=1, le=MAX_VECTOR_LENGTH)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Of the masked vector's little-endian bytes")
    masked_with: list[DeviceId] = Field(max_length=MAX_NEIGHBOURS, description="Pairwise masks applied, sorted")

    @model_validator(mode="after")
    def _sorted(self) -> MaskedInputMeta:
        _distinct(self.masked_with, "masked_with")
        if self.masked_with != sorted(self.masked_with):
            raise ValueError("masked_with must be sorted")
        return self


class UnmaskRequest(_Wire):
    """Stage 3, server -> device: which of its neighbours sent a masked input and which dropped after
    sharing keys, and how many inputs the sum holds (the device refuses below `min_survivors`)."""

    survivor_count: int = Field(ge=1, le=MAX_ROUND_DEVICES)
    survivors: list[DeviceId] = Field(max_length=MAX_NEIGHBOURS)
    dropped: list[DeviceId] = Field(max_length=MAX_NEIGHBOURS)

    @model_validator(mode="after")
    def _disjoint(self) -> UnmaskRequest:
        _distinct(self.survivors, "survivors")
        _distinct(self.dropped, "dropped")
        # Never both shares of one device (Sec. 3): refused at parse, and again by the device's state.
        both = set(self.survivors) & set(self.dropped)
        if both:
            raise ValueError(f"{len(both)} devices are listed as both survived and dropped")
        return self


class RevealedShare(_Wire):
    owner: DeviceId
    kind: ShareKind
    share: ShareValue


class UnmaskResponse(_Wire):
    """Stage 3, device -> server: for each neighbour, the share of its b_u if it survived or of its s_u^SK
    if it dropped, never both."""

    shares: list[RevealedShare] = Field(max_length=MAX_NEIGHBOURS)

    @model_validator(mode="after")
    def _one_per_owner(self) -> UnmaskResponse:
        _distinct([s.owner for s in self.shares], "shares")
        return self
