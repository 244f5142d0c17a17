"""Resumable training checkpoints without pickle.

Each epoch writes `epoch-NNNN.safetensors` (model, head, optimizer tensors,
RNG states) and then, atomically, `latest.json` (epoch, history, optimizer
hyper-parameters, scalar RNG state, and a fingerprint of the config). The JSON
is the commit point: a run killed mid-write resumes from the previous epoch."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from torch import nn

LATEST = "latest.json"


@dataclass
class TrainState:
    epoch: int
    history: list[dict[str, float]]
    identities: list[str]


def exists(directory: Path) -> bool:
    return (directory / LATEST).exists()


def _prefixed(prefix: str, module: nn.Module) -> dict[str, np.ndarray]:
    return {prefix + k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def save(
    directory: Path,
    model: nn.Module,
    head: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    history: list[dict[str, float]],
    fingerprint: dict[str, str],
    identities: list[str],
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    arrays = _prefixed("model.", model) | _prefixed("head.", head)
    opt = optimizer.state_dict()
    scalars: dict[str, Any] = {}
    for idx, entry in opt["state"].items():
        for key, val in entry.items():
            if torch.is_tensor(val):
                arrays[f"optim.{idx}.{key}"] = val.detach().cpu().numpy()
            else:
                scalars[f"{idx}.{key}"] = val
    arrays["rng.torch"] = torch.get_rng_state().numpy()
    if torch.cuda.is_available():
        arrays["rng.cuda"] = torch.cuda.get_rng_state().numpy()
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)
    arrays["rng.numpy"] = np.asarray(np_state[1], dtype=np.uint32)
    name = f"epoch-{epoch:04d}.safetensors"
    tmp = directory / (name + ".tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp), metadata={"epoch": str(epoch)})
    tmp.replace(directory / name)
    py_version, py_internal, py_gauss = random.getstate()
    meta = {
        "epoch": epoch,
        "tensors": name,
        "history": history,
        "fingerprint": fingerprint,
        "identities": identities,
        "param_groups": opt["param_groups"],
        "optim_scalars": scalars,
        "numpy_rng": [int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python_rng": [py_version, list(py_internal), py_gauss],
    }
    tmp_json = directory / (LATEST + ".tmp")
    tmp_json.write_text(json.dumps(meta))
    tmp_json.replace(directory / LATEST)
    for old in directory.glob("epoch-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)
    return directory / name


def load(
    directory: Path,
    model: nn.Module,
    head: nn.Module,
    optimizer: torch.optim.Optimizer,
    fingerprint: dict[str, str],
) -> TrainState:
    """Restore everything in place; refuses a checkpoint of a different config."""
    meta = json.loads((directory / LATEST).read_text())
    if meta["fingerprint"] != fingerprint:
        raise ValueError(
            f"checkpoint in {directory} is for another configuration ({meta['fingerprint']} != {fingerprint}); "
            "use another --checkpoint-dir or --no-resume"
        )
    arrays = load_file(str(directory / meta["tensors"]))

    def sub(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith(prefix)}

    model.load_state_dict(sub("model."))
    head.load_state_dict(sub("head."))
    state: dict[int, dict[str, Any]] = {}
    for key, t in sub("optim.").items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = t
    for key, val in meta["optim_scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = val
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(torch.from_numpy(arrays["rng.torch"]))
    if "rng.cuda" in arrays and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.from_numpy(arrays["rng.cuda"]))
    pos, has_gauss, gauss = meta["numpy_rng"]
    np.random.set_state(("MT19937", arrays["rng.numpy"], int(pos), int(has_gauss), float(gauss)))
    version, internal, py_gauss = meta["python_rng"]
    random.setstate((version, tuple(internal), py_gauss))
    return TrainState(int(meta["epoch"]), list(meta["history"]), list(meta["identities"]))
