"""The client side of the federated algorithms: local training on one identity.

Pure torch, no I/O. A device holds photos of ONE person, so it cannot train a
softmax over identities. FedAwS/FedFace train the backbone and the device's
own class embedding w_c with a positive-only loss, and the server keeps the
rows of W apart (spreadout). `fedface-private` instead keeps w_c on the device
and uses the K public class centres of pretraining nearest to w_c as
negatives in a CosFace loss, so the server never sees w_c.

BatchNorm: every BN layer stays in eval mode during local training, i.e. its
running statistics are frozen (its affine weight and bias still train). A
batch from one device is a handful of photos of one face: its mean and
variance say nothing about the population, so normalising with them would
make the features of one person look like the average face (collapsing the
positive-only loss trivially), and averaging those running statistics across
devices would corrupt the global model. Frozen stats keep the forward pass
identical to the one the server's model uses at inference; the running-stat
tensors then come back with a zero delta, except the embedding BN's when the
strategy asks for `embedding_stats`, and the update carries the moments of the
projection's input besides when it asks for `embedding_lda_dims` (see embedding_stats.py).
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from device_agent.embedding_stats import discriminant_moments, embedding_stat_deltas
from fedface_common.client_params import PositiveLossClientParams, PrivateClientParams, parse_client_params
from fedface_common.wire import CLASS_EMBEDDING_TENSOR, TrainingConfig

DeviceChoice = Literal["auto", "cpu", "cuda", "mps"]
POSITIVE_ALGORITHMS = frozenset({"fedface", "fedavg"})
PRIVATE_ALGORITHM = "fedface-private"
SUPPORTED_ALGORITHMS = POSITIVE_ALGORITHMS | {PRIVATE_ALGORITHM}
_FLOAT_KINDS = ("f",)

# Called after every optimiser step with (epoch, batch index, batches per epoch).
StepCallback = Callable[[int, int, int], None]


class UnsupportedAlgorithm(ValueError):
    pass


def pick_device(choice: str = "auto") -> torch.device:
    """CUDA when available, else Apple MPS, else CPU; an explicit choice wins
    (and fails loudly if that backend is missing, rather than training on CPU unnoticed)."""
    if choice not in ("auto", "cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {choice!r} (auto, cpu, cuda, mps)")
    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if choice == "cuda" and not cuda:
        raise RuntimeError("--device cuda requested but CUDA is not available")
    if choice == "mps" and not mps:
        raise RuntimeError("--device mps requested but Apple MPS is not available")
    if choice != "auto":
        return torch.device(choice)
    if cuda:
        return torch.device("cuda")
    if mps:
        return torch.device("mps")
    return torch.device("cpu")


# --- losses -------------------------------------------------------------------------------


def positive_loss(features: torch.Tensor, w_c: torch.Tensor, margin: float) -> torch.Tensor:
    """mean_i max(0, m - cos(f(x_i), w_c))^2 (FedAwS eq. 2 with one positive class)."""
    cos = F.normalize(features, dim=1) @ F.normalize(w_c, dim=0)
    return F.relu(margin - cos).pow(2).mean()


def cosface_loss(
    features: torch.Tensor, w_c: torch.Tensor, negatives: torch.Tensor, scale: float, margin: float
) -> torch.Tensor:
    """CosFace (large margin cosine loss) with class 0 = w_c and the negatives as the other classes."""
    classes = F.normalize(torch.cat([w_c.unsqueeze(0), negatives], dim=0), dim=1)
    cos = F.normalize(features, dim=1) @ classes.T
    logits = scale * (cos - margin * F.one_hot(torch.zeros(len(cos), dtype=torch.long, device=cos.device),
                                               num_classes=cos.shape[1]).to(cos.dtype))
    return F.cross_entropy(logits, torch.zeros(len(cos), dtype=torch.long, device=cos.device))


def nearest_centres(w_c: torch.Tensor, centres: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k centres with the highest cosine to w_c, most similar first."""
    k = max(0, min(k, centres.shape[0]))
    cos = F.normalize(centres, dim=1) @ F.normalize(w_c, dim=0)
    return torch.topk(cos, k).indices


# --- helpers ------------------------------------------------------------------------------


