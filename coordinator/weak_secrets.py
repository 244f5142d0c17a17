"""What makes an admin token too weak for production.

The admin token opens every model, round and device, so in production it must
be random: at least 32 characters, not a placeholder shipped in a manifest or
an example, and not a short pattern repeated to reach the length."""

from __future__ import annotations

import re

MIN_ADMIN_TOKEN_CHARS = 32
# Compared case-insensitively and without punctuation: "CHANGE_ME", "change-me" and "changeme" are one.
PLACEHOLDERS = frozenset({
    "changeme", "replaceme", "placeholder", "admin", "administrator", "password", "passwd", "secret",
    "token", "admintoken", "test", "testing", "default", "example", "fedface", "root", "x", "xxx", "todo",
    "fixme", "none", "null", "empty",
})
# Markers of a value nobody generated, wherever they appear in it.
_PLACEHOLDER_MARKERS = ("changeme", "replaceme", "placeholder")
# A random token of 32 characters or more uses far more distinct characters than this
# (hex: about 15 of 16); a repeated word ("secretsecret...", "xxxx...") uses fewer.
_MIN_DISTINCT_CHARS = 8


def admin_token_weakness(token: str) -> str | None:
    """Why `token` is too weak for production, or None if it is not."""
    folded = re.sub(r"[^a-z0-9]", "", token.lower())
    if folded in PLACEHOLDERS:
        return "is a well-known placeholder"
    if any(marker in folded for marker in _PLACEHOLDER_MARKERS):
        return "contains a placeholder"
    if len(token) < MIN_ADMIN_TOKEN_CHARS:
        return f"is shorter than {MIN_ADMIN_TOKEN_CHARS} characters"
    if len(set(token)) < _MIN_DISTINCT_CHARS:
        return "repeats too few characters to be random"
    return None
