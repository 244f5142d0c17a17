"""`fedface simulate`: the real coordinator on loopback and virtual devices
that run the device agent's own code path (same training, same HTTP calls),
each holding the photos of one client identity.

Devices never share photos; each keeps its own state directory (credential,
journal, private w_c). Only the public model blobs are cached in one shared
folder, which a phone would download anyway."""

from __future__ import annotations

import os
import random
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from device_agent.client import DeviceClient
from device_agent.photos.pipeline import FacePipeline
from device_agent.runner import Agent, FolderPhotos, Outcome, RoundReport
from device_agent.state import AgentState
from fedface_common.admin_client import AdminClient
from fedface_common.face.checkpoint import load_manifest
from fedface_common.face.manifest import ModelManifest
from fedface_common.face.publish import split_pretrained
from fedface_lab.attackers import ScaledUpdateClient
from fedface_lab.bench_servers import ServerProcess, backend_env, free_port
from fedface_lab.cached_pipeline import CachedDetectPipeline
from fedface_lab.datasets import crop_method_for, read_clients


@dataclass
class SimulationConfig:
    model: Path
    data_root: Path
    work_dir: Path
    algorithm: str = "fedface"
    devices: int = 50
    per_round: int = 10
    rounds: int = 5
    concurrency: int = 2
    local_epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)
    eval_every: int = 0
    seed: int = 0
    # auto: the model's own crops (fedface_lab.datasets.crop_method_for): per-photo detection and
    # alignment, cached, for dlib's network; the fixed crop of LFW's aligned photos for MobileFaceNet.
    input_mode: str = "auto"
    # Before the rounds, one enrollment round of every device (no training: each
    # sends its class embedding), so the first spreadout sees every identity.
    enrollment_round: bool = False
    # This share of the devices (chosen by the seed) send their updates times attack_scale
    # (fedface_lab/attackers.py): what the coordinator's norm bound is there to contain.
    attackers: float = 0.0
    attack_scale: float = 100.0
    # The round's quorum: a secure round never unmasks fewer inputs (distributed DP sizes the noise by it).
    min_devices: int = 1

    def round_config(self, per_round: int | None = None, local_epochs: int | None = None) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm, "target_devices": per_round or self.per_round,
            "min_devices": min(self.min_devices, per_round or self.per_round),
            "over_selection": 1.0, "deadline_s": 24 * 3600,
            "local_epochs": self.local_epochs if local_epochs is None else local_epochs,
            "batch_size": self.batch_size, "learning_rate": self.learning_rate, "optimizer": self.optimizer,
            "momentum": self.momentum, "weight_decay": self.weight_decay, "params": self.params,
        }


@dataclass
class RoundRecord:
    round: int
    round_id: int
    version: int
    participants: int
    submitted: int
    mean_loss_before: float | None
    mean_loss_after: float | None
    bytes_up_per_device: float
    seconds: float
    server_metrics: dict[str, Any]
    eval: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


Evaluator = Callable[[Path, int], dict[str, Any]]


@contextmanager
def coordinator(work_dir: Path) -> Iterator[tuple[str, str, str]]:
    """A fresh coordinator process: (url, admin token, backend)."""
    token = "ffa_" + secrets.token_urlsafe(24)
    with backend_env(work_dir, token) as (backend, env):
        port = free_port()
        env = {**env, "FEDFACE_TICK_INTERVAL_S": "0.1"}
        server = ServerProcess([sys.executable, "-m", "fedface_cli.main", "serve", "--port", str(port)], env,
                               work_dir / "coordinator.log", port)
        try:
            server.wait_ready("/readyz")
            yield f"http://127.0.0.1:{port}", token, backend
        finally:
            server.stop()


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


