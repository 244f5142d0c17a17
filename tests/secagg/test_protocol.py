"""The server's stages: duplicates and protocol-breaking messages are refused with typed errors, stages
below the minimum fail, a secret short of t shares fails clearly, and partial sums fold in any order."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.secagg import protocol
from coordinator.secagg.errors import (
    DuplicateMessage,
    InvalidMessage,
    NotEnoughShares,
    NotEnoughSurvivors,
    NotInStage,
    ReconstructionFailed,
)
from fedface_common.secagg.device import SecAggDevice
from fedface_common.secagg.messages import (
    MaskedInputMeta,
    RevealedShare,
    SecAggParams,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from tests.secagg.rounds import make_params, through_share_keys


def _unmask_stage(
    n: int = 8, k: int = 7, t: int = 4, dropped: int = 1
) -> tuple[SecAggParams, dict[str, SecAggDevice], protocol.ServerRound, dict[str, UnmaskRequest], np.ndarray]:
    params = make_params(n, k, t, length=32)
    devices, state, forwards = through_share_keys(params)
    rng = np.random.default_rng(1)
    partial = None
    survivors = params.devices[dropped:]
    for d in survivors:
        devices[d], y, meta = devices[d].mask(rng.integers(0, 2**32, params.vector_length, dtype=np.uint32),
                                              forwards[d])
        protocol.check_masked_input(state, d, meta)
        partial = protocol.accumulate(partial, y)
    state, requests = protocol.close_masked_input(state, survivors)
    assert partial is not None
    return params, devices, state, requests, partial


def test_a_different_second_message_is_a_duplicate_and_an_identical_one_a_retry() -> None:
    params = make_params(5, 4, 3)
    a, b = (SecAggDevice.create(params, d).advertise() for d in params.devices[:2])
    assert protocol.is_new_message(None, a)
    assert not protocol.is_new_message(a, a)
    with pytest.raises(DuplicateMessage):
        protocol.is_new_message(a, b)
    others = [(d, SecAggDevice.create(params, d).advertise()) for d in params.devices[1:]]
    with pytest.raises(DuplicateMessage):
        protocol.close_advertise(params, [(params.devices[0], a), (params.devices[0], b), *others])
    state = protocol.close_advertise(params, [(params.devices[0], a), (params.devices[0], a), *others])
    assert sorted(state.keys) == params.devices


def test_duplicate_share_keys_and_unmask_responses_are_detected() -> None:
    params = make_params(6, 5, 3)
    devices = {d: SecAggDevice.create(params, d) for d in params.devices}
    state = protocol.close_advertise(params, [(d, s.advertise()) for d, s in devices.items()])
    sent = [(d, devices[d].share_keys(protocol.neighbour_keys_for(state, d))[1]) for d in params.devices]
    me = params.devices[0]
    second = devices[me].share_keys(protocol.neighbour_keys_for(state, me))[1]  # fresh polynomial, new ciphertexts
    with pytest.raises(DuplicateMessage):
        protocol.close_share_keys(state, [*sent, (me, second)])

    params, devices, state, requests, partial = _unmask_stage()
    responses = [(d, devices[d].unmask(r)[1]) for d, r in requests.items()]
    first = responses[0]
    altered = (first[0], UnmaskResponse(shares=first[1].shares[1:]))
    with pytest.raises(DuplicateMessage):
        protocol.unmask(state, [*responses, altered], partial)


def test_messages_that_break_the_protocol_are_refused() -> None:
    params = make_params(8, 4, 3)
    devices = {d: SecAggDevice.create(params, d) for d in params.devices}
    with pytest.raises(NotInStage):
        protocol.check_advertise(params, "stranger", devices[params.devices[0]].advertise())
    state = protocol.close_advertise(params, [(d, s.advertise()) for d, s in devices.items()])
    me = params.devices[0]
    _, message = devices[me].share_keys(protocol.neighbour_keys_for(state, me))
    protocol.check_share_keys(state, me, message)
    with pytest.raises(InvalidMessage):
        protocol.check_share_keys(state, me, ShareKeys(shares=message.shares[:-1]))
    other = next(d for d in params.devices if d != me)
    with pytest.raises(InvalidMessage):  # another device's recipients differ
        protocol.check_share_keys(state, other, message)
    with pytest.raises(NotInStage):
        protocol.neighbour_keys_for(state, "stranger")

    params, devices, state, requests, _partial = _unmask_stage()
    dropped, survivor = params.devices[0], params.devices[1]
    bad_meta = MaskedInputMeta(vector_length=params.vector_length, sha256="0" * 64, masked_with=[])
    with pytest.raises(NotInStage):  # the masked-input stage is closed
        protocol.check_masked_input(state, survivor, bad_meta)
    response = devices[survivor].unmask(requests[survivor])[1]
    share = next(s for s in response.shares if s.owner == dropped)
    assert share.kind == "mask_key"
    wrong_kind = UnmaskResponse(shares=[RevealedShare(owner=dropped, kind="self_mask_seed", share=share.share)])
    with pytest.raises(InvalidMessage):
        protocol.check_unmask_response(state, survivor, wrong_kind)
    with pytest.raises(NotInStage):  # a device that dropped before masking does not answer
        protocol.check_unmask_response(state, dropped, response)


def test_masked_input_metadata_and_body_are_checked() -> None:
    params = make_params(6, 5, 3, length=8)
    devices, state, forwards = through_share_keys(params)
    me = params.devices[0]
    _, y, meta = devices[me].mask(np.zeros(8, np.uint32), forwards[me])
    protocol.check_masked_input(state, me, meta)
    protocol.check_masked_vector(state, meta, y)
    with pytest.raises(InvalidMessage):
        protocol.check_masked_input(state, me, meta.model_copy(update={"masked_with": meta.masked_with[1:]}))
    with pytest.raises(InvalidMessage):
        protocol.check_masked_input(state, me, meta.model_copy(update={"vector_length": 9}))
    with pytest.raises(InvalidMessage):
        protocol.check_masked_vector(state, meta, y + np.uint32(1))
    with pytest.raises(InvalidMessage):
        protocol.check_masked_vector(state, meta, y.astype(np.int64))


def test_too_few_shares_for_a_needed_secret_is_a_clear_error() -> None:
    params, devices, state, requests, partial = _unmask_stage(n=8, k=7, t=4, dropped=1)
    answering = list(requests)[: params.threshold - 1]  # t - 1 answers: every secret is one share short
    responses = [(d, devices[d].unmask(requests[d])[1]) for d in answering]
    deficits = protocol.share_deficits(state, responses)
    assert {d.owner for d in deficits} == set(params.devices)  # every survivor's seed, the dropped one's key
    with pytest.raises(NotEnoughShares) as info:
        protocol.unmask(state, responses, partial)
    assert info.value.threshold == params.threshold and len(info.value.deficits) == len(deficits)
    assert {d.kind for d in info.value.deficits if d.owner == params.devices[0]} == {"mask_key"}
    # t answers cover the silent devices; each answering device needs t others (none holds its own seed).
    enough = [(d, devices[d].unmask(requests[d])[1]) for d in list(requests)[: params.threshold + 1]]
    assert protocol.share_deficits(state, enough[:-1]) != []
    assert protocol.share_deficits(state, enough) == []


def test_fewer_survivors_than_the_minimum_fail_the_stage() -> None:
    params = make_params(6, 5, 3, min_survivors=5)
    devices = {d: SecAggDevice.create(params, d) for d in params.devices}
    with pytest.raises(NotEnoughSurvivors) as info:
        protocol.close_advertise(params, [(d, devices[d].advertise()) for d in params.devices[:4]])
    assert (info.value.stage, info.value.have, info.value.need) == ("advertise keys", 4, 5)
    devices, state, _forwards = through_share_keys(params)
    with pytest.raises(NotEnoughSurvivors):
        protocol.close_masked_input(state, params.devices[:4])


def test_a_corrupted_share_is_caught_when_more_than_t_arrive() -> None:
    _params, devices, state, requests, partial = _unmask_stage(n=8, k=7, t=4, dropped=1)
    responses = [(d, devices[d].unmask(requests[d])[1]) for d in requests]
    sender, response = responses[0]
    bad = [s.model_copy(update={"share": (int.from_bytes(s.share, "big") ^ 1).to_bytes(33, "big")})
           for s in response.shares]
    with pytest.raises(ReconstructionFailed):
        protocol.unmask(state, [(sender, UnmaskResponse(shares=bad)), *responses[1:]], partial)


def test_devices_advertising_the_same_key_are_left_out() -> None:
    params = make_params(8, 7, 4)
    adverts = [(d, SecAggDevice.create(params, d).advertise()) for d in params.devices]
    copier = (adverts[1][0], adverts[1][1].model_copy(update={"mask_public_key": adverts[0][1].mask_public_key}))
    state = protocol.close_advertise(params, [adverts[0], copier, *adverts[2:]])
    assert sorted(state.keys) == params.devices[2:]


def test_devices_with_fewer_than_t_live_neighbours_are_peeled_off() -> None:
    """On a ring (k = 2, t = 2), one silent device leaves its two neighbours with one live neighbour each:
    they could never have their secrets rebuilt, so the server drops them, and so on around the ring."""
    params = make_params(10, 2, 2, min_survivors=2)
    adverts = [(d, SecAggDevice.create(params, d).advertise()) for d in params.devices[1:]]
    with pytest.raises(NotEnoughSurvivors):
        protocol.close_advertise(params, adverts)


def test_accumulate_folds_and_merges_in_any_order() -> None:
    rng = np.random.default_rng(0)
    vectors = [rng.integers(0, 2**32, 100, dtype=np.uint32) for _ in range(6)]
    total = None
    for v in vectors:
        total = protocol.accumulate(total, v)
    left = right = None
    for v in vectors[:2]:
        left = protocol.accumulate(left, v)
    for v in reversed(vectors[2:]):
        right = protocol.accumulate(right, v)
    assert left is not None and right is not None and total is not None
    assert np.array_equal(protocol.accumulate(left, right), total)
    expected = (np.sum([v.astype(np.uint64) for v in vectors], axis=0) % 2**32).astype(np.uint32)
    assert np.array_equal(total, expected)
    with pytest.raises(ValueError):
        protocol.accumulate(total, vectors[0].astype(np.int64))


def test_the_server_never_asks_for_both_shares() -> None:
    params, _devices, _state, requests, _partial = _unmask_stage(n=10, k=9, t=5, dropped=3)
    for request in requests.values():
        assert isinstance(request, UnmaskRequest)
        assert not set(request.survivors) & set(request.dropped)
        assert set(request.dropped) == set(params.devices[:3])
