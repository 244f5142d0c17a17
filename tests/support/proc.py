"""The coordinator as a separate OS process (`fedface serve`), for tests that kill it or that drive it
from the command line. The process itself is the benchmarks' ServerProcess, so that the tests and the
benches start, wait for and stop a coordinator the same way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from fedface_lab.bench_servers import ServerProcess, server_env
from tests.support.live import free_port


class CoordinatorProcess:
    """`fedface serve` on a free loopback port. `env` is laid over `base_env` (the test process's
    environment unless given); it may still be changed between construction and start()."""

    def __init__(self, env: Mapping[str, str], log_path: Path, port: int | None = None,
                 base_env: Mapping[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**(os.environ if base_env is None else base_env), **env}
        self.log_path = log_path
        self.server: ServerProcess | None = None

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.server.proc if self.server is not None else None

    def start(self, timeout: float = 60) -> CoordinatorProcess:
        """Start it and wait for /readyz; fails at once, with the log's tail, if the process exits."""
        self.server = ServerProcess([sys.executable, "-m", "fedface_cli.main", "serve", "--port", str(self.port)],
                                    self.env, self.log_path, self.port)
        self.server.wait_ready("/readyz", timeout_s=timeout)
        return self

    def log_tail(self, chars: int = 4000) -> str:
        return self.server.log_tail(chars) if self.server is not None else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks run, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        """A graceful shutdown, then SIGKILL if it does not come."""
        if self.server is not None:
            self.server.stop()


@contextmanager
def embedded_coordinator(data_dir: Path, admin_token: str, **env: str) -> Iterator[CoordinatorProcess]:
    """A started coordinator in embedded mode (SQLite and the in-process Redis stand-in under `data_dir`,
    so neither Postgres nor Redis is needed), whatever FEDFACE_* settings the test process has; its log
    is data_dir/server.log. Stopped on exit."""
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = {"FEDFACE_ADMIN_TOKEN": admin_token, "FEDFACE_DATA_DIR": str(data_dir),
                "FEDFACE_TICK_INTERVAL_S": "0.1", "FEDFACE_LOG_LEVEL": "WARNING", **env}
    proc = CoordinatorProcess(settings, data_dir / "server.log", base_env=server_env())
    try:
        yield proc.start()
    finally:
        proc.stop()
