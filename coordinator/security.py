"""Secrets: generated with `secrets`, stored only as SHA-256 digests and
compared in constant time. The secrets are 256-bit random, so a fast hash is
enough; a password KDF would only slow down every authenticated call."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid

DEVICE_CREDENTIAL_PREFIX = "ffd_"
ENROLLMENT_TOKEN_PREFIX = "ffe_"


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def matches(secret: str, digest: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), digest)


def device_credential(device_id: uuid.UUID, secret: str) -> str:
    return f"{DEVICE_CREDENTIAL_PREFIX}{device_id.hex}.{secret}"


def parse_device_credential(credential: str) -> tuple[uuid.UUID, str] | None:
    if not credential.startswith(DEVICE_CREDENTIAL_PREFIX) or len(credential) > 200:
        return None
    ident, _, secret = credential[len(DEVICE_CREDENTIAL_PREFIX):].partition(".")
    try:
        return uuid.UUID(hex=ident), secret
    except ValueError:
        return None


def new_enrollment_token() -> str:
    return ENROLLMENT_TOKEN_PREFIX + new_secret()