class Simulation:
    def __init__(self, cfg: SimulationConfig, url: str, admin: AdminClient) -> None:
        self.cfg, self.url, self.admin = cfg, url, admin
        self.agents: list[Agent] = []

    def publish_model(self) -> int:
        weights, centres = split_pretrained(self.cfg.model, self.cfg.work_dir / "published")
        version = self.admin.register_model(weights, note="pretrained", serve=True)
        if centres is not None:
            self.admin.attach_centres(int(version["id"]), centres)
        return int(version["id"])

    def enroll(self, progress: Callable[[int], None] | None = None) -> None:
        cfg = self.cfg
        chosen = choose_clients(cfg.data_root, cfg.devices, cfg.seed)
        manifest = load_manifest(cfg.model)
        pipeline = device_pipeline(manifest, cfg.input_mode)
        token = str(self.admin.issue_token(max_uses=len(chosen), note="simulation")["token"])
        shared_blobs = cfg.work_dir / "shared-blobs"
        tls = httpx.create_ssl_context()  # one for all: a context per device costs ~20 ms each to build
        hostile = set(random.Random(cfg.seed * 31 + 1).sample(range(len(chosen)), round(cfg.attackers * len(chosen))))
        for i, (name, _count) in enumerate(chosen):
            client = (ScaledUpdateClient(self.url, timeout_s=300, verify=tls, factor=cfg.attack_scale) if i in hostile
                      else DeviceClient(self.url, timeout_s=300, verify=tls))
            agent = Agent(
                client,
                AgentState(cfg.work_dir / "devices" / f"{i:04d}", shared_blobs),
                FolderPhotos(cfg.data_root / "lfw" / "lfw-deepfunneled" / name, pipeline),
                enroll_token=token, label=name, seed=cfg.seed * 100_003 + i,
            )
            agent.ensure_enrolled()
            self.agents.append(agent)
            if progress:
                progress(1)

    def run_round(self, index: int) -> RoundRecord:
        cfg = self.cfg
        rng = random.Random(cfg.seed * 7919 + index)
        chosen = rng.sample(self.agents, min(cfg.per_round, len(self.agents)))
        return self._round(index + 1, chosen, cfg.round_config())

    def run_enrollment_round(self) -> RoundRecord:
        """Round 0: every device, no local training (see SimulationConfig.enrollment_round)."""
        return self._round(0, self.agents, self.cfg.round_config(per_round=len(self.agents), local_epochs=0))

    def _round(self, number: int, chosen: list[Agent], config: dict[str, Any]) -> RoundRecord:
        cfg = self.cfg
        started = time.perf_counter()
        rnd = self.admin.start_round(config)
        secure = bool((config.get("params") or {}).get("secagg"))
        with ThreadPoolExecutor(max(1, cfg.concurrency)) as pool:
            if secure:
                reports = self._secure_reports(pool, chosen, int(rnd["id"]))
            else:
                reports = list(pool.map(lambda a: a.run_round(), chosen))
        submitted = [r for r in reports if r.status in (Outcome.SUBMITTED, Outcome.RESUBMITTED)]
        if not secure and len(submitted) < len(chosen):
            # Some devices had nothing to send (no usable photo, dropped): close with what arrived.
            self.admin.stop_round(int(rnd["id"]))
        done = self._wait_final(int(rnd["id"]))
        return RoundRecord(
            round=number, round_id=int(rnd["id"]), version=int(done.get("result_version_id") or 0),
            participants=len(chosen), submitted=len(submitted),
            mean_loss_before=_mean([float(r.metrics["loss_before"]) for r in submitted if "loss_before" in r.metrics]),
            mean_loss_after=_mean([float(r.metrics["loss_after"]) for r in submitted if "loss_after" in r.metrics]),
            bytes_up_per_device=float(np.mean([r.bytes_sent for r in submitted])) if submitted else 0.0,
            seconds=round(time.perf_counter() - started, 2), server_metrics=dict(done.get("metrics") or {}),
        )

    def _secure_reports(self, pool: ThreadPoolExecutor, chosen: list[Agent], round_id: int,
                        timeout_s: float = 3600) -> list[RoundReport]:
        """A secure round moves one stage per check-in (device_agent/secagg.py): every device checks in again
        until the round leaves its active states, as phones would on their retry delays. Each device's report
        is the one in which it trained (its metrics), with the bytes of all its stages."""
        trained: dict[int, RoundReport] = {}
        sent = [0] * len(chosen)
        end = time.monotonic() + timeout_s
        while self.admin.get_round(round_id)["state"] in ("collecting", "aggregating"):
            if time.monotonic() > end:
                raise TimeoutError(f"secure round {round_id} did not finish in {timeout_s} s")
            for i, report in enumerate(pool.map(lambda a: a.run_round(), chosen)):
                sent[i] += report.bytes_sent
                if "loss_before" in report.metrics:
                    trained[i] = report
            time.sleep(0.2)  # the pace of a fleet's retries; each pass is one check-in per device
        reports = []
        for i in range(len(chosen)):
            report = trained.get(i) or RoundReport(Outcome.DROPPED)
            report.status = Outcome.SUBMITTED if i in trained else Outcome.DROPPED
            report.bytes_sent = sent[i]
            reports.append(report)
        return reports

    def _wait_final(self, round_id: int, timeout_s: float = 3600) -> dict[str, Any]:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            rnd = self.admin.get_round(round_id)
            if rnd["state"] in ("committed", "failed", "cancelled"):
                if rnd["state"] != "committed":
                    raise RuntimeError(f"round {round_id} ended {rnd['state']}: {rnd.get('failure_reason')}")
                return dict(rnd)
            time.sleep(0.1)
        raise TimeoutError(f"round {round_id} did not finish in {timeout_s} s")

    def download(self, version: int, path: Path) -> Path:
        self.admin.download_model(version, path)
        return path


