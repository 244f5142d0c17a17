"""Integer header values, parsed strictly.

Python's int() also takes "1_0", "+5", "05", " 5" and non-ASCII digits; were
those accepted, one value would have many spellings and a header that a proxy,
a log or a cache reads differently from us would slip through. Only plain
decimal is taken: ASCII digits, no sign, no leading zero, bounded length."""

from __future__ import annotations

import re

# 18 digits: every such number fits a signed 64-bit column.
MAX_DIGITS = 18
_DECIMAL = re.compile(rf"0|[1-9][0-9]{{0,{MAX_DIGITS - 1}}}")


def strict_int(raw: str | None) -> int | None:
    """The header's non-negative integer, or None when it is absent or not plain decimal."""
    if raw is None or _DECIMAL.fullmatch(raw) is None:
        return None
    return int(raw)
