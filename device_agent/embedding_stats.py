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
run it in production.

Only the last BN is re-estimated: the others feed each other, and updating them
all from one pass over stale inputs diverges."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedface_common.wire import EMBEDDING_BN_MEAN, EMBEDDING_BN_VAR

EMBEDDING_BN = EMBEDDING_BN_MEAN.split(".")[0]
STAT_TENSORS = (EMBEDDING_BN_MEAN, EMBEDDING_BN_VAR)


def embedding_bn(model: nn.Module) -> nn.BatchNorm1d:
    bn = getattr(model, EMBEDDING_BN, None)
    if not isinstance(bn, nn.BatchNorm1d) or bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"embedding_stats needs a model with a tracked BatchNorm1d named {EMBEDDING_BN!r}")
    return bn


def embedding_stat_deltas(model: nn.Module, x: torch.Tensor, batch_size: int = 64) -> dict[str, np.ndarray]:
    """The running-statistics "deltas" of the embedding BN for the photos x (see module doc), computed
    in eval mode with the model as it is now (call it before local training changes the backbone)."""
    if len(x) == 0:
        raise ValueError("no photos to measure")
    bn = embedding_bn(model)
    assert bn.running_mean is not None and bn.running_var is not None  # checked by embedding_bn
    mean0 = bn.running_mean.detach().to(torch.float64)
    var0 = bn.running_var.detach().to(torch.float64)
    first = torch.zeros_like(mean0)
    second = torch.zeros_like(mean0)

    def accumulate(_: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        centred = inputs[0].detach().to(torch.float64) - mean0
        first.add_(centred.sum(dim=0))
        second.add_((centred * centred).sum(dim=0))

    was_training = model.training
    model.eval()
    hook = bn.register_forward_pre_hook(accumulate)
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                model(x[i : i + batch_size])
    finally:
        hook.remove()
        model.train(was_training)
    n = len(x)
    deltas = {STAT_TENSORS[0]: first / n, STAT_TENSORS[1]: second / n - var0}
    out = {name: d.cpu().numpy().astype(np.float32) for name, d in deltas.items()}
    if not all(np.isfinite(v).all() for v in out.values()):
        raise ValueError("the embedding statistics are not finite")
    return out
