"""The wire models bound every size a device controls and refuse what no honest party sends."""

from __future__ import annotations

import base64

import pytest
from pydantic import ValidationError

from fedface_common.secagg import messages
from fedface_common.secagg.device import SecAggDevice
from fedface_common.secagg.messages import (
    MAX_NEIGHBOURS,
    SHARE_CIPHERTEXT_BYTES,
    AdvertiseKeys,
    EncryptedShare,
    MaskedInputMeta,
    RevealedShare,
    SecAggParams,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from tests.secagg.rounds import device_ids, make_params

DEVICE = device_ids(1)[0]


def _share(recipient: str = DEVICE) -> EncryptedShare:
    return EncryptedShare(recipient=recipient, ciphertext=bytes(SHARE_CIPHERTEXT_BYTES))


def test_messages_round_trip_as_json_with_base64_bytes() -> None:
    params = make_params(5, 4, 3)
    advert = SecAggDevice.create(params, params.devices[0]).advertise()
    raw = advert.model_dump_json()
    assert AdvertiseKeys.model_validate_json(raw) == advert
    assert base64.urlsafe_b64decode(advert.model_dump(mode="json")["enc_public_key"]) == advert.enc_public_key
    assert SecAggParams.model_validate_json(params.model_dump_json()) == params


def test_sizes_are_bounded() -> None:
    with pytest.raises(ValidationError):
        EncryptedShare(recipient=DEVICE, ciphertext=bytes(SHARE_CIPHERTEXT_BYTES + 1))
    with pytest.raises(ValidationError):
        EncryptedShare(recipient="x" * 65, ciphertext=bytes(SHARE_CIPHERTEXT_BYTES))
    with pytest.raises(ValidationError):
        EncryptedShare(recipient="no spaces", ciphertext=bytes(SHARE_CIPHERTEXT_BYTES))
    with pytest.raises(ValidationError):
        ShareKeys(shares=[_share(f"d{i}") for i in range(MAX_NEIGHBOURS + 1)])
    with pytest.raises(ValidationError):
        AdvertiseKeys(enc_public_key=bytes(33), mask_public_key=bytes(32))
    with pytest.raises(ValidationError):
        RevealedShare(owner=DEVICE, kind="mask_key", share=bytes(34))
    with pytest.raises(ValidationError):
        MaskedInputMeta(vector_length=messages.MAX_VECTOR_LENGTH + 1, sha256="0" * 64, masked_with=[])
    with pytest.raises(ValidationError):
        UnmaskRequest(survivor_count=1, survivors=[f"d{i}" for i in range(MAX_NEIGHBOURS + 1)], dropped=[])
    with pytest.raises(ValidationError):
        AdvertiseKeys.model_validate({"enc_public_key": b"\x01" * 32, "mask_public_key": b"\x02" * 32, "extra": 1})


def test_repeats_and_contradictions_are_refused() -> None:
    with pytest.raises(ValidationError):
        ShareKeys(shares=[_share(), _share()])
    with pytest.raises(ValidationError):
        UnmaskRequest(survivor_count=3, survivors=["a"], dropped=["a"])
    with pytest.raises(ValidationError):
        UnmaskResponse(shares=[RevealedShare(owner="a", kind="mask_key", share=bytes(33)),
                               RevealedShare(owner="a", kind="self_mask_seed", share=bytes(33))])
    with pytest.raises(ValidationError):
        MaskedInputMeta(vector_length=4, sha256="0" * 64, masked_with=["b", "a"])
    with pytest.raises(ValidationError):
        AdvertiseKeys(enc_public_key=b"\x01" * 32, mask_public_key=b"\x01" * 32)


def test_round_parameters_must_be_consistent() -> None:
    good = make_params(10, 4, 3).model_dump()
    SecAggParams.model_validate(good)
    for change in ({"devices": list(reversed(good["devices"]))},  # unsorted
                   {"devices": [good["devices"][0]] * 10},  # repeated
                   {"neighbours": 5},  # odd and below n - 1
                   {"threshold": 2},  # not a majority of k = 4
                   {"threshold": 5},  # beyond k
                   {"min_survivors": 11},
                   {"scale": good["scale"] * 2},  # the sum could wrap
                   {"graph_seed": bytes(16)}):
        with pytest.raises(ValidationError):
            SecAggParams.model_validate({**good, **change})
    with pytest.raises(ValueError):
        SecAggParams.model_validate(good).index_of("not-a-device")
