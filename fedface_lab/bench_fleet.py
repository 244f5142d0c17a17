"""The fleet benchmark: many lightweight simulated devices against R
coordinator replicas that share one Postgres, Redis prefix and blob directory.

For each replica count R: a fresh backend, R coordinator subprocesses, a
P-parameter plain-FedAvg model, N enrolled devices spread round-robin over the
replicas (as a load balancer would). Each round: the admin starts a round for
all N; every device checks in, downloads the model (If-None-Match with the
sha256 it holds) and submits a pre-generated random delta (no training). The
three steps run as phases with a barrier between them, so each endpoint's rate
is measured on its own. Close-to-commit is the time from the last acknowledged
update to the admin API reporting the round committed.

A device whose request dies with a transport error retries it on the next
replica and stays there; after every replica it tries its own once more (so
with one replica it retries once), as the agent retries. In round `kill_round`, when R >= 2, the last replica
is SIGKILLed after half the submissions have been acknowledged.

Embedded SQLite cannot be shared by several processes, so R >= 2 needs
FEDFACE_DATABASE_URL and FEDFACE_REDIS_URL; R == 1 may run embedded."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
from rich.progress import Progress

from fedface_common.wire import HEADER_BASE_VERSION, HEADER_NUM_SAMPLES
from fedface_lab.bench_ingest import FINAL, BenchError, _advance, delta_bodies, model_file, model_shapes
from fedface_lab.bench_servers import RssSampler, ServerProcess, backend_env, free_port
from fedface_lab.machine import machine_info

API = "/v1"
ENDPOINTS = ("check_in", "download", "submit")


@dataclass(frozen=True)
class FleetConfig:
    devices: int
    replicas: tuple[int, ...]
    rounds: int
    params: int
    concurrency: int = 64
    distinct_bodies: int = 4
    kill_round: int = 3  # 1-based; only when R >= 2
    round_timeout_s: float = 900.0
    checkin_timeout_s: float = 120.0  # how long a device keeps asking for its task
    server_env: tuple[tuple[str, str], ...] = ()


@dataclass
class Device:
    index: int
    credential: str
    home: int  # replica index it talks to; moves on failover
    model_sha: str | None = None  # what an If-None-Match would carry
    version: int | None = None


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {e: [] for e in ENDPOINTS})
    phase_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(ENDPOINTS, 0.0))
    errors: list[str] = field(default_factory=list)  # requests that did not succeed on any replica
    failed_over: int = 0  # requests that failed on one replica and then succeeded on another
    failed_on_killed: int = 0  # transport errors against the killed replica
    # Transport errors on a live replica, retried: a keep-alive connection the
    # server closed as idle just as the client reused it, as real devices meet too.
    retried_transport_errors: int = 0
    failed_devices: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ENDPOINTS, 0))
    checkin_waits: int = 0  # 'wait' answers before a task (e.g. a replica's stale round cache)
    not_modified: int = 0
    download_bytes: int = 0


class Fleet:
    """The replicas as the devices see them: which are up, and failover between them."""

    def __init__(self, urls: list[str], http: httpx.AsyncClient, concurrency: int, stats: Stats) -> None:
        self.urls, self.http, self.stats = urls, http, stats
        self.sem = asyncio.Semaphore(concurrency)
        self.killed: int | None = None

    async def request(self, dev: Device | None, method: str, path: str, endpoint: str | None = None,
                      **kwargs: Any) -> httpx.Response:
        """Send to the device's replica; on a transport error try the others in turn (a device retries).

        The latency kept for `endpoint` is the answered attempt's, timed after the client's own
        concurrency limit admitted it: queueing in the benchmark is not the server's latency."""
        first = dev.home if dev is not None else 0
        # Every replica once, then the first again: with one replica a device still retries once.
        order = [(first + k) % len(self.urls) for k in range(len(self.urls))] + [first]
        last: Exception | None = None
        for attempt, replica in enumerate(order):
            try:
                async with self.sem:
                    start = time.perf_counter()
                    resp = await self.http.request(method, self.urls[replica] + path, **kwargs)
                    elapsed = time.perf_counter() - start
            except httpx.TransportError as exc:
                last = exc
                if replica == self.killed:
                    self.stats.failed_on_killed += 1
                else:
                    self.stats.retried_transport_errors += 1
                continue
            if attempt and dev is not None and replica != first:
                self.stats.failed_over += 1
                dev.home = replica  # stick with the replica that answered
            if endpoint is not None and resp.is_success:
                self.stats.latencies[endpoint].append(elapsed)
            return resp
        raise BenchError(f"{method} {path} failed on every replica: {type(last).__name__}: {last}")


