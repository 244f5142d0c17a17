"""Face data lives outside the repository; tests that need it skip without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def data_root() -> Path:
    return Path(os.environ.get("FEDFACE_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data() -> Path:
    root = data_root()
    if not (root / "protocol").is_dir():
        pytest.skip(f"face data not found at {root} (set FEDFACE_DATA to the shared data folder)")
    return root