def freeze_batchnorm(model: nn.Module) -> None:
    """Train mode for everything but BatchNorm, whose running stats stay frozen (see module doc)."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


@torch.no_grad()
def embed(model: nn.Module, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Features of x in eval mode, without gradients, on x's device."""
    was_training = model.training
    model.eval()
    try:
        parts = [model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(parts) if parts else x.new_zeros((0, 0))


def init_class_embedding(model: nn.Module, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """A new client's w_c: the normalised mean of its photos' features under the current backbone."""
    return F.normalize(embed(model, x, batch_size).mean(dim=0), dim=0)


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Horizontal flip of each image with probability 1/2 (faces are near-symmetric; the
    only augmentation that never moves a face off the alignment template)."""
    flip = torch.rand(len(x), generator=generator) < 0.5
    return torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)


def float_delta(base: Mapping[str, np.ndarray], model: nn.Module) -> dict[str, np.ndarray]:
    """F32 (new - base) for every float tensor of the model file `base`, by name.

    Driven by the file's tensors, not the module's: the server expects exactly
    the file's float tensors, so integer counters are left out and any float
    extra the file carries (e.g. `pretrain.class_centres`) gets a zero delta."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    out: dict[str, np.ndarray] = {}
    for name, arr in base.items():
        if np.dtype(arr.dtype).kind not in _FLOAT_KINDS:
            continue
        base32 = np.asarray(arr, dtype=np.float32)
        if name in state:
            new = state[name].to(torch.float32).numpy()
            if new.shape != base32.shape:
                raise ValueError(f"{name}: model shape {new.shape} differs from the file's {base32.shape}")
            out[name] = (new - base32).astype(np.float32)
        else:
            out[name] = np.zeros_like(base32)
    return out


def _optimizer(params: list[dict[str, Any]], cfg: TrainingConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.learning_rate)
    return torch.optim.SGD(params, lr=cfg.learning_rate, momentum=cfg.momentum)


def trainable_parameters(model: nn.Module, frozen: list[str]) -> list[nn.Parameter]:
    """The parameters local training may change: all but those named by a prefix in `frozen`.
    A prefix that names nothing is an error: a typo would otherwise train what it meant to freeze."""
    # A bare string would iterate as one-letter prefixes and freeze nearly everything.
    if not isinstance(frozen, list) or not all(isinstance(f, str) and f for f in frozen):
        raise ValueError(f"frozen must be a list of parameter name prefixes, got {frozen!r}")
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    unmatched = [f for f in frozen if not any(name.startswith(f) for name, _ in named)]
    if unmatched:
        raise ValueError(f"frozen names match no parameter of the model: {unmatched}")
    return [p for name, p in named if not any(name.startswith(f) for f in frozen)]


# --- local training -----------------------------------------------------------------------


@dataclass
class LocalResult:
    """What one round of local training produced."""

    delta: dict[str, np.ndarray]  # F32 backbone deltas, named as in the model file
    class_embedding: np.ndarray  # the trained w_c, normalised (sent, or kept on the device if private)
    metrics: dict[str, float | int | str] = field(default_factory=dict)

    def update_tensors(self, algorithm: str) -> dict[str, np.ndarray]:
        """The tensors of the submission: deltas, plus w_c unless it must stay on the device."""
        out = dict(self.delta)
        if algorithm in POSITIVE_ALGORITHMS:
            out[CLASS_EMBEDDING_TENSOR] = self.class_embedding.astype(np.float32)
        return out


class Objective:
    """The round's loss as a function of features and w_c (negatives fixed for the round)."""

    def __init__(self, cfg: TrainingConfig, w_c: torch.Tensor, centres: torch.Tensor | None) -> None:
        params = parse_client_params(cfg.algorithm, cfg.params)
        self.algorithm = cfg.algorithm
        if isinstance(params, PositiveLossClientParams):
            self.margin = params.margin
            self.negatives: torch.Tensor | None = None
        elif isinstance(params, PrivateClientParams):
            if centres is None or centres.ndim != 2 or centres.shape[1] != w_c.shape[0]:
                raise ValueError(f"{PRIVATE_ALGORITHM} needs class centres of shape (C, {w_c.shape[0]})")
            k = params.k_negatives
            # Chosen once, from w_c at the start of the round: the hardest public
            # identities for this person, which carry the most signal per step.
            self.negatives = centres[nearest_centres(w_c, centres, k)].detach()
            self.scale = params.scale
            self.margin = params.cosface_margin
            self.anchor = params.anchor  # see PrivateClientParams.anchor
            self.centres = F.normalize(centres.detach(), dim=1)
        else:
            raise UnsupportedAlgorithm(f"this agent cannot train {cfg.algorithm!r}")
        self.reference: torch.Tensor | None = None

    @property
    def needs_reference(self) -> bool:
        return self.negatives is not None and self.anchor > 0

    def set_reference(self, features: torch.Tensor) -> None:
        """The start-of-round cosines of every photo (features in x's order) to the public centres."""
        self.reference = (F.normalize(features, dim=1) @ self.centres.T).detach()

    def __call__(self, features: torch.Tensor, w_c: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of `features`, the photos x[index] (index is needed for the anchor)."""
        if self.negatives is None:
            return positive_loss(features, w_c, self.margin)
        loss = cosface_loss(features, w_c, self.negatives, self.scale, self.margin)
        if self.needs_reference:
            if self.reference is None or index is None:
                raise ValueError("the anchor needs set_reference() and the photos' indices")
            now = F.normalize(features, dim=1) @ self.centres.T
            loss = loss + self.anchor * (now - self.reference[index]).pow(2).sum(dim=1).mean()
        return loss


def train_local(
    model: nn.Module,
    base: Mapping[str, np.ndarray],
    x: torch.Tensor,
    cfg: TrainingConfig,
    *,
    class_embedding: np.ndarray | None = None,
    centres: np.ndarray | None = None,
    device: torch.device | None = None,
    seed: int | None = None,
    on_step: StepCallback | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> LocalResult:
    """Train `model` (loaded from the model file whose tensors are `base`) on the
    normalised face crops x (N, 3, S, S) for one round, in place.

    class_embedding: the device's w_c from the server (fedface/fedavg) or from
    its own state (fedface-private); None for a new client, which starts from
    the normalised mean feature. centres: public class centres (C, d) for
    fedface-private. Returns the float deltas, the trained w_c and metrics."""
    if len(x) == 0:
        raise ValueError("no photos to train on")
    device = device or torch.device("cpu")
    model.to(device)
    x = x.to(device)
    start = clock()
    w0 = (torch.from_numpy(np.asarray(class_embedding, dtype=np.float32)).to(device)
          if class_embedding is not None else init_class_embedding(model, x, cfg.batch_size))
    w_c = nn.Parameter(F.normalize(w0.clone(), dim=0))
    c = torch.from_numpy(np.asarray(centres, dtype=np.float32)).to(device) if centres is not None else None
    objective = Objective(cfg, w_c.detach(), c)
    if objective.needs_reference:
        objective.set_reference(embed(model, x, cfg.batch_size))
    everything = torch.arange(len(x), device=device)

    def full_loss() -> float:
        with torch.no_grad():
            return float(objective(embed(model, x, cfg.batch_size), w_c.detach(), everything))

    params = parse_client_params(cfg.algorithm, cfg.params)
    positive = params if isinstance(params, PositiveLossClientParams) else None
    loss_before = full_loss()
    # Measured on the model as received, so the server's mean is the statistics of one model.
    stat_deltas = embedding_stat_deltas(model, x, cfg.batch_size) if positive and positive.embedding_stats else {}
    # Not model tensors: the discriminant's moments ride beside the deltas (see embedding_stats.py).
    scatter = (discriminant_moments(model, x, cfg.batch_size, positive.embedding_lda_mirror)
               if positive and positive.embedding_lda_dims is not None else {})
    backbone = trainable_parameters(model, params.frozen)
    # No weight decay on w_c: the loss only sees its direction, so decay would
    # merely shrink its norm and silently raise its effective learning rate.
    wc_lr = cfg.learning_rate * (positive.wc_lr_scale if positive else 1.0)
    optimizer = _optimizer([{"params": backbone, "weight_decay": cfg.weight_decay},
                            {"params": [w_c], "weight_decay": 0.0, "lr": wc_lr}], cfg)
    generator = torch.Generator().manual_seed(seed if seed is not None else secrets.randbits(63))
    n, bs = len(x), cfg.batch_size
    max_grad_norm = params.max_grad_norm
    batches = math.ceil(n / bs)
    steps = 0
    freeze_batchnorm(model)
    try:
        for epoch in range(cfg.local_epochs):
            order = torch.randperm(n, generator=generator).to(device)
            for b in range(batches):
                index = order[b * bs : (b + 1) * bs]
                loss = objective(model(random_flip(x[index], generator)), w_c, index)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_([*backbone, w_c], max_grad_norm)
                optimizer.step()
                steps += 1
                if on_step is not None:
                    on_step(epoch, b, batches)
    finally:
        model.eval()
    train_seconds = clock() - start
    loss_after = full_loss()
    with torch.no_grad():
        w_final = F.normalize(w_c.detach(), dim=0)
        mean_feature = F.normalize(embed(model, x, cfg.batch_size).mean(dim=0), dim=0)
        cos_mean = float(mean_feature @ w_final)
    metrics: dict[str, float | int | str] = {
        "algorithm": cfg.algorithm,
        "loss_before": loss_before,
        "loss_after": loss_after,
        "num_samples": n,
        "steps": steps,
        "train_seconds": round(train_seconds, 4),
        "cos_mean_feature_wc": cos_mean,
        "wc_initialised": int(class_embedding is None),
    }
    if objective.negatives is not None:
        metrics["k_negatives"] = len(objective.negatives)
    delta = float_delta(base, model)
    for name, value in stat_deltas.items():
        if name not in delta or delta[name].shape != value.shape:
            raise ValueError(f"the model file has no {name} of shape {value.shape}")
        delta[name] = value
    delta.update(scatter)
    return LocalResult(delta=delta, class_embedding=w_final.cpu().numpy().astype(np.float32),
                       metrics=metrics)
