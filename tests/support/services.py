"""A Postgres cluster and a Redis server of the test's own, on their own ports,
that a test may stop and start again. The shared services on 5432 and 6379
are never touched: stopping them would break every other test running."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psycopg
import redis

from tests.support.live import free_port, wait_until

PG_BIN = Path(os.environ.get("FEDFACE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
# initdb and postgres refuse to run as root; as root, the cluster runs as this user.
PG_USER = "postgres"


def postgres_missing() -> str | None:
    """Why a private cluster cannot be made here, or None when it can."""
    if not (PG_BIN / "initdb").is_file() or not (PG_BIN / "pg_ctl").is_file():
        return f"no Postgres binaries under {PG_BIN} (set FEDFACE_TEST_PG_BIN)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            return f"running as root and there is no {PG_USER!r} user to run initdb as"
        if shutil.which("runuser") is None:
            return "running as root without runuser to drop privileges for initdb"
    return None


def redis_missing() -> str | None:
    return None if shutil.which("redis-server") else "redis-server is not on PATH"


class PostgresCluster:
    """initdb'd into a temp dir (owned by the user postgres runs as), TCP on
    127.0.0.1 only, no Unix socket, fsync off: a test's data need not survive
    a power cut, and it starts and stops in well under a second."""

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="fedface-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.url = f"postgresql://{PG_USER}@127.0.0.1:{self.port}/postgres"
        if os.geteuid() == 0:
            entry = pwd.getpwnam(PG_USER)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)

    def _run(self, *args: str) -> None:
        cmd = [str(PG_BIN / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", PG_USER, "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)

    def init(self) -> PostgresCluster:
        self._run("initdb", "-D", str(self.data), "-U", PG_USER, "--auth=trust", "--no-sync", "-E", "UTF8")
        return self

    def start(self) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "-t", "60", "start")
        wait_until(self.accepts, timeout=30, interval=0.05, what="private Postgres accepting connections")

    def stop(self, mode: str = "fast") -> None:
        """fast: the server ends every session ('terminating connection due to
        administrator command') and shuts down; immediate: as after a crash."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def accepts(self) -> bool:
        try:
            with psycopg.connect(self.url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with suppress(subprocess.CalledProcessError):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


class RedisServer:
    """redis-server on its own port with persistence off: a restart comes back
    empty, as a Redis without persistence does after a crash."""

    def __init__(self, work_dir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.work_dir = work_dir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        log = (self.work_dir / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.work_dir)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        wait_until(self.accepts, timeout=30, interval=0.05, what="private Redis accepting connections")

    def stop(self) -> None:
        """SIGKILL: every client's connection breaks at once, as when the host dies."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

    def accepts(self) -> bool:
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        except redis.exceptions.ConnectionError:
            return False
        finally:
            client.close()


@contextmanager
def postgres_cluster() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster().init()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@contextmanager
def redis_server(work_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(work_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
