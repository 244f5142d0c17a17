"""`fedface pretrain|embed|eval`: operator-side tools. Heavy imports (torch)
stay inside the functions so that `fedface --help` and the coordinator's
commands start fast."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def pretrain(
    data: Path = typer.Option(..., help="CFP root (Images/ + Fiducials/) or an aligned <root>/<identity>/*.jpg folder"),
    out: Path = typer.Option(..., help="Model file to write (.safetensors)"),
    input_size: int = typer.Option(64, help="Square input side: 112 as in the paper, 64 or 56 for CPU"),
    embedding_dim: int = typer.Option(128, help="Embedding dimension"),
    width: float = typer.Option(1.0, help="Channel width multiplier"),
    epochs: int = typer.Option(20),
    batch_size: int = typer.Option(128),
    lr: float = typer.Option(0.1, help="Peak learning rate (warm-up then cosine decay)"),
    weight_decay: float = typer.Option(5e-4),
    optimizer: str = typer.Option("sgd", help="sgd or adamw"),
    loss: str = typer.Option("cosface", help="cosface or arcface"),
    scale: float = typer.Option(64.0, help="Margin softmax scale s"),
    margin: float | None = typer.Option(None, help="Margin m (default 0.35 CosFace, 0.5 ArcFace)"),
    seed: int = typer.Option(0),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from the last epoch checkpoint"),
    checkpoint_dir: Path | None = typer.Option(None, help="Epoch checkpoints (default: <out>.ckpt/)"),
    device: str = typer.Option("auto", help="auto|cpu|cuda|mps"),
    max_identities: int | None = typer.Option(None, help="Use only the first N identities (small runs)"),
    threads: int | None = typer.Option(None, help="torch CPU threads (default: all cores)"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Pretrain the backbone centrally with a margin softmax; saves the model with its class centres."""
    from fedface_lab.pretrain import PretrainConfig
    from fedface_lab.pretrain import pretrain as run

    if optimizer not in ("sgd", "adamw") or loss not in ("cosface", "arcface"):
        raise typer.BadParameter("optimizer must be sgd|adamw and loss cosface|arcface")
    cfg = PretrainConfig(
        data=data, out=out, input_size=input_size, embedding_dim=embedding_dim, width=width, epochs=epochs,
        batch_size=batch_size, lr=lr, weight_decay=weight_decay, optimizer=optimizer,  # type: ignore[arg-type]
        loss=loss, scale=scale, margin=margin, seed=seed, resume=resume,  # type: ignore[arg-type]
        checkpoint_dir=checkpoint_dir, device=device, max_identities=max_identities, threads=threads,
        progress=progress,
    )
    result = run(cfg)
    typer.echo(json.dumps({"model": str(result.model_path), "history": result.history}, indent=2))


CROP_METHODS = ("auto", "center", "detect", "cfp", "none")


def embed(
    model: Path = typer.Option(..., help="Model file"),
    root: Path = typer.Option(..., help="Folder the listed paths are relative to"),
    images: Path = typer.Option(..., help="One relative path per line, or identity<TAB>path lines"),
    out: Path = typer.Option(..., help="Output .npy, float32 (n, d)"),
    crop: str = typer.Option("auto", help="auto (the model's own), center (LFW deep-funneled), detect (MTCNN), "
                                          "cfp (fiducials), none (resize only)"),
    flip: bool = typer.Option(False, "--flip/--no-flip", help="Add the mirror image's embedding"),
    batch_size: int = typer.Option(128),
    device: str = typer.Option("cpu"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Embed every listed image, in order, into an (n, d) float32 .npy of unit rows."""
    import numpy as np

    from fedface_lab.embed import embed_list_file

    if crop not in CROP_METHODS:
        raise typer.BadParameter(f"crop must be one of {'|'.join(CROP_METHODS)}")
    emb = embed_list_file(model, root, images, crop, batch_size, flip, device, progress)  # type: ignore[arg-type]
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, emb)
    typer.echo(json.dumps({"out": str(out), "shape": list(emb.shape)}))


def eval_cmd(
    model: Path = typer.Option(..., help="Model file"),
    data_root: Path = typer.Option(..., help="Image root the protocol files refer to (lfw/lfw-deepfunneled)"),
    pairs: Path | None = typer.Option(None, help="pairs.txt-format file (protocol A)"),
    images: Path | None = typer.Option(None, help="identity<TAB>path list for all-pairs TAR@FAR (protocol B)"),
    crop: str = typer.Option("auto", help="auto|center|detect|cfp|none"),
    flip: bool = typer.Option(False, "--flip/--no-flip"),
    roc_png: Path | None = typer.Option(None, help="Write the protocol B ROC curve here"),
    out: Path | None = typer.Option(None, help="Also write the JSON here"),
    batch_size: int = typer.Option(128),
    device: str = typer.Option("cpu"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Verification accuracy (A, k-fold threshold) and TAR@FAR / AUC over all pairs (B); prints JSON."""
    from fedface_lab.evaluate import evaluate_model

    if pairs is None and images is None:
        raise typer.BadParameter("give --pairs and/or --images")
    if crop not in CROP_METHODS:
        raise typer.BadParameter(f"crop must be one of {'|'.join(CROP_METHODS)}")
    result = evaluate_model(model, data_root, pairs, images, crop, roc_png, flip, batch_size, device,  # type: ignore[arg-type]
                            progress=progress)
    text = json.dumps(result, indent=2)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    typer.echo(text)
