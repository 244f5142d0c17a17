"""The server's side of SecAgg+ (Bell et al., CCS 2020, Sec. 3), without I/O.

The coordinator runs a secure round as four sub-rounds, each closed at its deadline. This module says,
from the messages a stage collected, who survives it, what each device gets next, and finally what the
sum of the surviving inputs is. Its state, `ServerRound`, is a pydantic model the engine stores
(JSON) between stages; every function returns a new one instead of changing its argument.

Per stage, the engine calls a `check_*` function on each message at intake (typed errors, so the
device gets a 4xx), stores the accepted ones, and at the deadline calls `close_*` with all of them:

0. `close_advertise(params, [(device, AdvertiseKeys)])` -> round; `neighbour_keys_for(round, device)`.
1. `check_share_keys`; `close_share_keys(round, [(device, ShareKeys)])` -> (round, {device: ForwardedShares}).
2. `check_masked_input` (metadata), `check_masked_vector` (body), `accumulate` into the partial sums;
   `close_masked_input(round, [devices whose input was folded])` -> (round, {device: UnmaskRequest}),
   refused if those devices' graph is disconnected.
3. `check_unmask_response`; `unmask(round, [(device, UnmaskResponse)], masked_sum)` -> the sum of the
   survivors' fixed-point inputs mod 2^32 (decode it with `fedface_common.secagg.fixedpoint.decode`).

Duplicates: a second message from one device in one stage is refused (`DuplicateMessage`) unless it is
identical to the first, which is then an idempotent retry (`is_new_message` tells which)."""

from __future__ import annotations

import functools
import secrets
from collections.abc import Iterable, Sequence
from typing import TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from coordinator.secagg.errors import (
    DuplicateMessage,
    InvalidMessage,
    NotEnoughShares,
    NotEnoughSurvivors,
    NotInStage,
    ReconstructionFailed,
    ShareDeficit,
    SurvivorsDisconnected,
)
from fedface_common.secagg import crypto, fixedpoint, graph, shamir
from fedface_common.secagg.device import pairwise_mask_sign, vector_digest
from fedface_common.secagg.messages import (
    AdvertiseKeys,
    DeviceId,
    DeviceKeys,
    ForwardedShares,
    IncomingShare,
    MaskedInputMeta,
    NeighbourKeys,
    SecAggParams,
    ShareKeys,
    ShareKind,
    UnmaskRequest,
    UnmaskResponse,
)

M = TypeVar("M", bound=BaseModel)


class ServerRound(BaseModel):
    """What the server has fixed so far: U1 (devices that advertised, with their keys), U2 (shared keys),
    U3 (masked input folded into the sum). Bytes are base64 in JSON."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")

    params: SecAggParams
    keys: dict[DeviceId, AdvertiseKeys] = Field(default_factory=dict)
    shared: list[DeviceId] | None = None
    masked: list[DeviceId] | None = None


class RoundSecrets(BaseModel):
    """The reconstructed secrets: survivors' self-mask seeds b_u and dropped devices' masking keys s_v^SK."""

    self_mask_seeds: dict[str, bytes]
    mask_keys: dict[str, bytes]


def new_round(
    round_id: int,
    devices: Iterable[str],
    *,
    vector_length: int,
    clip_norm: float,
    dropout: float,
    corrupt: float = 0.0,
    security_bits: float = 40.0,
    correctness_bits: float = 20.0,
    min_survivors: int | None = None,
    k_and_t: tuple[int, int] | None = None,
    noise_stddev: float = 0.0,
    statistics_clip_norm: float | None = None,
    max_weight: int | None = None,
) -> SecAggParams:
    """The public parameters of a secure round: (k, t) from `graph.choose_parameters` unless `k_and_t`
    gives them, the largest no-wrap scale for this many inputs (one per group: the statistics group's for
    its own clip), and a fresh public graph seed.

    min_survivors defaults to max(t, 2): the server never unmasks a sum of a single input. noise_stddev is
    each device's distributed-DP noise; the scale leaves room for the noised inputs' coordinate bound."""
    ordered = sorted(set(devices))
    n = len(ordered)
    k, t = k_and_t or graph.choose_parameters(n, dropout, corrupt=corrupt, security_bits=security_bits,
                                             correctness_bits=correctness_bits)
    return SecAggParams(
        round_id=round_id, devices=ordered, neighbours=k, threshold=t, graph_seed=secrets.token_bytes(32),
        vector_length=vector_length, clip_norm=clip_norm,
        scale=fixedpoint.choose_scale(n, fixedpoint.coordinate_bound(clip_norm, noise_stddev)),
        min_survivors=min_survivors if min_survivors is not None else max(t, 2), noise_stddev=noise_stddev,
        max_weight=max_weight, statistics_clip_norm=statistics_clip_norm,
        statistics_scale=fixedpoint.choose_scale(n, statistics_clip_norm) if statistics_clip_norm else None,
    )


@functools.lru_cache(maxsize=8)
def _graph_cached(devices: tuple[str, ...], k: int, seed: bytes) -> dict[str, frozenset[str]]:
    return {d: frozenset(ns) for d, ns in graph.neighbours(devices, k, seed).items()}


def graph_of(params: SecAggParams) -> dict[str, frozenset[str]]:
    """Every device's neighbours; cached, since each request of a stage asks for it."""
    return _graph_cached(tuple(params.devices), params.neighbours, params.graph_seed)


