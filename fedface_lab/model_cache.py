"""Pretrained models cached by data and configuration: the same pretraining is
never run twice (benchmarks and the demo share it)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from fedface_lab.datasets import default_cache_dir
from fedface_lab.pretrain import PretrainConfig, pretrain

# Fields that change how a run goes but not what it produces.
_NOT_IN_KEY = {"out", "progress", "threads", "cache_dir", "checkpoint_dir", "resume", "device"}


def data_fingerprint(root: Path) -> str:
    """Names and sizes of every file under `root`: changes when the data does, cheap to compute."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(f"{path.relative_to(root)}\0{path.stat().st_size}\n".encode())
    return h.hexdigest()


def cache_key(cfg: PretrainConfig) -> str:
    fields = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()
              if k not in _NOT_IN_KEY and k != "data"}
    fields["data"] = data_fingerprint(Path(cfg.data))
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def cached_pretrain(cfg: PretrainConfig, models_dir: Path | None = None) -> tuple[Path, bool]:
    """The model file for `cfg` (its `out` is ignored) and whether it came from the cache."""
    target = (models_dir or default_cache_dir() / "models") / f"pretrained-{cache_key(cfg)}.safetensors"
    if target.is_file():
        return target, True
    pretrain(dataclasses.replace(cfg, out=target))
    return target, False
