"""Federated re-estimation of the embedding BatchNorm's statistics.

The pretrained model's embedding BN was fitted on the operator's public photos;
the devices' photos come from another distribution, on which every identity's
features share a large common component (the identities "bunch", which costs
verification accuracy under cosine similarity). BN stays frozen during local
training (see algorithms.py), so nothing in training removes that component.

Each device instead reports, as the "delta" of the embedding BN's running
statistics, its photos' mean input to that layer minus the model's running
mean, and its second moment about the model's running mean minus the running
variance. The server's sample-weighted mean of those deltas is then exactly
the population's mean and its second moment about the old mean, from which it
takes the variance about the new mean: one round sets both.

Privacy: this sends the mean and the per-dimension second moment of the
owner's embeddings before normalisation. The mean is about what FedFace's w_c
already reveals (a new device's w_c is its normalised mean feature); the second
moment adds how the owner's photos spread. Opt-in for that reason, and the
reason a sum-only (secure) aggregation of these tensors would be the way to
run it in production. `discriminant_moments` (for the discriminant transform)
sends the mean, full second moment and within-person scatter of the features
that enter the embedding projection: more again, and opt-in for the same reason.

Only the last BN is re-estimated: the others feed each other, and updating them
all from one pass over stale inputs diverges."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedface_common.wire import (
    EMBEDDING_BN_MEAN,
    EMBEDDING_BN_VAR,
    EMBEDDING_PROJECTION,
    HEAD_MEAN,
    HEAD_SECOND_MOMENT,
    HEAD_WITHIN_SCATTER,
)

EMBEDDING_BN = EMBEDDING_BN_MEAN.split(".")[0]
STAT_TENSORS = (EMBEDDING_BN_MEAN, EMBEDDING_BN_VAR)


def embedding_bn(model: nn.Module) -> nn.BatchNorm1d:
    bn = getattr(model, EMBEDDING_BN, None)
    if not isinstance(bn, nn.BatchNorm1d) or bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"embedding_stats needs a model with a tracked BatchNorm1d named {EMBEDDING_BN!r}")
    return bn


def _layer_inputs(model: nn.Module, layer: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The photos' inputs to `layer` (N, features) in float64, computed in eval mode with the model as
    it is now (call it before local training changes the backbone). A device holds a few hundred photos
    at most, so keeping them costs less than one model copy."""
    if len(x) == 0:
        raise ValueError("no photos to measure")
    parts: list[torch.Tensor] = []

    def keep(_: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        parts.append(inputs[0].detach().to(torch.float64).flatten(1))

    was_training = model.training
    model.eval()
    hook = layer.register_forward_pre_hook(keep)
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                model(x[i : i + batch_size])
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(parts)


def pre_bn_embeddings(model: nn.Module, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """The photos' inputs to the embedding BN (N, d)."""
    return _layer_inputs(model, embedding_bn(model), x, batch_size)


def projection_inputs(model: nn.Module, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """The photos' inputs to the embedding projection (N, c): the pooled head features."""
    projection = getattr(model, EMBEDDING_PROJECTION.split(".")[0], None)
    if not isinstance(projection, nn.Conv2d | nn.Linear):
        raise ValueError(f"embedding_lda_dims needs a model with a projection layer named {EMBEDDING_PROJECTION!r}")
    return _layer_inputs(model, projection, x, batch_size)


def _finite(out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not all(np.isfinite(v).all() for v in out.values()):
        raise ValueError("the embedding statistics are not finite")
    return out


def embedding_stat_deltas(model: nn.Module, x: torch.Tensor, batch_size: int = 64) -> dict[str, np.ndarray]:
    """The running-statistics "deltas" of the embedding BN for the photos x (see module doc)."""
    z = pre_bn_embeddings(model, x, batch_size)
    bn = embedding_bn(model)
    assert bn.running_mean is not None and bn.running_var is not None  # checked by embedding_bn
    centred = z - bn.running_mean.detach().to(torch.float64)
    deltas = {STAT_TENSORS[0]: centred.mean(dim=0),
              STAT_TENSORS[1]: (centred * centred).mean(dim=0) - bn.running_var.detach().to(torch.float64)}
    return _finite({name: d.cpu().numpy().astype(np.float32) for name, d in deltas.items()})


def discriminant_moments(model: nn.Module, x: torch.Tensor, batch_size: int = 64,
                         mirror: bool = False) -> dict[str, np.ndarray]:
    """The per-photo moments that `embedding_lda_dims` needs (coordinator/strategies/discriminant.py) of
    the projection's input h: its mean, its second moment (summed over devices: the population's), and
    its scatter about the photos' own mean (this person's within-class scatter).

    With `mirror`, each photo's left-right mirror image counts as one more photo of the owner: half the
    devices hold two or three photos, too few to say how a face varies, and a mirror image is a pose
    and lighting change that keeps the identity. The moments stay per-photo averages, so the server's
    weighting by the device's photo count is unchanged."""
    h = projection_inputs(model, x, batch_size)
    if mirror:
        h = torch.cat([h, projection_inputs(model, torch.flip(x, dims=[-1]), batch_size)])
    mean = h.mean(dim=0)
    own = h - mean
    n = len(h)
    moments = {HEAD_MEAN: mean, HEAD_SECOND_MOMENT: h.T @ h / n, HEAD_WITHIN_SCATTER: own.T @ own / n}
    return _finite({name: m.cpu().numpy().astype(np.float32) for name, m in moments.items()})