def is_new_message(previous: M | None, message: M) -> bool:
    """Intake's duplicate rule: True for a first message, False for an identical retry, else refused."""
    if previous is None:
        return True
    if previous == message:
        return False
    raise DuplicateMessage("a different message from this device was already accepted in this stage")


def _unique(messages: Sequence[tuple[str, M]]) -> dict[str, M]:
    seen: dict[str, M] = {}
    for sender, message in messages:
        if sender in seen and not is_new_message(seen[sender], message):
            continue
        seen[sender] = message
    return seen


def _expect(sender: str, group: Iterable[str] | None, stage: str) -> None:
    if group is None or sender not in group:
        raise NotInStage(f"{sender} is not expected at {stage}")


# Stage 0: AdvertiseKeys.
def check_advertise(params: SecAggParams, sender: str, message: AdvertiseKeys) -> None:
    _expect(sender, params.devices, "advertise keys")


def close_advertise(params: SecAggParams, messages: Sequence[tuple[str, AdvertiseKeys]]) -> ServerRound:
    """U1: the devices that advertised keys and have at least t neighbours that did too (the others
    would refuse to share keys, as their secrets could never be reconstructed). Devices advertising a
    public key another device also advertised are all left out: honest keys never collide."""
    received = _unique(messages)
    for sender, message in received.items():
        check_advertise(params, sender, message)
    owners: dict[bytes, set[str]] = {}
    for sender, message in received.items():
        for key in (message.enc_public_key, message.mask_public_key):
            owners.setdefault(key, set()).add(sender)
    clashing: set[str] = set()
    for holders in owners.values():
        if len(holders) > 1:
            clashing |= holders
    advertised = _core({d for d in received if d not in clashing}, graph_of(params), params.threshold)
    _enough("advertise keys", len(advertised), params.min_survivors)
    return ServerRound(params=params, keys={d: received[d] for d in sorted(advertised)})


def neighbour_keys_for(state: ServerRound, device: str) -> NeighbourKeys:
    """What `device` needs for ShareKeys: the public keys of its neighbours in U1."""
    _expect(device, state.keys, "share keys")
    neighbours = graph_of(state.params)[device]
    return NeighbourKeys(keys=[
        DeviceKeys(device_id=v, enc_public_key=state.keys[v].enc_public_key,
                   mask_public_key=state.keys[v].mask_public_key)
        for v in sorted(neighbours) if v in state.keys
    ])


# Stage 1: ShareKeys.
def check_share_keys(state: ServerRound, sender: str, message: ShareKeys) -> None:
    """A device must address exactly its neighbours in U1, once each (the model refuses repeats)."""
    _expect(sender, state.keys if state.shared is None else None, "share keys")
    expected = {v for v in graph_of(state.params)[sender] if v in state.keys}
    recipients = {s.recipient for s in message.shares}
    if recipients != expected:
        raise InvalidMessage(f"shares must address the sender's {len(expected)} neighbours that advertised keys; "
                             f"{len(recipients - expected)} unexpected, {len(expected - recipients)} missing")


def close_share_keys(
    state: ServerRound, messages: Sequence[tuple[str, ShareKeys]]
) -> tuple[ServerRound, dict[str, ForwardedShares]]:
    """U2, and for each device in U2 the ciphertexts its neighbours in U2 addressed to it.

    U2 keeps only devices with at least t neighbours in U2: one with fewer would refuse to mask, and if
    its neighbours had masked with it, its masking key (held by fewer than t) could never be rebuilt."""
    received = _unique(messages)
    for sender, message in received.items():
        check_share_keys(state, sender, message)
    shared = sorted(_core(set(received), graph_of(state.params), state.params.threshold))
    _enough("share keys", len(shared), state.params.min_survivors)
    inbox: dict[str, list[IncomingShare]] = {d: [] for d in shared}
    for sender in shared:
        for share in received[sender].shares:
            if share.recipient in inbox:
                inbox[share.recipient].append(IncomingShare(sender=sender, ciphertext=share.ciphertext))
    forwards = {d: ForwardedShares(shares=sorted(inbox[d], key=lambda s: s.sender)) for d in shared}
    return state.model_copy(update={"shared": shared}), forwards


