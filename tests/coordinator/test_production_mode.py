"""Production mode: with a real database or Redis configured (or FEDFACE_ENVIRONMENT=production)
the coordinator refuses to start on a short or placeholder admin token, saying which setting
is wrong and never printing its value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from coordinator.settings import Settings
from tests.conftest import ADMIN_TOKEN, PG_ADMIN_URL, REDIS_URL

# Generated once with `openssl rand -hex 32`.
STRONG = "9c4e1f0b7a2d48e6b3f5a0c1d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9"

WEAK = {
    "shipped placeholder": "CHANGE_ME",
    "lower case": "changeme",
    "hyphenated": "Change-Me",
    "one letter": "x",
    "admin": "ADMIN",
    "password": "password",
    "secret": "Secret",
    "empty": "",
    "31 random characters": STRONG[:31],
    "placeholder padded to length": "CHANGE_ME-" + STRONG[:32],
    "one character repeated": "x" * 64,
    "a word repeated": "secret" * 8,
}

PRODUCTION = {
    "database": {"database_url": PG_ADMIN_URL},
    "redis": {"redis_url": REDIS_URL},
    "explicit": {"environment": "production"},
}


@pytest.mark.parametrize("mode", sorted(PRODUCTION))
@pytest.mark.parametrize("case", sorted(WEAK))
def test_production_refuses_weak_admin_tokens(case: str, mode: str, tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(data_dir=tmp_path, admin_token=WEAK[case], **PRODUCTION[mode])  # type: ignore[arg-type]
    message = str(refused.value)
    assert "FEDFACE_ADMIN_TOKEN" in message and "openssl rand -hex 32" in message


@pytest.mark.parametrize("settings", [
    {"database_url": PG_ADMIN_URL, "redis_url": REDIS_URL, "admin_token": STRONG},
    {"database_url": PG_ADMIN_URL, "admin_token": ADMIN_TOKEN},  # the tests' own token
    {"database_url": PG_ADMIN_URL},  # none set: a random one is generated into data_dir
    {"admin_token": "x"},  # the embedded default is development
    {"database_url": PG_ADMIN_URL, "environment": "development", "admin_token": "CHANGE_ME"},
], ids=["strong", "tests' token", "generated", "embedded", "explicit development"])
def test_what_production_mode_lets_through(settings: dict[str, Any], tmp_path: Path) -> None:
    Settings(data_dir=tmp_path, **settings)


def test_production_follows_the_configured_backends(tmp_path: Path) -> None:
    assert not Settings(data_dir=tmp_path).production
    assert Settings(data_dir=tmp_path, database_url=PG_ADMIN_URL).production
    assert Settings(data_dir=tmp_path, redis_url=REDIS_URL).production
    assert not Settings(data_dir=tmp_path, redis_url=REDIS_URL, environment="development").production
    assert Settings(data_dir=tmp_path, environment="production").production


def test_the_error_shows_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    db_password = "db-pw-4f0e9c1a"
    monkeypatch.setenv("FEDFACE_DATABASE_URL", f"postgresql+asyncpg://fedface:{db_password}@db:5432/fedface")
    monkeypatch.setenv("FEDFACE_ADMIN_TOKEN", "CHANGE_ME")
    with pytest.raises(ValidationError) as refused:
        Settings()
    message = str(refused.value)
    assert "FEDFACE_ADMIN_TOKEN" in message
    assert "CHANGE_ME" not in message and db_password not in message


def test_serve_refuses_to_start_with_the_shipped_placeholder(tmp_path: Path) -> None:
    db_password = "db-pw-4f0e9c1a"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDFACE_")}
    env.update(FEDFACE_DATA_DIR=str(tmp_path), FEDFACE_ADMIN_TOKEN="CHANGE_ME", FEDFACE_REDIS_URL=REDIS_URL,
               FEDFACE_DATABASE_URL=f"postgresql+asyncpg://fedface:{db_password}@127.0.0.1:5432/fedface")
    # A free port is not needed: the settings are refused before anything binds or connects.
    proc = subprocess.run([sys.executable, "-m", "fedface_cli.main", "serve", "--port", "1"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "FEDFACE_ADMIN_TOKEN" in proc.stderr and "openssl rand -hex 32" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "CHANGE_ME" not in proc.stdout + proc.stderr and db_password not in proc.stdout + proc.stderr
    assert not (tmp_path / "admin-token").exists()