def device_pipeline(manifest: ModelManifest, input_mode: str) -> FacePipeline:
    """The simulated devices' face pipeline (see SimulationConfig.input_mode)."""
    mode = ("detect" if crop_method_for(manifest) == "detect" else "aligned") if input_mode == "auto" else input_mode
    if mode == "detect":
        return CachedDetectPipeline(manifest.input_size, manifest.alignment)
    if mode != "aligned":
        raise ValueError(f"unknown input mode {input_mode!r} (auto, detect, aligned)")
    return FacePipeline(size=manifest.input_size, mode="aligned", alignment=manifest.alignment)


def choose_clients(data_root: Path, devices: int, seed: int) -> list[tuple[str, int]]:
    """The client identities (name, photo count) a simulation with this seed gives devices to."""
    clients = read_clients(data_root / "protocol" / "clients.txt")
    return random.Random(seed).sample(clients, min(devices, len(clients)))


def run_simulation(cfg: SimulationConfig, evaluate: Evaluator | None = None,
                   on_round: Callable[[RoundRecord], None] | None = None,
                   on_enroll: Callable[[int], None] | None = None,
                   on_serving: Callable[[str, str], None] | None = None) -> dict[str, Any]:
    """Run `cfg.rounds` rounds; evaluate every `eval_every` rounds and at the end when `evaluate` is given.
    `on_serving` gets the coordinator's URL and admin token once it answers (the demo shows its console)."""
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    # Device credentials from an earlier run belong to that run's coordinator state.
    shutil.rmtree(cfg.work_dir / "devices", ignore_errors=True)
    threads = max(1, (os.cpu_count() or 1) // max(1, cfg.concurrency))
    torch.set_num_threads(threads)
    started = time.perf_counter()
    with coordinator(cfg.work_dir) as (url, token, backend), AdminClient(url, token) as admin:
        if on_serving:
            on_serving(url, token)
        sim = Simulation(cfg, url, admin)
        version = sim.publish_model()
        sim.enroll(on_enroll)
        history: list[RoundRecord] = []
        if cfg.enrollment_round:
            record = sim.run_enrollment_round()
            version = record.version
            if evaluate and cfg.rounds == 0:  # what the enrollment round alone did (e.g. embedding_stats)
                record.eval = evaluate(sim.download(version, cfg.work_dir / f"model-v{version}.safetensors"), 0)
            history.append(record)
            if on_round:
                on_round(record)
        for i in range(cfg.rounds):
            # Again each round: an evaluation in between sets torch to every core,
            # and two devices training with two threads each on two cores ran
            # rounds half again slower.
            torch.set_num_threads(threads)
            record = sim.run_round(i)
            version = record.version
            last = i + 1 == cfg.rounds
            if evaluate and (last or (cfg.eval_every and (i + 1) % cfg.eval_every == 0)):
                record.eval = evaluate(sim.download(version, cfg.work_dir / f"model-v{version}.safetensors"), i + 1)
            history.append(record)
            if on_round:
                on_round(record)
        final = sim.download(version, cfg.work_dir / "final.safetensors")
    return {
        "algorithm": cfg.algorithm, "backend": backend, "devices": len(sim.agents), "per_round": cfg.per_round,
        "rounds": cfg.rounds, "final_model": str(final), "wall_s": round(time.perf_counter() - started, 1),
        "history": [r.to_dict() for r in history],
    }