# Stage 2: MaskedInputCollection.
def check_masked_input(state: ServerRound, sender: str, meta: MaskedInputMeta) -> None:
    """The metadata must match the round and name exactly the pairwise masks the server's forwarding implies."""
    _expect(sender, state.shared if state.masked is None else None, "masked input")
    if meta.vector_length != state.params.vector_length:
        raise InvalidMessage(f"vector_length {meta.vector_length}, the round's is {state.params.vector_length}")
    assert state.shared is not None
    shared = set(state.shared)
    expected = sorted(v for v in graph_of(state.params)[sender] if v in shared)
    if meta.masked_with != expected:
        raise InvalidMessage("masked_with differs from the neighbours whose shares were forwarded to the sender")


def check_masked_vector(state: ServerRound, meta: MaskedInputMeta, vector: np.ndarray) -> None:
    """The decoded body: one uint32 vector of the round's length, matching the digest its metadata gave."""
    if vector.dtype != np.uint32 or vector.shape != (state.params.vector_length,):
        raise InvalidMessage(f"expected uint32 ({state.params.vector_length},), got {vector.dtype} {vector.shape}")
    if vector_digest(vector) != meta.sha256:
        raise InvalidMessage("the masked vector does not match its sha256")


def accumulate(partial: np.ndarray | None, masked: np.ndarray) -> np.ndarray:
    """partial + masked mod 2^32, as a new array. Also merges two partial sums: the group is commutative,
    so replicas may fold any subset in any order."""
    if masked.dtype != np.uint32:
        raise ValueError(f"expected uint32, got {masked.dtype}")
    if partial is None:
        return masked.astype(np.uint32, copy=True)
    if partial.dtype != np.uint32 or partial.shape != masked.shape:
        raise ValueError("partial sum and vector differ in dtype or shape")
    return np.add(partial, masked, dtype=np.uint32)


def close_masked_input(
    state: ServerRound, senders: Iterable[str]
) -> tuple[ServerRound, dict[str, UnmaskRequest]]:
    """U3 (the devices whose masked input is in the sum), and each one's unmasking request."""
    masked = sorted(set(senders))
    for sender in masked:
        _expect(sender, state.shared if state.masked is None else None, "masked input")
    _enough("masked input", len(masked), state.params.min_survivors)
    assert state.shared is not None
    survived, dropped = set(masked), set(state.shared) - set(masked)
    neighbours = graph_of(state.params)
    # Checked before any share is asked for: the parameter rule makes a split unlikely (graph.py, (3)),
    # this makes it impossible.
    parts = _components(survived, neighbours)
    if len(parts) > 1:
        raise SurvivorsDisconnected(f"the {len(masked)} survivors fall into {len(parts)} unconnected groups "
                                    f"(the smallest has {min(len(p) for p in parts)})")
    requests = {
        u: UnmaskRequest(survivor_count=len(masked),
                         survivors=sorted(neighbours[u] & survived), dropped=sorted(neighbours[u] & dropped))
        for u in masked
    }
    return state.model_copy(update={"masked": masked}), requests


# Stage 3: Unmasking.
def check_unmask_response(state: ServerRound, sender: str, response: UnmaskResponse) -> None:
    """Only devices in U3 answer; each share is of a neighbour in U2, of the one kind its fate calls for."""
    _expect(sender, state.masked, "unmasking")
    assert state.shared is not None and state.masked is not None
    survived, shared = set(state.masked), set(state.shared)
    neighbours = graph_of(state.params)[sender]
    for s in response.shares:
        if s.owner not in neighbours or s.owner not in shared:
            raise InvalidMessage(f"a share of {s.owner}, which is not a neighbour of the sender in U2")
        expected: ShareKind = "self_mask_seed" if s.owner in survived else "mask_key"
        if s.kind != expected:
            raise InvalidMessage(f"{s.owner} needs its {expected} share, got {s.kind}")
        if int.from_bytes(s.share, "big") >= shamir.PRIME:
            raise InvalidMessage("share value outside the field")


def _collect_shares(
    state: ServerRound, responses: Sequence[tuple[str, UnmaskResponse]]
) -> dict[tuple[str, ShareKind], list[shamir.Share]]:
    received = _unique(responses)
    collected: dict[tuple[str, ShareKind], list[shamir.Share]] = {}
    for sender, response in received.items():
        check_unmask_response(state, sender, response)
        x = state.params.index_of(sender)
        for s in response.shares:
            collected.setdefault((s.owner, s.kind), []).append(shamir.Share.from_bytes(x, s.share))
    return collected


def _needed(state: ServerRound) -> list[tuple[str, ShareKind]]:
    assert state.shared is not None and state.masked is not None
    survived = set(state.masked)
    return [(u, "self_mask_seed") for u in state.masked] + [
        (v, "mask_key") for v in state.shared if v not in survived
    ]


def _deficits(state: ServerRound, collected: dict[tuple[str, ShareKind], list[shamir.Share]]) -> list[ShareDeficit]:
    t = state.params.threshold
    counts = {(o, k): len(collected.get((o, k), [])) for o, k in _needed(state)}
    return [ShareDeficit(owner=o, kind=k, have=n) for (o, k), n in counts.items() if n < t]


def share_deficits(state: ServerRound, responses: Sequence[tuple[str, UnmaskResponse]]) -> list[ShareDeficit]:
    """The secrets that still lack t shares; empty once the engine may unmask without waiting longer."""
    return _deficits(state, _collect_shares(state, responses))


def reconstruct_secrets(state: ServerRound, responses: Sequence[tuple[str, UnmaskResponse]]) -> RoundSecrets:
    """b_u for every u in U3 and s_v^SK for every v in U2 \\ U3, each from >= t shares."""
    if state.masked is None:
        raise NotInStage("unmasking before the masked-input stage closed")
    collected = _collect_shares(state, responses)
    t = state.params.threshold
    deficits = _deficits(state, collected)
    if deficits:
        raise NotEnoughShares(deficits, t)
    seeds: dict[str, bytes] = {}
    keys: dict[str, bytes] = {}
    for owner, kind in _needed(state):
        try:
            secret = shamir.reconstruct(collected[(owner, kind)], t)
        except shamir.ShamirError as exc:
            raise ReconstructionFailed(f"{owner} ({kind}): {exc}") from exc
        if kind == "self_mask_seed":
            seeds[owner] = secret
        else:
            if crypto.public_key_of(secret) != state.keys[owner].mask_public_key:
                raise ReconstructionFailed(f"{owner}: reconstructed masking key does not match its public key")
            keys[owner] = secret
    return RoundSecrets(self_mask_seeds=seeds, mask_keys=keys)


def remove_masks(state: ServerRound, round_secrets: RoundSecrets, masked_sum: np.ndarray) -> np.ndarray:
    """sum_{u in U3} y_u minus every self mask, and minus each survivor's pairwise mask with a dropped
    neighbour (pairwise masks between two survivors cancel by themselves)."""
    p = state.params
    if masked_sum.dtype != np.uint32 or masked_sum.shape != (p.vector_length,):
        raise ValueError(f"expected a uint32 sum of length {p.vector_length}")
    assert state.masked is not None
    total = masked_sum.copy()
    scratch = crypto.prg_buffer(p.vector_length)
    for u in state.masked:
        pad = crypto.prg_uint32(round_secrets.self_mask_seeds[u], p.vector_length, buffer=scratch)
        np.subtract(total, pad, out=total)
    survived = set(state.masked)
    neighbours = graph_of(p)
    for v, key in sorted(round_secrets.mask_keys.items()):
        peers = {u: state.keys[u].mask_public_key for u in sorted(neighbours[v] & survived)}
        seeds = crypto.agree_all(key, peers, purpose="pairwise-mask", round_id=p.round_id, me=v)
        for u, seed in seeds.items():
            pad = crypto.prg_uint32(seed, p.vector_length, buffer=scratch)
            # u added sign(u, v) * pad; take it back out.
            if pairwise_mask_sign(u, v) > 0:
                np.subtract(total, pad, out=total)
            else:
                np.add(total, pad, out=total)
    return total


def unmask(
    state: ServerRound, responses: Sequence[tuple[str, UnmaskResponse]], masked_sum: np.ndarray
) -> np.ndarray:
    """The sum mod 2^32 of U3's fixed-point inputs."""
    return remove_masks(state, reconstruct_secrets(state, responses), masked_sum)


def _core(members: set[str], neighbours: dict[str, frozenset[str]], t: int) -> set[str]:
    """The largest subset in which every device has at least t neighbours (peeling the others off)."""
    alive = set(members)
    degree = {u: len(neighbours[u] & alive) for u in alive}
    doomed = [u for u in alive if degree[u] < t]
    while doomed:
        u = doomed.pop()
        if u not in alive:
            continue
        alive.remove(u)
        for v in neighbours[u] & alive:
            degree[v] -= 1
            if degree[v] < t:
                doomed.append(v)
    return alive


def _components(members: set[str], neighbours: dict[str, frozenset[str]]) -> list[set[str]]:
    unseen, parts = set(members), []
    while unseen:
        start = unseen.pop()
        part, stack = {start}, [start]
        while stack:
            for v in neighbours[stack.pop()] & unseen:
                unseen.discard(v)
                part.add(v)
                stack.append(v)
        parts.append(part)
    return parts


def _enough(stage: str, have: int, need: int) -> None:
    if have < need:
        raise NotEnoughSurvivors(stage, have, need)
