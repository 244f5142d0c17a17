"""A device's side of SecAgg+ (Bell et al., CCS 2020, Sec. 3), as an immutable, serialisable state.

Each stage is a method that returns the next state and the message to send; nothing here does I/O.
The agent must persist the returned state *before* sending the message: the state remembers what was
sent and revealed, so that a retry after a crash repeats the same message instead of producing a new
one. That matters for safety, not just tidiness:

* ShareKeys is split once: shares of one secret from two different polynomials would let nobody
  reconstruct it, so a retry returns the stored message.
* MaskedInput is computed once per input: masking a second, different vector with the same masks would
  hand the server the difference of the two inputs, so a different vector is refused.
* Unmasking reveals, for each neighbour, the share of its self-mask seed b_v (it survived) or of its
  masking key s_v^SK (it dropped), never both, across all requests (Sec. 3: with both, the server could
  unmask v's individual input). The state records every reveal.

The state holds private keys and the self-mask seed: the agent stores it as it stores its credential."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedface_common.dp_noise import fresh_generator
from fedface_common.secagg import crypto, graph, groups, shamir
from fedface_common.secagg.messages import (
    SHARE_PLAINTEXT_BYTES,
    AdvertiseKeys,
    DeviceId,
    DeviceKeys,
    EncryptedShare,
    ForwardedShares,
    MaskedInputMeta,
    NeighbourKeys,
    RevealedShare,
    SecAggParams,
    ShareKeys,
    ShareKind,
    UnmaskRequest,
    UnmaskResponse,
)
from fedface_common.secagg.shamir import ELEMENT_BYTES
from fedface_common.secagg.task import LayoutEntry

Secret = bytes


class DeviceRefusal(ValueError):
    """The device will not take this step: doing so would break the protocol's guarantees."""


class TooFewNeighbours(DeviceRefusal):
    """Fewer than t neighbours remain: this device's secrets could not be reconstructed."""


class RevealRefused(DeviceRefusal):
    """Asked for both kinds of share of one neighbour, now or across requests."""


class StageRefused(DeviceRefusal):
    """A stage called out of order, or repeated with different inputs."""


def pairwise_mask_sign(me: str, other: str) -> int:
    """+1 if `me` sorts before `other`, else -1: the pair's masks cancel in the sum (Sec. 3)."""
    return 1 if me < other else -1


def vector_digest(vector: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(vector, dtype="<u4").tobytes()).hexdigest()


def encode_input(params: SecAggParams, layout: Sequence[LayoutEntry], update: Mapping[str, np.ndarray],
                 num_samples: int | None = None, rng: np.random.Generator | None = None) -> np.ndarray:
    """A device's update as the round sums it, in `layout` order (`groups.encode_groups`): the update group
    clipped to params.clip_norm and, with distributed DP (params.noise_stddev > 0), noised with
    N(0, noise_stddev^2) per coordinate from `rng` (by default a fresh generator seeded from the OS CSPRNG) and
    clamped to the coordinate bound; the statistics group clipped to params.statistics_clip_norm; in a
    weighted round (params.max_weight) each group times the device's weight, from `num_samples`, which is
    needed then and never sent; each group in fixed point at its own scale.

    Draw it once per round and mask what it returns: `SecAggDevice.mask` refuses a second, different input
    (the difference of two inputs under the same masks would reach the server), and the agent journals the
    masked body before it leaves, so a resend carries the same noise rather than a fresh draw."""
    if params.noise_stddev > 0 and rng is None:
        rng = fresh_generator()
    weight = 1.0
    if params.max_weight is not None:
        if num_samples is None:
            raise ValueError("a weighted round needs the update's sample count")
        weight = groups.device_weight(num_samples, params.max_weight)
    return groups.encode_groups(params, layout, update, weight, rng)


