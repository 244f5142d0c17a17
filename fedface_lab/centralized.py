"""The centralized upper bound: fine-tune the pretrained model on the pooled
photos of all client identities with a margin softmax over them. No federated
run should beat this; it is what FedFace's gap is measured against."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from device_agent.algorithms import freeze_batchnorm, trainable_parameters
from fedface_common.face.checkpoint import CLASS_CENTRES, load_model, save_model
from fedface_common.face.manifest import ModelManifest
from fedface_common.face.preprocess import normalise_uint8
from fedface_lab.datasets import CropCache, crop_method_for, load_crop, read_clients
from fedface_lab.pretrain import IMAGE_SUFFIXES, MarginHead, lr_at, seed_everything
from fedface_lab.progress import make_progress


@dataclass
class CentralizedConfig:
    pretrained: Path
    data_root: Path
    out: Path
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.01
    weight_decay: float = 5e-4
    scale: float = 64.0
    margin: float = 0.35
    seed: int = 0
    progress: bool = True
    max_identities: int | None = None  # the first N client identities (small runs)
    # BatchNorm statistics stay the pretrained model's, as in every federated method. Re-estimating
    # them in train mode on batches of the clients' photos lowered TAR at FAR 1e-3 from 0.036 to 0.014
    # on the Xeon host, while frozen statistics gave 0.099 (README, the full plan on that host).
    freeze_bn_stats: bool = True
    # Parameter-name prefixes left as pretrained: the same layers the devices leave, so that the upper
    # bound trains what federated training trains.
    frozen: list[str] = field(default_factory=list)


def client_crops(data_root: Path, manifest: ModelManifest, cache: CropCache, max_identities: int | None,
                 names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every photo of the client identities (`names`, else the first `max_identities`), labelled 0..k-1,
    cropped as the model's devices crop them."""
    lfw = data_root / "lfw" / "lfw-deepfunneled"
    clients = names or [name for name, _ in read_clients(data_root / "protocol" / "clients.txt")][:max_identities]
    files = [(k, f) for k, name in enumerate(clients) for f in sorted((lfw / name).iterdir())
             if f.suffix.lower() in IMAGE_SUFFIXES]
    method, size = crop_method_for(manifest), manifest.input_size
    crops = np.stack([np.asarray(load_crop(f, method, size, cache, alignment=manifest.alignment), dtype=np.uint8)
                      for _, f in files])
    return crops, np.array([k for k, _ in files], dtype=np.int64)


def centralized_finetune(cfg: CentralizedConfig) -> Path:
    torch.set_num_threads(os.cpu_count() or 1)
    seed_everything(cfg.seed)
    model, manifest = load_model(cfg.pretrained)
    crops_np, labels_np = client_crops(cfg.data_root, manifest, CropCache(), cfg.max_identities)
    crops, labels = torch.from_numpy(crops_np), torch.from_numpy(labels_np)
    classes = int(labels.max()) + 1
    head = MarginHead(manifest.embedding_dim, classes, "cosface", cfg.scale, cfg.margin)
    # Start each class centre at its identity's mean feature: a random head would
    # send large, meaningless gradients into the pretrained backbone at first.
    with torch.no_grad():
        model.eval()
        feats = torch.cat([model(normalise_uint8(crops[i:i + 256], manifest)) for i in range(0, len(crops), 256)])
        centres = torch.zeros(classes, manifest.embedding_dim).index_add_(0, labels, feats)
        head.weight.copy_(F.normalize(centres, dim=1))
    params = [*trainable_parameters(model, cfg.frozen), *head.parameters()]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    n = len(labels)
    batch = min(cfg.batch_size, n)
    steps_per_epoch = n // batch
    total = steps_per_epoch * cfg.epochs
    gen = torch.Generator().manual_seed(cfg.seed)
    started = time.perf_counter()
    with make_progress(cfg.progress) as bar:
        task = bar.add_task("centralized fine-tuning", total=total)
        for epoch in range(cfg.epochs):
            if cfg.freeze_bn_stats:
                freeze_batchnorm(model)
            else:
                model.train()
            order = torch.randperm(n, generator=gen)
            flips = torch.rand(n, generator=gen) < 0.5
            for step in range(steps_per_epoch):
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(epoch * steps_per_epoch + step, total, steps_per_epoch // 2, cfg.lr)
                idx = order[step * batch:(step + 1) * batch]
                x = normalise_uint8(crops[idx], manifest)
                x[flips[idx]] = x[flips[idx]].flip(3)
                logits, _ = head(model(x), labels[idx])
                loss = F.cross_entropy(logits, labels[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                bar.advance(task)
    manifest = manifest.model_copy(update={"notes": {
        **manifest.notes, "finetuned": "centralized on pooled client photos", "finetune_epochs": str(cfg.epochs),
        "finetune_s": f"{time.perf_counter() - started:.0f}"}})
    save_model(cfg.out, model.eval(), manifest, {CLASS_CENTRES: head.centres()})
    return cfg.out