def _expect(resp: httpx.Response, *statuses: int) -> Any:
    if resp.status_code not in statuses:
        raise BenchError(f"{resp.request.method} {resp.request.url.path} -> {resp.status_code}: {resp.text[:300]}")
    return resp.json() if resp.content else None


async def _counted(stats: Stats, endpoint: str, job: Awaitable[None]) -> None:
    try:
        await job
    except (BenchError, httpx.HTTPError) as exc:
        stats.errors.append(f"{endpoint}: {exc}"[:400])
        stats.failed_devices[endpoint] += 1


async def _phase(stats: Stats, endpoint: str, jobs: list[Awaitable[None]], tick: Callable[[], None]) -> None:
    async def one(job: Awaitable[None]) -> None:
        await _counted(stats, endpoint, job)
        tick()

    start = time.perf_counter()
    await asyncio.gather(*(one(j) for j in jobs))  # the fleet's semaphore bounds the requests in flight
    stats.phase_s[endpoint] += time.perf_counter() - start


async def _check_in(fleet: Fleet, dev: Device, round_id: int, timeout_s: float) -> None:
    auth = {"Authorization": f"Bearer {dev.credential}"}
    deadline = time.monotonic() + timeout_s
    while True:
        body = _expect(await fleet.request(dev, "POST", f"{API}/check-in", "check_in", headers=auth), 200)
        if body["status"] == "task" and body["task"]["round_id"] == round_id:
            dev.version = int(body["task"]["model_version"])
            return
        if time.monotonic() > deadline:
            raise BenchError(f"device {dev.index} got no task for round {round_id}: {body}")
        fleet.stats.checkin_waits += 1
        # Not the advised retry_after_s (up to idle_retry_s): the round is known to be open.
        await asyncio.sleep(0.2)


async def _download(fleet: Fleet, dev: Device) -> None:
    headers = {"Authorization": f"Bearer {dev.credential}"}
    if dev.model_sha is not None:
        headers["If-None-Match"] = f'"{dev.model_sha}"'
    resp = await fleet.request(dev, "GET", f"{API}/models/{dev.version}/weights", "download",
                               headers=headers)
    if resp.status_code == 304:
        fleet.stats.not_modified += 1
    elif resp.status_code == 200:
        fleet.stats.download_bytes += len(resp.content)
    else:
        _expect(resp, 200, 304)
    dev.model_sha = resp.headers.get("etag", "").strip('"') or None


async def _submit(fleet: Fleet, dev: Device, round_id: int, body: bytes, acked: Callable[[], None]) -> None:
    headers = {"Authorization": f"Bearer {dev.credential}", "Content-Type": "application/octet-stream",
               HEADER_NUM_SAMPLES: str(10 + dev.index % 50), HEADER_BASE_VERSION: str(dev.version)}
    # A retry of an update whose acknowledgement was lost is answered as the original (same body, same count).
    _expect(await fleet.request(dev, "POST", f"{API}/rounds/{round_id}/update", "submit",
                                        content=body, headers=headers), 200)
    acked()


def _kill(server: ServerProcess) -> None:
    server.proc.kill()  # SIGKILL: no graceful shutdown, in-flight requests die with the process
    server.proc.wait(timeout=10)


