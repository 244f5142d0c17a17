"""A whole SecAgg+ round in memory: the devices' states and the server's stage functions, with devices
dropping out at chosen stages. What the coordinator's sub-rounds and the agent do over HTTP, minus the
HTTP; the tests and the micro-benchmark drive the protocol through it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from coordinator.secagg import protocol
from fedface_common.secagg.device import DeviceRefusal, SecAggDevice
from fedface_common.secagg.messages import (
    AdvertiseKeys,
    MaskedInputMeta,
    SecAggParams,
    ShareKeys,
    UnmaskResponse,
)


@dataclass(frozen=True)
class Dropouts:
    """Devices that go silent instead of sending this stage's message (and stay silent afterwards)."""

    advertise: frozenset[str] = frozenset()
    share_keys: frozenset[str] = frozenset()
    masked_input: frozenset[str] = frozenset()
    unmask: frozenset[str] = frozenset()


@dataclass
class SimulatedRound:
    state: protocol.ServerRound
    total: np.ndarray  # the unmasked sum mod 2^32 of the inputs in state.masked
    masked: dict[str, np.ndarray] = field(default_factory=dict)  # each device's masked vector, as sent
    refused: dict[str, str] = field(default_factory=dict)  # devices that refused a stage, and why


def run_round(
    params: SecAggParams, inputs: Mapping[str, np.ndarray], dropouts: Dropouts = Dropouts(), *, persist: bool = True
) -> SimulatedRound:
    """One round over `params.devices`; `inputs` are the devices' uint32 fixed-point vectors.

    With `persist`, each device's state and the server's go through their JSON forms between stages, as
    the agent's file and the coordinator's database would hold them."""
    devices = {d: SecAggDevice.create(params, d) for d in params.devices}
    refused: dict[str, str] = {}

    def keep(d: str, state: SecAggDevice) -> None:
        devices[d] = SecAggDevice.from_json(state.to_json()) if persist else state

    def stored(state: protocol.ServerRound) -> protocol.ServerRound:
        return protocol.ServerRound.model_validate_json(state.model_dump_json()) if persist else state

    adverts: list[tuple[str, AdvertiseKeys]] = [
        (d, devices[d].advertise()) for d in params.devices if d not in dropouts.advertise
    ]
    state = stored(protocol.close_advertise(params, adverts))

    shares: list[tuple[str, ShareKeys]] = []
    for d in state.keys:
        if d in dropouts.share_keys:
            continue
        try:
            device, message = devices[d].share_keys(protocol.neighbour_keys_for(state, d))
        except DeviceRefusal as exc:
            refused[d] = str(exc)
            continue
        keep(d, device)
        protocol.check_share_keys(state, d, message)
        shares.append((d, message))
    state, forwards = protocol.close_share_keys(state, shares)
    state = stored(state)

    masked: dict[str, np.ndarray] = {}
    partial: np.ndarray | None = None
    assert state.shared is not None
    for d in state.shared:
        if d in dropouts.masked_input:
            continue
        try:
            device, vector, meta = devices[d].mask(inputs[d], forwards[d])
        except DeviceRefusal as exc:
            refused[d] = str(exc)
            continue
        keep(d, device)
        meta = MaskedInputMeta.model_validate_json(meta.model_dump_json())
        protocol.check_masked_input(state, d, meta)
        protocol.check_masked_vector(state, meta, vector)
        masked[d] = vector
        partial = protocol.accumulate(partial, vector)
    state, requests = protocol.close_masked_input(state, masked)
    state = stored(state)
    assert partial is not None

    responses: list[tuple[str, UnmaskResponse]] = []
    for d, request in requests.items():
        if d in dropouts.unmask:
            continue
        try:
            device, response = devices[d].unmask(request)
        except DeviceRefusal as exc:
            refused[d] = str(exc)
            continue
        keep(d, device)
        protocol.check_unmask_response(state, d, response)
        responses.append((d, response))
    total = protocol.unmask(state, responses, partial)
    return SimulatedRound(state=state, total=total, masked=masked, refused=refused)
