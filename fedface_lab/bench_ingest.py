"""The ingest benchmark: how fast the coordinator accepts a round's updates,
how much memory intake and aggregation take, and how that compares with a
bare ASGI app that only reads and hashes the same bodies.

One run: start the coordinator (Postgres + Redis when FEDFACE_DATABASE_URL
and FEDFACE_REDIS_URL are set, else embedded) on a fresh state, register a
P-parameter dense model, enroll N devices, start a plain-FedAvg round for all
N, check every device in, then have all N submit concurrently over C
connections. A bare echo app gets the same N bodies at the same concurrency
once before and once after; the ratio is against the mean of the two. Client
and servers share the machine, for all measurements."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
from rich.progress import Progress

from fedface_common.tensors import encode
from fedface_common.wire import HEADER_BASE_VERSION, HEADER_NUM_SAMPLES, MANIFEST_METADATA_KEY
from fedface_lab.bench_servers import MIB, RssSampler, ServerProcess, backend_env, free_port
from fedface_lab.machine import machine_info

API = "/v1"
FINAL = ("committed", "failed", "cancelled")


class BenchError(RuntimeError):
    pass


@dataclass(frozen=True)
class IngestConfig:
    devices: int
    params: int
    concurrency: int = 32
    distinct_bodies: int = 8
    wait_timeout_s: float = 900.0
    # Profile the coordinator (fedface_cli/profile_run.py), writing coordinator.prof here.
    profile_dir: Path | None = None
    server_env: tuple[tuple[str, str], ...] = ()  # extra FEDFACE_* settings for the coordinator


def model_shapes(params: int, tensors: int = 4, cols: int = 256) -> dict[str, tuple[int, ...]]:
    """A few dense [rows, cols] weights plus a bias holding the remainder, P params in all."""
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(tensors):
        rows = params // tensors // cols
        if rows:
            shapes[f"dense{i}.weight"] = (rows, cols)
    rest = params - sum(int(np.prod(s)) for s in shapes.values())
    if rest:
        shapes["head.bias"] = (rest,)
    return shapes


def model_file(shapes: dict[str, tuple[int, ...]]) -> bytes:
    rng = np.random.default_rng(0)
    weights = {n: (rng.standard_normal(s) * 0.02).astype(np.float32) for n, s in shapes.items()}
    return encode(weights, {MANIFEST_METADATA_KEY: json.dumps({"architecture": "bench-dense"})})


def delta_bodies(shapes: dict[str, tuple[int, ...]], count: int) -> list[bytes]:
    """A handful of distinct valid F32 delta files; device i sends body i % count,
    which keeps client memory at `count` bodies whatever N is."""
    return [encode({n: (np.random.default_rng(k + 1).standard_normal(s) * 1e-3).astype(np.float32)
                    for n, s in shapes.items()}) for k in range(count)]


def _advance(progress: Progress | None, description: str, total: int) -> Callable[[], None]:
    if progress is None:
        return lambda: None
    task = progress.add_task(description, total=total)
    return lambda: progress.advance(task)


async def _bounded(limit: int, jobs: Iterable[Awaitable[Any]]) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(job: Awaitable[Any]) -> Any:
        async with sem:
            return await job

    return await asyncio.gather(*(one(j) for j in jobs))


def _expect(resp: httpx.Response, *statuses: int) -> Any:
    if resp.status_code not in statuses:
        raise BenchError(f"{resp.request.method} {resp.request.url.path} -> {resp.status_code}: {resp.text[:500]}")
    return resp.json()


@dataclass
class Submitted:
    latencies: list[float]
    statuses: list[int]
    errors: list[str]
    wall_s: float
    bytes_sent: int


async def _post_all(http: httpx.AsyncClient, path: str, bodies: list[bytes], n: int, concurrency: int,
                    headers_of: Callable[[int], dict[str, str]], tick: Callable[[], None]) -> Submitted:
    """POST body i % len(bodies) for i in range(n), at most `concurrency` at a time."""
    latencies, statuses, errors = [0.0] * n, [0] * n, []

    async def one(i: int) -> None:
        start = time.perf_counter()
        try:
            resp = await http.post(path, content=bodies[i % len(bodies)], headers=headers_of(i))
            statuses[i] = resp.status_code
            if not resp.is_success:
                errors.append(f"{resp.status_code}: {resp.text[:300]}")
        except httpx.HTTPError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        latencies[i] = time.perf_counter() - start
        tick()

    started = time.perf_counter()
    await _bounded(concurrency, (one(i) for i in range(n)))
    wall = time.perf_counter() - started
    return Submitted(latencies, statuses, errors, wall, sum(len(bodies[i % len(bodies)]) for i in range(n)))


def _client(base_url: str, concurrency: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(base_url=base_url, limits=limits, timeout=httpx.Timeout(600.0), http2=False)


async def _coordinator_run(url: str, token: str, cfg: IngestConfig, model: bytes, bodies: list[bytes],
                           sampler: RssSampler, progress: Progress | None) -> dict[str, Any]:
    admin = {"Authorization": f"Bearer {token}"}
    n, c = cfg.devices, cfg.concurrency
    async with _client(url, c) as http:
        version = _expect(await http.post(f"{API}/admin/models", content=model, params={"serve": "true"},
                                          headers={**admin, "Content-Type": "application/octet-stream"}), 201)["id"]
        enroll_token = _expect(await http.post(f"{API}/admin/enrollment-tokens", headers=admin,
                                               json={"max_uses": n, "ttl_s": 7200, "note": "bench"}), 201)["token"]
        tick = _advance(progress, "enroll", n)

        async def enroll(i: int) -> str:
            body = _expect(await http.post(f"{API}/enroll", json={"token": enroll_token, "label": f"bench-{i}"}), 201)
            tick()
            return str(body["credential"])

        t0 = time.perf_counter()
        creds: list[str] = await _bounded(c, (enroll(i) for i in range(n)))
        enroll_s = time.perf_counter() - t0
        rnd = _expect(await http.post(f"{API}/admin/rounds", headers=admin, json={
            "algorithm": "fedavg-plain", "target_devices": n, "min_devices": n, "over_selection": 1.0,
            "deadline_s": 6 * 3600}), 201)
        round_id = rnd["id"]
        tick = _advance(progress, "check in", n)

        async def check_in(cred: str) -> None:
            body = _expect(await http.post(f"{API}/check-in", headers={"Authorization": f"Bearer {cred}"}), 200)
            if body["status"] != "task" or body["task"]["round_id"] != round_id:
                raise BenchError(f"check-in gave no task for round {round_id}: {body}")
            tick()

        t0 = time.perf_counter()
        await _bounded(c, (check_in(cred) for cred in creds))
        checkin_s = time.perf_counter() - t0

        def headers_of(i: int) -> dict[str, str]:
            return {"Authorization": f"Bearer {creds[i]}", "Content-Type": "application/octet-stream",
                    HEADER_NUM_SAMPLES: str(10 + i % 50), HEADER_BASE_VERSION: str(version)}

        sampler.set_phase("intake")
        sent = await _post_all(http, f"{API}/rounds/{round_id}/update", bodies, n, c, headers_of,
                               _advance(progress, "submit", n))
        sampler.set_phase("aggregation")
        if sent.errors:
            # Refused updates would leave the round waiting for its 6 h deadline: close it now.
            _expect(await http.post(f"{API}/admin/rounds/{round_id}/stop", headers=admin), 200)
        t0 = time.perf_counter()
        deadline = t0 + cfg.wait_timeout_s
        while True:
            final = _expect(await http.get(f"{API}/admin/rounds/{round_id}", headers=admin), 200)
            if final["state"] in FINAL:
                break
            if time.perf_counter() > deadline:
                raise BenchError(f"round {round_id} still {final['state']} after {cfg.wait_timeout_s}s")
            await asyncio.sleep(0.05)
        commit_wait_s = time.perf_counter() - t0
        sampler.set_phase("done")
    return {"sent": sent, "round": final, "enroll_s": enroll_s, "checkin_s": checkin_s,
            "commit_wait_s": commit_wait_s}


async def _echo_run(url: str, cfg: IngestConfig, bodies: list[bytes], progress: Progress | None,
                    label: str) -> Submitted:
    async with _client(url, cfg.concurrency) as http:
        def headers_of(i: int) -> dict[str, str]:
            return {"Content-Type": "application/octet-stream", HEADER_NUM_SAMPLES: str(10 + i % 50)}

        return await _post_all(http, "/", bodies, cfg.devices, cfg.concurrency, headers_of,
                               _advance(progress, label, cfg.devices))


@dataclass(frozen=True)
class EchoMeasurement:
    sent: Submitted
    cpu_s: float
    peak_mb: float


def _echo_measurement(env: dict[str, str], tmp: Path, cfg: IngestConfig, bodies: list[bytes],
                      progress: Progress | None, label: str) -> EchoMeasurement:
    """One pass of the N bodies through a fresh bare echo app."""
    port = free_port()
    echo = ServerProcess([sys.executable, "-m", "uvicorn", "fedface_lab.echo_app:app", "--host", "127.0.0.1",
                          "--port", str(port), "--no-access-log", "--log-level", "warning"],
                         env, tmp / "echo.log", port)
    sampler = RssSampler(echo.pid).start()
    try:
        echo.wait_ready("/")
        sampler.set_phase("intake")
        sent = asyncio.run(_echo_run(echo.url, cfg, bodies, progress, label))
        sampler.set_phase("done")
    finally:
        sampler.stop()
        echo.stop()
    if sent.errors:
        raise BenchError(f"the echo server refused requests: {sent.errors[:3]}")
    return EchoMeasurement(sent, sampler.cpu_s.get("intake", 0.0), sampler.peak_mb("intake"))


def _rates(sent: Submitted) -> dict[str, float]:
    lat_ms = np.asarray(sent.latencies) * 1000.0
    return {
        "updates_per_s": round(len(sent.latencies) / sent.wall_s, 2),
        "mb_per_s": round(sent.bytes_sent / MIB / sent.wall_s, 2),
        "p50_ms": round(float(np.percentile(lat_ms, 50)), 2),
        "p99_ms": round(float(np.percentile(lat_ms, 99)), 2),
        "max_ms": round(float(lat_ms.max()), 2),
        "wall_s": round(sent.wall_s, 3),
    }


def run_ingest(cfg: IngestConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Run both measurements and return the result record (see module docstring)."""
    load_before = round(psutil.getloadavg()[0], 2)
    if cfg.devices < 1 or cfg.params < 1 or cfg.concurrency < 1:
        raise ValueError("devices, params and concurrency must be positive")
    shapes = model_shapes(cfg.params)
    model = model_file(shapes)
    bodies = delta_bodies(shapes, max(1, min(cfg.distinct_bodies, cfg.devices)))
    token = "ffa_bench_" + secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory(prefix="fedface-bench-") as tmp, backend_env(Path(tmp), token) as (backend, env):
        env = {**env, **dict(cfg.server_env)}
        # The echo runs before and after the coordinator, and the ratio uses
        # their mean: on a shared machine a single echo run drifts by a third.
        echoes = [_echo_measurement(env, Path(tmp), cfg, bodies, progress, "echo (before)")]
        port = free_port()
        migrate_flag = "--migrate" if backend == "embedded" else "--no-migrate"
        profiler: list[str] = []
        if cfg.profile_dir is not None:
            cfg.profile_dir.mkdir(parents=True, exist_ok=True)
            profiler = ["-m", "fedface_cli.profile_run", str(cfg.profile_dir / "coordinator.prof")]
        server = ServerProcess([sys.executable, *(profiler or ["-m", "fedface_cli.main"]), "serve", "--port",
                                str(port), migrate_flag], env, Path(tmp) / "coordinator.log", port)
        sampler = RssSampler(server.pid).start()
        try:
            server.wait_ready("/readyz")
            sampler.set_phase("setup")
            run = asyncio.run(_coordinator_run(server.url, token, cfg, model, bodies, sampler, progress))
        except Exception as exc:
            raise BenchError(f"{exc}\n--- coordinator log ---\n{server.log_tail()}") from exc
        finally:
            sampler.stop()
            server.stop()

        echoes.append(_echo_measurement(env, Path(tmp), cfg, bodies, progress, "echo (after)"))

    sent, rnd = run["sent"], run["round"]
    ours = _rates(sent)
    echo_rates = [_rates(e.sent) for e in echoes]
    echo_rate = round(float(np.mean([r["updates_per_s"] for r in echo_rates])), 2)
    accepted = sum(1 for s in sent.statuses if s == 200)
    return {
        "benchmark": "ingest", "backend": backend, "devices": cfg.devices, "params": cfg.params,
        "concurrency": cfg.concurrency, "distinct_bodies": len(bodies), "body_bytes": len(bodies[0]),
        "server_env": dict(cfg.server_env),
        "accepted": accepted, "refused": cfg.devices - accepted, "errors": sent.errors[:5],
        "round_state": rnd["state"], "round_accepted": rnd["accepted"], "round_rejected": rnd["rejected"],
        "updates_per_s": ours["updates_per_s"], "mb_per_s": ours["mb_per_s"], "p50_ms": ours["p50_ms"],
        "p99_ms": ours["p99_ms"], "max_ms": ours["max_ms"], "submit_wall_s": ours["wall_s"],
        "server_peak_rss_mb": sampler.peak_mb(),
        "server_peak_rss_intake_mb": sampler.peak_mb("intake"),
        "server_peak_rss_aggregation_mb": sampler.peak_mb("aggregation"),
        "server_rss_before_intake_mb": sampler.peak_mb("setup"),
        "server_cpu_s_intake": round(sampler.cpu_s.get("intake", 0.0), 2),
        "server_cpu_s_aggregation": round(sampler.cpu_s.get("aggregation", 0.0), 2),
        "aggregate_s": rnd["metrics"].get("aggregate_s"), "commit_wait_s": round(run["commit_wait_s"], 3),
        "round_metrics": rnd["metrics"],
        "enroll_s": round(run["enroll_s"], 3), "checkin_s": round(run["checkin_s"], 3),
        "echo_updates_per_s": echo_rate,
        "echo_runs_updates_per_s": [r["updates_per_s"] for r in echo_rates],
        "echo_mb_per_s": round(float(np.mean([r["mb_per_s"] for r in echo_rates])), 2),
        "echo_p50_ms": echo_rates[-1]["p50_ms"], "echo_p99_ms": echo_rates[-1]["p99_ms"],
        "echo_peak_rss_mb": max(e.peak_mb for e in echoes),
        "server_cpu_ms_per_update": round(sampler.cpu_s.get("intake", 0.0) * 1000 / cfg.devices, 2),
        "echo_cpu_ms_per_update": round(float(np.mean([e.cpu_s for e in echoes])) * 1000 / cfg.devices, 2),
        "ratio_to_echo": round(ours["updates_per_s"] / echo_rate, 3),
        "cpu_count": os.cpu_count(), "machine": {**machine_info(), "load_avg_1m_before": load_before},
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }
