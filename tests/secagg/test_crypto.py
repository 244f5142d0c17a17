"""The primitives: pairwise keys agree and are bound to round, pair and purpose; share ciphertexts fail
authentication when tampered with or read in another context; the PRG is the AES-256-CTR keystream."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedface_common.secagg import crypto
from fedface_common.secagg.crypto import KeyAgreementError, ShareDecryptionError


def test_both_ends_derive_the_same_key_and_nothing_else_does() -> None:
    a, b, c = crypto.generate_key_pair(), crypto.generate_key_pair(), crypto.generate_key_pair()
    ab = crypto.agree(a.private, b.public, purpose="pairwise-mask", round_id=3, a="a", b="b")
    assert ab == crypto.agree(b.private, a.public, purpose="pairwise-mask", round_id=3, a="b", b="a")
    others = {
        crypto.agree(a.private, b.public, purpose="share-encryption", round_id=3, a="a", b="b"),
        crypto.agree(a.private, b.public, purpose="pairwise-mask", round_id=4, a="a", b="b"),
        crypto.agree(a.private, b.public, purpose="pairwise-mask", round_id=3, a="a", b="c"),
        crypto.agree(a.private, c.public, purpose="pairwise-mask", round_id=3, a="a", b="b"),
    }
    assert ab not in others and len(others) == 4
    assert len(ab) == 32


def test_agree_all_matches_agree() -> None:
    me, peers = crypto.generate_key_pair(), {f"d{i}": crypto.generate_key_pair().public for i in range(4)}
    keys = crypto.agree_all(me.private, peers, purpose="share-encryption", round_id=1, me="me")
    for peer, public in peers.items():
        assert keys[peer] == crypto.agree(me.private, public, purpose="share-encryption", round_id=1, a="me", b=peer)


def test_small_order_and_malformed_public_keys_are_refused() -> None:
    me = crypto.generate_key_pair()
    with pytest.raises(KeyAgreementError):
        crypto.agree(me.private, bytes(32), purpose="pairwise-mask", round_id=0, a="a", b="b")
    with pytest.raises(ValueError):
        crypto.agree(me.private, bytes(31), purpose="pairwise-mask", round_id=0, a="a", b="b")
    with pytest.raises(KeyAgreementError):
        crypto.agree(me.private, crypto.generate_key_pair().public, purpose="pairwise-mask", round_id=0, a="a", b="a")


def test_public_key_of_matches_the_generated_pair() -> None:
    pair = crypto.generate_key_pair()
    assert crypto.public_key_of(pair.private) == pair.public


def test_share_ciphertexts_open_only_in_their_own_context() -> None:
    key, plaintext = crypto.new_seed(), b"s" * 66
    sealed = crypto.encrypt_share(key, plaintext, round_id=9, sender="u", recipient="v")
    assert crypto.decrypt_share(key, sealed, round_id=9, sender="u", recipient="v") == plaintext
    for context in ({"round_id": 10, "sender": "u", "recipient": "v"}, {"round_id": 9, "sender": "v", "recipient": "u"},
                    {"round_id": 9, "sender": "u", "recipient": "w"}):
        with pytest.raises(ShareDecryptionError):
            crypto.decrypt_share(key, sealed, **context)  # type: ignore[arg-type]
    for i in (0, 12, len(sealed) - 1):  # nonce, body, tag
        tampered = bytearray(sealed)
        tampered[i] ^= 1
        with pytest.raises(ShareDecryptionError):
            crypto.decrypt_share(key, bytes(tampered), round_id=9, sender="u", recipient="v")
    with pytest.raises(ShareDecryptionError):
        crypto.decrypt_share(crypto.new_seed(), sealed, round_id=9, sender="u", recipient="v")
    with pytest.raises(ShareDecryptionError):
        crypto.decrypt_share(key, sealed[:20], round_id=9, sender="u", recipient="v")


def test_nonces_are_fresh() -> None:
    key = crypto.new_seed()
    assert crypto.encrypt_share(key, b"x", round_id=0, sender="u", recipient="v") != crypto.encrypt_share(
        key, b"x", round_id=0, sender="u", recipient="v")


@pytest.mark.parametrize("length", [0, 1, 3, 4, 262_144, 262_145, 600_001])
def test_prg_is_the_aes_ctr_keystream_read_as_little_endian_uint32(length: int) -> None:
    """Across the 1 MiB chunk boundary (262,144 values) too: chunking must not restart the counter."""
    seed = bytes(range(32))
    expected = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor().update(bytes(4 * length))
    values = crypto.prg_uint32(seed, length)
    assert values.dtype == np.uint32 and values.shape == (length,)
    assert values.astype("<u4").tobytes() == expected


def test_prg_is_deterministic_per_seed_and_differs_across_seeds() -> None:
    a, b = crypto.new_seed(), crypto.new_seed()
    assert np.array_equal(crypto.prg_uint32(a, 1000), crypto.prg_uint32(a, 1000))
    assert not np.array_equal(crypto.prg_uint32(a, 1000), crypto.prg_uint32(b, 1000))
    assert np.array_equal(crypto.prg_uint32(a, 1000)[:10], crypto.prg_uint32(a, 10))
    with pytest.raises(ValueError):
        crypto.prg_uint32(b"\x00" * 16, 10)  # seeds are 256-bit


def test_prg_output_is_writable() -> None:
    values = crypto.prg_uint32(crypto.new_seed(), 8)
    values += np.uint32(1)


def test_prg_into_a_reused_buffer_gives_the_same_values() -> None:
    seed, other = crypto.new_seed(), crypto.new_seed()
    scratch = crypto.prg_buffer(1000)
    assert np.array_equal(crypto.prg_uint32(seed, 1000, buffer=scratch), crypto.prg_uint32(seed, 1000))
    assert np.array_equal(crypto.prg_uint32(other, 10, buffer=scratch), crypto.prg_uint32(other, 10))
    with pytest.raises(ValueError):
        crypto.prg_uint32(seed, 1001, buffer=scratch)