class SecAggDevice(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")

    params: SecAggParams
    device_id: DeviceId
    # Secrets stay out of repr, so that logging a state never writes them out.
    enc_private: Secret = Field(min_length=crypto.KEY_BYTES, max_length=crypto.KEY_BYTES, repr=False)
    mask_private: Secret = Field(min_length=crypto.KEY_BYTES, max_length=crypto.KEY_BYTES, repr=False)
    self_mask_seed: Secret = Field(min_length=crypto.SEED_BYTES, max_length=crypto.SEED_BYTES, repr=False)
    neighbour_keys: list[DeviceKeys] | None = None
    sent_shares: ShareKeys | None = None
    forwarded: ForwardedShares | None = None
    received_shares: dict[DeviceId, Secret] = Field(default_factory=dict, repr=False)  # b_v share || s_v^SK share
    input_sha256: str | None = None
    revealed: dict[DeviceId, ShareKind] = Field(default_factory=dict)

    @classmethod
    def create(cls, params: SecAggParams, device_id: str) -> SecAggDevice:
        """Fresh keys and a fresh self-mask seed b_u for one round."""
        params.index_of(device_id)  # refuses a device that is not in the round
        enc, mask = crypto.generate_key_pair(), crypto.generate_key_pair()
        return cls(params=params, device_id=device_id, enc_private=enc.private, mask_private=mask.private,
                   self_mask_seed=crypto.new_seed())

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, raw: str | bytes) -> SecAggDevice:
        return cls.model_validate_json(raw)

    def my_neighbours(self) -> tuple[str, ...]:
        p = self.params
        return graph.neighbours_of(p.devices, p.neighbours, p.graph_seed, self.device_id)

    # Stage 0: AdvertiseKeys.
    def advertise(self) -> AdvertiseKeys:
        return AdvertiseKeys(enc_public_key=crypto.public_key_of(self.enc_private),
                             mask_public_key=crypto.public_key_of(self.mask_private))

    # Stage 1: ShareKeys.
    def share_keys(self, keys: NeighbourKeys) -> tuple[SecAggDevice, ShareKeys]:
        """Shares of b_u and s_u^SK for each neighbour that advertised, each encrypted to that neighbour."""
        received = sorted(keys.keys, key=lambda k: k.device_id)
        if self.neighbour_keys is not None:
            if received != self.neighbour_keys or self.sent_shares is None:
                raise StageRefused("keys were already shared with a different set of neighbours")
            return self, self.sent_shares
        self._check_neighbour_keys(received)
        p = self.params
        xs = [p.index_of(k.device_id) for k in received]
        seed_shares = shamir.split_at(self.self_mask_seed, p.threshold, xs)
        key_shares = shamir.split_at(self.mask_private, p.threshold, xs)
        pair_keys = self._share_keys_with({k.device_id: k.enc_public_key for k in received})
        shares = []
        for k, b_share, s_share in zip(received, seed_shares, key_shares, strict=True):
            ciphertext = crypto.encrypt_share(pair_keys[k.device_id], b_share.y_bytes() + s_share.y_bytes(),
                                              round_id=p.round_id, sender=self.device_id, recipient=k.device_id)
            shares.append(EncryptedShare(recipient=k.device_id, ciphertext=ciphertext))
        message = ShareKeys(shares=shares)
        return self.model_copy(update={"neighbour_keys": received, "sent_shares": message}), message

    def _check_neighbour_keys(self, received: list[DeviceKeys]) -> None:
        mine = set(self.my_neighbours())
        strangers = [k.device_id for k in received if k.device_id not in mine]
        if strangers:
            raise StageRefused(f"{len(strangers)} keys belong to devices that are not this device's neighbours")
        if len(received) < self.params.threshold:
            raise TooFewNeighbours(f"{len(received)} neighbours advertised keys, {self.params.threshold} needed")
        own = self.advertise()
        public = [own.enc_public_key, own.mask_public_key]
        for k in received:
            public += [k.enc_public_key, k.mask_public_key]
        if len(set(public)) != len(public):
            raise StageRefused("two public keys of the round are equal")

    # Stage 2: MaskedInputCollection.
    def mask(self, vector: np.ndarray, forwarded: ForwardedShares) -> tuple[SecAggDevice, np.ndarray, MaskedInputMeta]:
        """y_u = x_u + PRG(b_u) + sum over neighbours v that shared keys of sign(u, v) * PRG(s_uv), mod 2^32."""
        if self.neighbour_keys is None:
            raise StageRefused("mask before share_keys")
        p = self.params
        if vector.dtype != np.uint32 or vector.shape != (p.vector_length,):
            raise ValueError(f"expected a uint32 vector of length {p.vector_length}, got {vector.dtype} {vector.shape}")
        digest = vector_digest(vector)
        forwarded = ForwardedShares(shares=sorted(forwarded.shares, key=lambda s: s.sender))
        if self.forwarded is not None and (forwarded != self.forwarded or digest != self.input_sha256):
            raise StageRefused("already masked a different input or with different forwarded shares")
        keys = {k.device_id: k for k in self.neighbour_keys}
        senders = forwarded.senders()
        unknown = [s for s in senders if s not in keys]
        if unknown:
            raise StageRefused(f"{len(unknown)} forwarded shares come from devices this device never shared with")
        if len(senders) < p.threshold:
            raise TooFewNeighbours(f"{len(senders)} neighbours shared keys, {p.threshold} needed")
        # Decrypt (and so authenticate) now rather than at unmasking: a tampered share stops the device
        # before its input leaves it, and the unmasking stage then needs no key agreement at all.
        opened = self._open_all(forwarded)
        masked = vector.copy()
        scratch = crypto.prg_buffer(p.vector_length)
        np.add(masked, crypto.prg_uint32(self.self_mask_seed, p.vector_length, buffer=scratch), out=masked)
        seeds = crypto.agree_all(self.mask_private, {v: keys[v].mask_public_key for v in senders},
                                 purpose="pairwise-mask", round_id=p.round_id, me=self.device_id)
        for v in senders:
            pad = crypto.prg_uint32(seeds[v], p.vector_length, buffer=scratch)
            if pairwise_mask_sign(self.device_id, v) > 0:
                np.add(masked, pad, out=masked)
            else:
                np.subtract(masked, pad, out=masked)
        meta = MaskedInputMeta(vector_length=p.vector_length, sha256=vector_digest(masked), masked_with=senders)
        update = {"forwarded": forwarded, "received_shares": opened, "input_sha256": digest}
        return self.model_copy(update=update), masked, meta

    # Stage 3: Unmasking.
    def unmask(self, request: UnmaskRequest) -> tuple[SecAggDevice, UnmaskResponse]:
        """For each listed neighbour, the share of b_v (survived) or of s_v^SK (dropped); never both."""
        if self.forwarded is None:
            raise StageRefused("unmask before mask")
        if request.survivor_count < self.params.min_survivors:
            raise DeviceRefusal(f"{request.survivor_count} inputs survived, fewer than the round's "
                                f"minimum of {self.params.min_survivors}")
        if self.device_id in request.dropped:
            raise RevealRefused("this device is listed as dropped: its masking key would be reconstructed")
        asked: list[tuple[str, ShareKind]] = [(v, "self_mask_seed") for v in request.survivors if v != self.device_id]
        asked += [(v, "mask_key") for v in request.dropped]
        revealed = dict(self.revealed)
        for v, kind in asked:
            if revealed.get(v, kind) != kind:
                raise RevealRefused(f"{v}: asked for its {kind} share after revealing its {revealed[v]} share")
            revealed[v] = kind
        shares = []
        for v, kind in asked:
            if v not in self.received_shares:
                raise StageRefused(f"{v} did not share keys with this device")
            plaintext = self.received_shares[v]
            value = plaintext[:ELEMENT_BYTES] if kind == "self_mask_seed" else plaintext[ELEMENT_BYTES:]
            shares.append(RevealedShare(owner=v, kind=kind, share=value))
        return self.model_copy(update={"revealed": revealed}), UnmaskResponse(shares=shares)

    def _share_keys_with(self, peers: dict[str, bytes]) -> dict[str, bytes]:
        return crypto.agree_all(self.enc_private, peers, purpose="share-encryption", round_id=self.params.round_id,
                                me=self.device_id)

    def _open_all(self, forwarded: ForwardedShares) -> dict[str, bytes]:
        assert self.neighbour_keys is not None
        public = {k.device_id: k.enc_public_key for k in self.neighbour_keys}
        keys = self._share_keys_with({s.sender: public[s.sender] for s in forwarded.shares})
        opened = {}
        for s in forwarded.shares:
            plaintext = crypto.decrypt_share(keys[s.sender], s.ciphertext, round_id=self.params.round_id,
                                             sender=s.sender, recipient=self.device_id)
            if len(plaintext) != SHARE_PLAINTEXT_BYTES:
                raise crypto.ShareDecryptionError(f"share from {s.sender} has the wrong length")
            opened[s.sender] = plaintext
        return opened
