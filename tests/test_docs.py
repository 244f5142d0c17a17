"""The README and docs/ describe the product as it is: no word about how it was built (sessions, issues,
tickets, pull requests), a README short enough to read top to bottom, and no relative link to a file that is
not there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_MAX_BYTES = 12_500

# Words about the development process. Product words that share a noun ("session cookie", "sign-in session",
# "tokens issue", "issue a token") are not matched: each pattern names the process, not the noun alone.
PROCESS_PATTERNS = [
    r"\b(this|previous|earlier|prior|later|next|last) (work |dev |development )?session\b",
    r"\bsessions? #?\d+\b",
    r"\bissues? #\s*\d+",
    r"\bissues? \d+\b",
    r"\b(the|this|that|an?) issue (asks|asked|quotes|quoted|says|said|wants|wanted|requires|required|requests|"
    r"requested|reports|reported|describes|described|mentions|mentioned)\b",
    r"\b(the|this|that) issue\b",
    r"\btickets?\b",
    r"\bfiled by\b",
    r"\bpull requests?\b",
    r"\bPR #?\d+\b",
    r"\bin this PR\b",
    r"\bhow (the|this) work was done\b",
]
PROCESS_RE = re.compile("|".join(f"(?:{p})" for p in PROCESS_PATTERNS), re.IGNORECASE)

# Inline links and images [text](target "title"), and reference definitions [name]: target.
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)


def doc_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def process_mentions(text: str) -> list[str]:
    return [m.group(0) for m in PROCESS_RE.finditer(text)]


def relative_targets(text: str) -> list[str]:
    targets = INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text)
    return [t for t in targets if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", t) and not t.startswith("#")]


@pytest.mark.parametrize("text", [
    "Written in this session.",
    "as the previous session measured",
    "An earlier session tuned it.",
    "see session 12",
    "Session #4 added the table.",
    "fixed for issue #12",
    "as issue 12 says",
    "The issue asks for a smaller README.",
    "the issue quoted the numbers",
    "This closes the ticket.",
    "Filed by the operators.",
    "See the pull request.",
    "Changed in this PR.",
    "how the work was done",
])
def test_process_words_are_caught(text: str) -> None:
    assert process_mentions(text), text


@pytest.mark.parametrize("text", [
    "A signed, HttpOnly session cookie keeps the sign-in session.",
    "fedface admin tokens issue --uses 3   # prints an enrollment token",
    "The operator can issue a token for each device.",
    "Enrollment tokens are issued through the admin API.",
    "a database session per request; the session is committed when the route returns",
    "sessions of the console expire after 12 hours",
    "No known issues with Postgres 16.",
])
def test_product_words_pass(text: str) -> None:
    assert not process_mentions(text), process_mentions(text)


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_do_not_mention_the_development_process(path: Path) -> None:
    found = [
        f"line {n}: {hit!r}"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        for hit in process_mentions(line)
    ]
    assert not found, f"{path.relative_to(ROOT)} describes how it was made, not the product: {found}"


def test_readme_is_short() -> None:
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; details belong in docs/ (at most {README_MAX_BYTES})"


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(path: Path) -> None:
    missing = [
        target
        for target in relative_targets(path.read_text(encoding="utf-8"))
        if not (path.parent / target.split("#", 1)[0]).exists()
    ]
    assert not missing, f"{path.relative_to(ROOT)} links to missing files: {missing}"


def test_link_parser_sees_links_and_skips_urls_and_anchors() -> None:
    text = ("[a](docs/a.md) ![b](docs/b.png) [c](https://example.org/x) [d](#section) [e](docs/e.md#part)\n"
            "[ref]: docs/ref.md\n")
    assert relative_targets(text) == ["docs/a.md", "docs/b.png", "docs/e.md#part", "docs/ref.md"]
