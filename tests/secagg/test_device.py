"""The device's refusals: never both shares of one neighbour, never a share that fails authentication,
never a second input under the same masks; and its state survives serialisation."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.secagg import protocol
from fedface_common.secagg.crypto import ShareDecryptionError
from fedface_common.secagg.device import RevealRefused, SecAggDevice, StageRefused, TooFewNeighbours
from fedface_common.secagg.messages import (
    ForwardedShares,
    IncomingShare,
    NeighbourKeys,
    SecAggParams,
    UnmaskRequest,
)
from tests.secagg.rounds import make_params, through_share_keys


def _masked(n: int = 6, k: int = 5, t: int = 3) -> tuple[SecAggParams, dict[str, SecAggDevice],
                                                         dict[str, ForwardedShares]]:
    params = make_params(n, k, t, length=16)
    devices, _state, forwards = through_share_keys(params)
    zero = np.zeros(params.vector_length, np.uint32)
    for d in params.devices:
        devices[d], _, _ = devices[d].mask(zero, forwards[d])
    return params, devices, forwards


def test_asked_for_both_shares_of_one_neighbour_the_device_refuses() -> None:
    params, devices, _ = _masked()
    me, a, b = params.devices[0], params.devices[1], params.devices[2]
    # In one request (a request the wire model itself would refuse, built around it here).
    both = UnmaskRequest.model_construct(survivor_count=5, survivors=[a], dropped=[a])
    with pytest.raises(RevealRefused):
        devices[me].unmask(both)
    # Across two requests: first a survived, then a "dropped".
    after_first, response = devices[me].unmask(UnmaskRequest(survivor_count=5, survivors=[a, b], dropped=[]))
    assert {(s.owner, s.kind) for s in response.shares} == {(a, "self_mask_seed"), (b, "self_mask_seed")}
    with pytest.raises(RevealRefused):
        after_first.unmask(UnmaskRequest(survivor_count=5, survivors=[b], dropped=[a]))
    # The refusal survives a restart of the agent.
    with pytest.raises(RevealRefused):
        SecAggDevice.from_json(after_first.to_json()).unmask(UnmaskRequest(survivor_count=5, survivors=[], dropped=[a]))
    # Repeating the same answer is fine (a retried request).
    again, same = after_first.unmask(UnmaskRequest(survivor_count=5, survivors=[a, b], dropped=[]))
    assert same == response and again.revealed == after_first.revealed


def test_a_device_listed_as_dropped_refuses_to_reveal() -> None:
    params, devices, _ = _masked()
    me = params.devices[0]
    with pytest.raises(RevealRefused):
        devices[me].unmask(UnmaskRequest(survivor_count=5, survivors=[], dropped=[me]))


def test_too_few_survivors_are_refused() -> None:
    params, devices, _ = _masked()
    with pytest.raises(Exception, match="fewer than the round's minimum"):
        devices[params.devices[0]].unmask(UnmaskRequest(survivor_count=params.min_survivors - 1, survivors=[],
                                                        dropped=[]))


def test_tampered_or_misaddressed_ciphertexts_fail_authentication() -> None:
    params = make_params(6, 5, 3, length=8)
    devices, _, forwards = through_share_keys(params)
    me, other = params.devices[0], params.devices[1]
    zero = np.zeros(params.vector_length, np.uint32)
    first = forwards[me].shares[0]
    flipped = bytearray(first.ciphertext)
    flipped[-1] ^= 0x80
    tampered = ForwardedShares(shares=[IncomingShare(sender=first.sender, ciphertext=bytes(flipped)),
                                       *forwards[me].shares[1:]])
    with pytest.raises(ShareDecryptionError):
        devices[me].mask(zero, tampered)
    # A ciphertext addressed to `other` by the same sender, forwarded to `me` instead.
    sender = next(s.sender for s in forwards[other].shares if s.sender in forwards[me].senders())
    stolen = next(s for s in forwards[other].shares if s.sender == sender)
    redirected = ForwardedShares(shares=[s if s.sender != sender else stolen for s in forwards[me].shares])
    with pytest.raises(ShareDecryptionError):
        devices[me].mask(zero, redirected)
    # Relabelled as coming from another sender.
    swapped = ForwardedShares(shares=[IncomingShare(sender=s.sender, ciphertext=forwards[me].shares[0].ciphertext)
                                      for s in forwards[me].shares])
    with pytest.raises(ShareDecryptionError):
        devices[me].mask(zero, swapped)


def test_masking_a_second_input_is_refused_and_a_retry_repeats_the_first() -> None:
    params = make_params(6, 5, 3, length=8)
    devices, _, forwards = through_share_keys(params)
    me = params.devices[0]
    x = np.arange(params.vector_length, dtype=np.uint32)
    after, y, meta = devices[me].mask(x, forwards[me])
    _again, y2, meta2 = after.mask(x, forwards[me])
    assert np.array_equal(y, y2) and meta == meta2
    with pytest.raises(StageRefused):
        after.mask(x + np.uint32(1), forwards[me])
    with pytest.raises(StageRefused):
        after.mask(x, ForwardedShares(shares=forwards[me].shares[:-1]))


def test_share_keys_is_split_once() -> None:
    params = make_params(6, 5, 3)
    devices = {d: SecAggDevice.create(params, d) for d in params.devices}
    state = protocol.close_advertise(params, [(d, s.advertise()) for d, s in devices.items()])
    me = params.devices[0]
    keys = protocol.neighbour_keys_for(state, me)
    after, sent = devices[me].share_keys(keys)
    assert after.share_keys(keys)[1] == sent  # same ciphertexts: no second polynomial
    with pytest.raises(StageRefused):
        after.share_keys(NeighbourKeys(keys=keys.keys[:-1]))


def test_share_keys_refuses_too_few_strangers_or_repeated_keys() -> None:
    params = make_params(8, 4, 3)
    devices = {d: SecAggDevice.create(params, d) for d in params.devices}
    state = protocol.close_advertise(params, [(d, s.advertise()) for d, s in devices.items()])
    me = params.devices[0]
    keys = protocol.neighbour_keys_for(state, me).keys
    with pytest.raises(TooFewNeighbours):
        devices[me].share_keys(NeighbourKeys(keys=keys[:2]))
    stranger = next(d for d in params.devices if d != me and d not in devices[me].my_neighbours())
    fake = keys[0].model_copy(update={"device_id": stranger})
    with pytest.raises(StageRefused):
        devices[me].share_keys(NeighbourKeys(keys=[*keys[1:], fake]))
    copied = keys[1].model_copy(update={"mask_public_key": keys[0].mask_public_key})
    with pytest.raises(StageRefused):
        devices[me].share_keys(NeighbourKeys(keys=[keys[0], copied, *keys[2:]]))


def test_stages_out_of_order_are_refused() -> None:
    params = make_params(6, 5, 3, length=4)
    device = SecAggDevice.create(params, params.devices[0])
    with pytest.raises(StageRefused):
        device.mask(np.zeros(4, np.uint32), ForwardedShares(shares=[]))
    with pytest.raises(StageRefused):
        device.unmask(UnmaskRequest(survivor_count=5, survivors=[], dropped=[]))
    with pytest.raises(ValueError):
        SecAggDevice.create(params, "not-in-the-round")


def test_state_round_trips_through_json_with_secrets_as_bytes() -> None:
    params, devices, _ = _masked()
    state = devices[params.devices[0]]
    back = SecAggDevice.from_json(state.to_json())
    assert back == state
    assert isinstance(back.mask_private, bytes) and len(back.self_mask_seed) == 32


def test_secrets_stay_out_of_repr() -> None:
    params, devices, _ = _masked()
    state = devices[params.devices[0]]
    text = repr(state) + str(state)
    for secret in (state.enc_private, state.mask_private, state.self_mask_seed, *state.received_shares.values()):
        assert repr(secret) not in text and secret.hex() not in text
