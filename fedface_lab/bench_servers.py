"""Server processes for benchmarks: start/stop a uvicorn subprocess, wait for
it with a bounded poll, sample its memory by phase, and give it a fresh
Postgres database and Redis key prefix (or an embedded temp dir)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A server subprocess whose output goes to a log file (shown when it fails)."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], log: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        with log.open("ab") as log_file:
            self.proc = subprocess.Popen(list(argv), env=dict(env), stdout=log_file, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_ready(self, path: str, timeout_s: float = 60.0, method: str = "GET") -> None:
        """Poll `path` until it answers 2xx; fail early if the process died."""
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    if client.request(method, path).is_success:
                        return
                except httpx.TransportError:
                    pass  # not listening yet
                time.sleep(0.05)
        raise TimeoutError(f"{self.url}{path} not ready after {timeout_s}s:\n{self.log_tail()}")

    def stop(self) -> None:
        # SIGINT, not SIGTERM: uvicorn shuts down gracefully on both and then re-raises
        # the signal; only SIGINT's KeyboardInterrupt lets a cProfile wrapper write its file.
        for sig, wait_s in ((signal.SIGINT, 30.0), (signal.SIGKILL, 10.0)):
            if self.proc.poll() is not None:
                return
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                continue


@dataclass
class RssSampler:
    """Samples a process tree's RSS and CPU time in a thread; peaks are kept per phase."""

    pid: int
    interval_s: float = 0.02
    phase: str = "startup"
    peaks: dict[str, int] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _sample(self) -> tuple[int, float]:
        root = psutil.Process(self.pid)
        rss, cpu = 0, 0.0
        for p in [root, *root.children(recursive=True)]:
            try:
                rss += p.memory_info().rss
                t = p.cpu_times()
                cpu += t.user + t.system
            except psutil.NoSuchProcess:
                continue
        return rss, cpu

    def _run(self) -> None:
        _, last_cpu = self._sample()
        while not self._stop.is_set():
            try:
                rss, cpu = self._sample()
            except psutil.NoSuchProcess:
                return
            phase = self.phase
            self.peaks[phase] = max(self.peaks.get(phase, 0), rss)
            self.cpu_s[phase] = self.cpu_s.get(phase, 0.0) + (cpu - last_cpu)
            last_cpu = cpu
            self._stop.wait(self.interval_s)

    def start(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")
        self._thread.start()
        return self

    def set_phase(self, phase: str) -> None:
        self.phase = phase

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def peak_mb(self, *phases: str) -> float:
        values = [self.peaks[p] for p in (phases or tuple(self.peaks)) if p in self.peaks]
        return round(max(values, default=0) / MIB, 1)


def server_env(**overrides: str) -> dict[str, str]:
    """The caller's environment without FEDFACE_* settings, plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDFACE_")}
    env.update(overrides)
    return env


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@contextmanager
def backend_env(workdir: Path, admin_token: str) -> Iterator[tuple[str, dict[str, str]]]:
    """(backend name, coordinator environment) on a fresh state.

    With FEDFACE_DATABASE_URL and FEDFACE_REDIS_URL set: a new database
    fedface_bench_<random> (migrated, dropped afterwards) and a new Redis key
    prefix (deleted afterwards). Otherwise embedded SQLite under `workdir`."""
    db_url, redis_url = os.environ.get("FEDFACE_DATABASE_URL"), os.environ.get("FEDFACE_REDIS_URL")
    base = {"FEDFACE_ADMIN_TOKEN": admin_token, "FEDFACE_DATA_DIR": str(workdir / "data"),
            "FEDFACE_LOG_LEVEL": "WARNING"}
    if not (db_url and redis_url):
        # A run interrupted earlier (a round left open) must not leak into this one.
        shutil.rmtree(workdir / "data", ignore_errors=True)
        yield "embedded", server_env(**base)
        return
    import psycopg
    import redis

    from storage.db import to_sync_url

    tag = secrets.token_hex(4)
    name, prefix = f"fedface_bench_{tag}", f"fedface_bench_{tag}:"
    admin_url = to_sync_url(_with_database(db_url, "postgres")).replace("+psycopg", "")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    env = server_env(**base, FEDFACE_DATABASE_URL=_with_database(db_url, name), FEDFACE_REDIS_URL=redis_url,
                     FEDFACE_REDIS_PREFIX=prefix)
    try:
        done = subprocess.run([sys.executable, "-m", "fedface_cli.main", "migrate"], env=env, capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise RuntimeError(f"fedface migrate failed:\n{done.stderr[-4000:]}")
        yield "postgres+redis", env
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()