async def _one_round(fleet: Fleet, devices: list[Device], k: int, cfg: FleetConfig, admin: dict[str, str],
                     bodies: list[bytes], kill: ServerProcess | None, progress: Progress | None) -> dict[str, Any]:
    """Round k: start it, run the three phases, wait for the commit; SIGKILL `kill` after half the acks."""
    n, r, stats = cfg.devices, len(fleet.urls), fleet.stats
    rnd = _expect(await fleet.request(None, "POST", f"{API}/admin/rounds", headers=admin, json={
        "algorithm": "fedavg-plain", "target_devices": n, "min_devices": max(1, n // 2),
        "over_selection": 1.0, "deadline_s": 3600}), 201)
    round_id = int(rnd["id"])
    await _phase(stats, "check_in", [_check_in(fleet, d, round_id, cfg.checkin_timeout_s) for d in devices],
                 _advance(progress, f"R={r} round {k} check in", n))
    await _phase(stats, "download", [_download(fleet, d) for d in devices],
                 _advance(progress, f"R={r} round {k} download", n))
    acks = {"n": 0, "last": 0.0}
    advance = _advance(progress, f"R={r} round {k} submit" + (" (kill)" if kill else ""), n)

    def acked() -> None:
        acks["n"] += 1
        acks["last"] = time.perf_counter()
        advance()
        if kill is not None and fleet.killed is None and acks["n"] >= n // 2:
            fleet.killed = r - 1
            _kill(kill)

    await _phase(stats, "submit", [_submit(fleet, d, round_id, bodies[d.index % len(bodies)], acked)
                                   for d in devices], lambda: None)
    if acks["n"] < n:
        # Devices that failed leave the round short of its target: close it now (the
        # quorum decides) instead of waiting out its deadline.
        _expect(await fleet.request(None, "POST", f"{API}/admin/rounds/{round_id}/stop", headers=admin), 200, 409)
    last_ack = acks["last"] or time.perf_counter()
    deadline = time.perf_counter() + cfg.round_timeout_s
    while True:
        final = _expect(await fleet.request(None, "GET", f"{API}/admin/rounds/{round_id}", headers=admin), 200)
        if final["state"] in FINAL:
            break
        if time.perf_counter() > deadline:
            raise BenchError(f"round {round_id} still {final['state']} after {cfg.round_timeout_s}s")
        await asyncio.sleep(0.05)
    return {"round": k, "id": round_id, "state": final["state"], "accepted": final["accepted"],
            "rejected": final["rejected"], "acked": acks["n"], "killed_replica": kill is not None,
            "close_to_commit_s": round(time.perf_counter() - last_ack, 3)}


async def _fleet_run(servers: list[ServerProcess], token: str, cfg: FleetConfig, model: bytes, bodies: list[bytes],
                     progress: Progress | None) -> dict[str, Any]:
    stats = Stats()
    n, r = cfg.devices, len(servers)
    admin = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=cfg.concurrency * r, max_keepalive_connections=cfg.concurrency * r)
    rounds_out: list[dict[str, Any]] = []
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(600.0)) as http:
        fleet = Fleet([s.url for s in servers], http, cfg.concurrency, stats)
        _expect(await fleet.request(None, "POST", f"{API}/admin/models", content=model, params={"serve": "true"},
                                    headers={**admin, "Content-Type": "application/octet-stream"}), 201)
        enroll_token = _expect(await fleet.request(None, "POST", f"{API}/admin/enrollment-tokens", headers=admin,
                                                   json={"max_uses": n, "ttl_s": 7200, "note": "fleet"}), 201)["token"]
        tick = _advance(progress, f"R={r} enroll", n)

        async def enroll(i: int) -> Device:
            dev = Device(i, "", home=i % r)
            body = _expect(await fleet.request(dev, "POST", f"{API}/enroll",
                                               json={"token": enroll_token, "label": f"fleet-{i}"}), 201)
            dev.credential = str(body["credential"])
            tick()
            return dev

        t0 = time.perf_counter()
        devices = list(await asyncio.gather(*(enroll(i) for i in range(n))))
        enroll_s = time.perf_counter() - t0

        for k in range(1, cfg.rounds + 1):
            kill = servers[-1] if k == cfg.kill_round and r >= 2 else None
            rounds_out.append(await _one_round(fleet, devices, k, cfg, admin, bodies, kill, progress))
    return {"stats": stats, "rounds": rounds_out, "enroll_s": enroll_s, "killed": fleet.killed}


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(np.asarray(values) * 1000.0, q)), 2) if values else None


def _summary(r: int, cfg: FleetConfig, backend: str, run: dict[str, Any], samplers: list[RssSampler],
             wall_s: float) -> dict[str, Any]:
    stats: Stats = run["stats"]
    # Device operations done per second of the phase (a check-in that had to ask twice counts once).
    done = {e: cfg.devices * cfg.rounds - stats.failed_devices[e] for e in ENDPOINTS}
    rate = {e: round(done[e] / stats.phase_s[e], 2) if stats.phase_s[e] else None for e in ENDPOINTS}
    return {
        "replicas": r, "backend": backend,
        "checkins_per_s": rate["check_in"], "downloads_per_s": rate["download"], "submissions_per_s": rate["submit"],
        "latency_ms": {e: {"p50": _pct(stats.latencies[e], 50), "p99": _pct(stats.latencies[e], 99),
                           "count": len(stats.latencies[e])} for e in ENDPOINTS},
        "phase_wall_s": {e: round(v, 3) for e, v in stats.phase_s.items()},
        "errors": len(stats.errors), "errors_by_endpoint": stats.failed_devices, "error_samples": stats.errors[:5],
        "failed_over_requests": stats.failed_over, "failed_on_killed_replica": stats.failed_on_killed,
        "retried_transport_errors": stats.retried_transport_errors,
        "killed_replica": run["killed"],
        "checkin_waits": stats.checkin_waits, "downloads_not_modified": stats.not_modified,
        "download_mb": round(stats.download_bytes / 2**20, 2),
        "close_to_commit_s": [x["close_to_commit_s"] for x in run["rounds"]],
        "rounds_committed": sum(1 for x in run["rounds"] if x["state"] == "committed"),
        "rounds": run["rounds"],
        "peak_rss_mb": [s.peak_mb() for s in samplers],
        "enroll_s": round(run["enroll_s"], 3), "wall_s": round(wall_s, 3),
    }


