"""Integer header values, parsed strictly.

Python's int() also takes "1_0", "+5", "05", " 5" and non-ASCII digits; were
those accepted, one value would have many spellings and a header that a proxy,
a log or a cache reads differently from us would slip through. Only plain
decimal is taken: ASCII digits, no sign, no leading zero, bounded length."""

from __future__ import annotations

import re

from coordinator.errors import InvalidHeader, PayloadTooLarge

# 18 digits: every such number fits a signed 64-bit column.
MAX_DIGITS = 18
_DECIMAL = re.compile(rf"0|[1-9][0-9]{{0,{MAX_DIGITS - 1}}}")


def strict_int(raw: str | None) -> int | None:
    """The header's non-negative integer, or None when it is absent or not plain decimal."""
    if raw is None or _DECIMAL.fullmatch(raw) is None:
        return None
    return int(raw)


def declared_length(raw: str | None, limit: int, what: str = "body") -> int | None:
    """A request's Content-Length checked before a byte is read: plain decimal and within `limit`."""
    if raw is None:
        return None
    size = strict_int(raw)
    if size is None:
        raise InvalidHeader("Content-Length must be plain decimal digits")
    if size > limit:
        raise PayloadTooLarge(f"{what} of {size} bytes exceeds the limit of {limit}", limit=limit)
    return size
