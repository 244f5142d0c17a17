"""The cryptographic primitives of SecAgg+ (Bell et al., CCS 2020, Sec. 2: key agreement, authenticated
encryption, a PRG), all from the `cryptography` package.

* Key agreement: X25519. Every device holds two key pairs per round, (c_u^PK, c_u^SK) to encrypt the
  shares it sends and (s_u^PK, s_u^SK) to derive pairwise masks; keeping them apart is what lets the
  server learn a dropped device's masking key without learning how to read its share traffic.
* Key derivation: HKDF-SHA256 over the X25519 output, with an `info` string that binds the protocol,
  the purpose, the round id and both device ids, so that a key is never reused across rounds, pairs or
  purposes.
* Share encryption: AES-256-GCM with a random 96-bit nonce; the associated data binds the round, the
  sender and the recipient, so a ciphertext replayed from another round or redirected to another device
  fails authentication.
* PRG: AES-256-CTR keystream from a 256-bit seed (every seed in this protocol is 32 bytes), read as
  little-endian uint32 values. A seed is used as a key exactly once (b_u is fresh per round, s_uv is
  bound to the round and pair by HKDF), so a fixed all-zero initial counter is safe.

Secrets come from the operating system (`os.urandom`, `secrets`), never from `random`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32  # X25519 keys, derived symmetric keys and PRG seeds alike
SEED_BYTES = 32  # PRG seeds are 256-bit
NONCE_BYTES = 12
TAG_BYTES = 16
PROTOCOL_LABEL = b"fedface-secagg-v1"

Purpose = Literal["share-encryption", "pairwise-mask"]

# The keystream is produced by encrypting zeros; one cached block of zeros serves every expansion, in
# chunks, so a million-parameter mask costs no per-call allocation beyond its own output.
_CHUNK_BYTES = 1 << 20
_ZEROS = memoryview(bytes(_CHUNK_BYTES))
_AES_BLOCK = 16


class KeyAgreementError(ValueError):
    """A peer's public key is malformed or of small order (the shared secret would be all zeros)."""


class ShareDecryptionError(ValueError):
    """A share ciphertext failed authentication: tampered, or not addressed to this round and device."""


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair as raw 32-byte strings, so that device state can be serialised."""

    private: bytes
    public: bytes


def new_seed() -> bytes:
    """A fresh 256-bit secret from the operating system's CSPRNG."""
    return os.urandom(SEED_BYTES)


def generate_key_pair() -> KeyPair:
    private = X25519PrivateKey.generate()
    return KeyPair(private=private.private_bytes_raw(), public=private.public_key().public_bytes_raw())


def public_key_of(private: bytes) -> bytes:
    """The public key of a raw private key; the server uses it to check a reconstructed masking key."""
    return _load_private(private).public_key().public_bytes_raw()


def _field(value: bytes) -> bytes:
    # Length-prefixed, so that no two different tuples of fields encode to the same string.
    return len(value).to_bytes(2, "big") + value


def _context(purpose: str, round_id: int, *device_ids: str) -> bytes:
    parts = [_field(PROTOCOL_LABEL), _field(purpose.encode()), round_id.to_bytes(8, "big", signed=False)]
    parts.extend(_field(d.encode()) for d in device_ids)
    return b"".join(parts)


def agree(private: bytes, peer_public: bytes, *, purpose: Purpose, round_id: int, a: str, b: str) -> bytes:
    """The 32-byte key devices `a` and `b` share for `purpose` in this round.

    Symmetric in (a, b): both ends sort the ids, so each derives the same key from its own private key
    and the other's public key."""
    return _derive(_load_private(private), peer_public, purpose, round_id, a, b)


def agree_all(
    private: bytes, peers: Mapping[str, bytes], *, purpose: Purpose, round_id: int, me: str
) -> dict[str, bytes]:
    """`agree` with each peer (id -> public key), loading the private key once (loading costs a scalar
    multiplication, as much as the agreement itself)."""
    key = _load_private(private)
    return {peer: _derive(key, public, purpose, round_id, me, peer) for peer, public in peers.items()}


def _load_private(private: bytes) -> X25519PrivateKey:
    _check_len(private, KEY_BYTES, "private key")
    return X25519PrivateKey.from_private_bytes(private)


def _derive(key: X25519PrivateKey, peer_public: bytes, purpose: Purpose, round_id: int, a: str, b: str) -> bytes:
    _check_len(peer_public, KEY_BYTES, "public key")
    if a == b:
        raise KeyAgreementError("a device does not agree a key with itself")
    try:
        shared = key.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:
        raise KeyAgreementError(f"key agreement failed: {exc}") from exc
    first, second = sorted((a, b))
    info = _context(purpose, round_id, first, second)
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


def _share_ad(round_id: int, sender: str, recipient: str) -> bytes:
    # Directed, unlike the key: a ciphertext from u to v must not pass as one from v to u.
    return _context("share", round_id, sender, recipient)


def encrypt_share(key: bytes, plaintext: bytes, *, round_id: int, sender: str, recipient: str) -> bytes:
    """nonce || AES-GCM(plaintext) || tag."""
    _check_len(key, KEY_BYTES, "share key")
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, _share_ad(round_id, sender, recipient))


def decrypt_share(key: bytes, ciphertext: bytes, *, round_id: int, sender: str, recipient: str) -> bytes:
    _check_len(key, KEY_BYTES, "share key")
    if len(ciphertext) < NONCE_BYTES + TAG_BYTES:
        raise ShareDecryptionError("ciphertext too short")
    nonce, body = ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:]
    try:
        return AESGCM(key).decrypt(nonce, body, _share_ad(round_id, sender, recipient))
    except InvalidTag as exc:
        raise ShareDecryptionError(f"share from {sender} to {recipient} failed authentication") from exc


def prg_buffer(length: int) -> bytearray:
    """A scratch buffer `prg_uint32` can write `length` values into, to expand many masks without
    allocating (and first-touching) a new vector for each."""
    return bytearray(4 * length + _AES_BLOCK - 1)


def prg_uint32(seed: bytes, length: int, *, buffer: bytearray | None = None) -> np.ndarray:
    """`length` pseudorandom uint32 values expanded from a 256-bit seed (AES-256-CTR keystream, little-endian).

    Vectorised: the keystream is written straight into the output buffer a megabyte at a time; nothing
    loops over parameters in Python. With `buffer` (from `prg_buffer`), the result is a view into it,
    valid until the buffer is used again."""
    _check_len(seed, SEED_BYTES, "PRG seed")
    if length < 0:
        raise ValueError("length must be >= 0")
    nbytes = 4 * length
    # update_into wants room for a block beyond its input; the view below ignores it.
    out = buffer if buffer is not None else prg_buffer(length)
    if len(out) < nbytes + _AES_BLOCK - 1:
        raise ValueError("buffer too small for this many values")
    view = memoryview(out)
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(_AES_BLOCK))).encryptor()
    for offset in range(0, nbytes, _CHUNK_BYTES):
        n = min(_CHUNK_BYTES, nbytes - offset)
        encryptor.update_into(_ZEROS[:n], view[offset : offset + n + _AES_BLOCK - 1])
    return np.frombuffer(out, dtype="<u4", count=length)


def _check_len(value: bytes, n: int, what: str) -> None:
    if len(value) != n:
        raise ValueError(f"{what} must be {n} bytes, got {len(value)}")
