"""Free text that crosses the API: control characters and lone surrogates are refused.

Postgres stores no NUL in text or jsonb, a lone surrogate has no UTF-8 encoding
(hashing or storing it fails), and the other control characters only forge log
lines and console output. Refusing them in the schema types keeps every request
model, and whatever a service later does with its strings, clear of all three."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator

# C0 controls, DEL, C1 controls and the surrogate range (which only a JSON
# escape such as "\ud800" can produce).
_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# Documents (a model manifest's licence text) keep their line breaks and tabs; the rest is refused.
_FORBIDDEN_IN_DOCUMENTS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def control_character(value: str, multiline: bool = False) -> str | None:
    """Where the first forbidden character of `value` is (e.g. "U+0000 at position 3"), or None.

    `multiline` lets tab, line feed and carriage return through (text that is a document)."""
    found = (_FORBIDDEN_IN_DOCUMENTS if multiline else _FORBIDDEN).search(value)
    if found is None:
        return None
    return f"U+{ord(found.group()):04X} at position {found.start()}"


def control_character_in_tree(value: Any, multiline: bool = False) -> str | None:
    """The first forbidden character in any key or string of a JSON value, with its path.

    Iterative, so a deeply nested value cannot exhaust the interpreter's stack."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, str):
            found = control_character(node, multiline)
            if found is not None:
                return f"{path or 'the value'}: {found}"
        elif isinstance(node, dict):
            for key, child in node.items():
                text = str(key)
                found = control_character(text)
                if found is not None:
                    return f"a key of {path or 'the object'}: {found}"
                stack.append((f"{path}.{text}" if path else text, child))
        elif isinstance(node, list):
            stack.extend((f"{path}[{i}]", child) for i, child in enumerate(node))
    return None


def _printable(value: str) -> str:
    found = control_character(value)
    if found is not None:
        raise ValueError(f"control characters are not allowed (found {found})")
    return value


def _printable_tree(value: dict[str, Any]) -> dict[str, Any]:
    found = control_character_in_tree(value)
    if found is not None:
        raise ValueError(f"control characters are not allowed ({found})")
    return value


# Every free-text string a request carries.
PlainText = Annotated[str, AfterValidator(_printable)]
# A free-form JSON object (algorithm parameters): the same rule for every key and string inside.
PlainJsonObject = Annotated[dict[str, Any], AfterValidator(_printable_tree)]