def _run_one(r: int, cfg: FleetConfig, model: bytes, bodies: list[bytes], progress: Progress | None) -> dict[str, Any]:
    token = "ffa_bench_" + secrets.token_urlsafe(16)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedface-fleet-") as tmp, backend_env(Path(tmp), token) as (backend, env):
        if backend == "embedded" and r > 1:
            raise BenchError("embedded SQLite cannot be shared by several coordinator processes: "
                             "set FEDFACE_DATABASE_URL and FEDFACE_REDIS_URL for --replicas above 1")
        migrate_flag = "--migrate" if backend == "embedded" else "--no-migrate"
        servers: list[ServerProcess] = []
        samplers: list[RssSampler] = []
        try:
            for i in range(r):
                port = free_port()
                # One blob directory for all: a replica must be able to serve what another stored.
                renv = {**env, "FEDFACE_REPLICA_ID": f"fleet-r{i}", "FEDFACE_DATA_DIR": str(Path(tmp) / f"r{i}"),
                        "FEDFACE_BLOB_DIR": str(Path(tmp) / "blobs"), **dict(cfg.server_env)}
                servers.append(ServerProcess([sys.executable, "-m", "fedface_cli.main", "serve", "--port", str(port),
                                              migrate_flag], renv, Path(tmp) / f"r{i}.log", port))
                samplers.append(RssSampler(servers[-1].pid, interval_s=0.1).start())
            for s in servers:
                s.wait_ready("/readyz")
            run = asyncio.run(_fleet_run(servers, token, cfg, model, bodies, progress))
        except Exception as exc:
            logs = "\n".join(f"--- replica {i} log ---\n{s.log_tail(2000)}" for i, s in enumerate(servers))
            raise BenchError(f"{exc}\n{logs}") from exc
        finally:
            for sampler in samplers:
                sampler.stop()
            for s in servers:
                s.stop()
    return _summary(r, cfg, backend, run, samplers, time.perf_counter() - started)


def run_fleet(cfg: FleetConfig, progress: Progress | None = None) -> dict[str, Any]:
    """One record per replica count (see module docstring)."""
    if cfg.devices < 2 or cfg.params < 1 or cfg.concurrency < 1 or cfg.rounds < 1:
        raise ValueError("devices must be >= 2; params, concurrency and rounds positive")
    if not cfg.replicas or min(cfg.replicas) < 1:
        raise ValueError("replica counts must be positive")
    shared = bool(os.environ.get("FEDFACE_DATABASE_URL") and os.environ.get("FEDFACE_REDIS_URL"))
    if max(cfg.replicas) > 1 and not shared:
        raise BenchError("embedded SQLite cannot be shared by several coordinator processes: "
                         "set FEDFACE_DATABASE_URL and FEDFACE_REDIS_URL for --replicas above 1")
    load_before = round(psutil.getloadavg()[0], 2)
    shapes = model_shapes(cfg.params)
    model = model_file(shapes)
    bodies = delta_bodies(shapes, max(1, min(cfg.distinct_bodies, cfg.devices)))
    results = [_run_one(r, cfg, model, bodies, progress) for r in cfg.replicas]
    return {
        "benchmark": "fleet", "devices": cfg.devices, "params": cfg.params, "rounds": cfg.rounds,
        "concurrency": cfg.concurrency, "kill_round": cfg.kill_round, "body_bytes": len(bodies[0]),
        "model_bytes": len(model), "server_env": dict(cfg.server_env),
        "rate_basis": "device operations completed / wall time of that endpoint's phases (check-in, download "
                      "and submit run one after another in each round, at most `concurrency` requests in flight)",
        "latency_basis": "per answered HTTP request, from when the client's concurrency limit admits it; the "
                         "client runs on the same machine as the replicas",
        "results": results,
        "machine": {**machine_info(), "load_avg_1m_before": load_before},
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }
