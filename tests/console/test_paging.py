"""The device list pages through a large fleet instead of loading it: a deep page costs what the first does."""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest
from sqlalchemy import event

from coordinator.console.devices import PAGE
from coordinator.settings import Settings
from tests.support.live import LiveServer

FLEET = 10_000
ROW = re.compile(r'<tr id="device-[0-9a-f-]+">\s*<td><code>[0-9a-f-]+</code></td>\s*<td>(bulk-\d+)</td>')


@pytest.fixture
def server(settings: Settings) -> Iterator[LiveServer]:
    """Without the round driver and its background queries, so that every statement seen is the page's."""
    srv = LiveServer(settings, run_driver=False)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def bulk_fleet(settings: Settings) -> None:
    """FLEET devices in one statement, the newest being bulk-1 (enrolled 1 s ago), the oldest bulk-10000."""
    assert settings.database_url
    with psycopg.connect(settings.database_url) as conn:
        conn.execute(
            "INSERT INTO devices (id, credential_hash, label, created_at, last_seen_at) "
            "SELECT gen_random_uuid(), md5(g::text) || md5(g::text), 'bulk-' || g, "
            "now() - make_interval(secs => g), CASE WHEN g %% 2 = 0 THEN now() END "
            "FROM generate_series(1, %s) AS g", (FLEET,))


@pytest.fixture
def statements(server: LiveServer) -> Iterator[list[str]]:
    """Every SQL statement the live coordinator sends while the test watches."""
    seen: list[str] = []
    engine = server.app.state.ctx.engine.sync_engine

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


def _cursor_at(settings: Settings, position: int) -> str:
    """The page cursor a reader who had paged down to device number POSITION would hold."""
    assert settings.database_url
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute("SELECT created_at, id FROM devices ORDER BY created_at DESC, id DESC OFFSET %s LIMIT 1",
                           (position - 1,)).fetchone()
    assert row is not None
    return f"{row[0].isoformat()}~{row[1].hex}"


def _timed(console: httpx.Client, params: dict[str, str]) -> float:
    started = time.perf_counter()
    assert console.get("/console/devices", params=params).status_code == 200
    return time.perf_counter() - started


def test_a_deep_page_of_10000_devices_costs_what_the_first_does(
        bulk_fleet: None, settings: Settings, console: httpx.Client, statements: list[str]) -> None:
    statements.clear()
    first = console.get("/console/devices")
    first_sql = list(statements)
    assert first.status_code == 200
    assert ROW.findall(first.text) == [f"bulk-{i}" for i in range(1, PAGE + 1)]
    assert "10,000 enrolled, 5,000 active in the last day" in first.text

    deep_cursor = _cursor_at(settings, 7_500)
    statements.clear()
    deep = console.get("/console/devices", params={"after": deep_cursor})
    deep_sql = list(statements)
    assert deep.status_code == 200
    assert ROW.findall(deep.text) == [f"bulk-{i}" for i in range(7_501, 7_501 + PAGE)]
    # Its own next link continues exactly where it ends.
    assert f'after={_cursor_at(settings, 7_500 + PAGE)}'.replace(":", "%3A").replace("+", "%2B") in deep.text

    # The same statements, none of which reads the fleet into the process: the page query is a LIMIT
    # of one more than a page, with no OFFSET, and the rounds-joined counts ask for the page's ids only.
    assert len(deep_sql) == len(first_sql)
    page_queries = [s for s in deep_sql if s.lstrip().upper().startswith("SELECT DEVICES.")]
    assert len(page_queries) == 1 and "LIMIT" in page_queries[0] and "OFFSET" not in page_queries[0]
    assert not any("OFFSET" in s for s in deep_sql)

    # Timing as a ratio of the two pages on the same machine, never as a threshold.
    rounds = 7
    t_first = statistics.median(_timed(console, {}) for _ in range(rounds))
    t_deep = statistics.median(_timed(console, {"after": deep_cursor}) for _ in range(rounds))
    assert t_deep < 3 * t_first, (t_first, t_deep)


def test_search_pages_too(bulk_fleet: None, console: httpx.Client) -> None:
    found = console.get("/console/devices", params={"q": "bulk-999"})
    labels = ROW.findall(found.text)
    assert "bulk-999" in labels and all(label.startswith("bulk-999") for label in labels)
    assert console.get("/console/devices", params={"after": "not-a-cursor"}).status_code == 400
    assert console.get("/console/devices", params={"q": "100%"}).text.count('<tr id="device-') == 0
