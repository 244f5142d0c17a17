"""`fedface verify|export`: using a trained model, on two photos or in an app. Heavy imports (torch,
onnx) stay inside the functions so that `fedface --help` starts fast."""

from __future__ import annotations

import json
from pathlib import Path

import typer

CHECK_PHOTOS = 4  # development images the export is checked on when no --photo is given


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def verify(
    photo_a: Path = typer.Argument(..., help="First photo"),
    photo_b: Path = typer.Argument(..., help="Second photo"),
    model: Path = typer.Option(..., help="Model file (.safetensors)"),
    far: float = typer.Option(0.001, help="False accept rate whose calibrated threshold decides"),
    threshold: float | None = typer.Option(None, help="Cosine threshold to use instead of the calibrated one"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text"),
) -> None:
    """Are the two photos of the same person? The largest face of each is detected, aligned and
    embedded; the cosine is compared with the model's threshold for the FAR (`fedface models calibrate`).
    Exits 0 whatever the decision, 2 when no decision can be made."""
    from fedface_lab.verify import VerifyError
    from fedface_lab.verify import verify as run

    if not 0.0 < far < 1.0:
        raise typer.BadParameter(f"FAR must be in (0, 1), got {far}", param_hint="--far")
    try:
        verdict = run(model, photo_a, photo_b, far, threshold)
    except VerifyError as exc:
        raise _fail(str(exc)) from exc
    typer.echo(json.dumps(verdict.to_dict()) if as_json else verdict.describe())


def export(
    model: Path = typer.Option(..., help="Model file (.safetensors)"),
    fmt: str = typer.Option("onnx", "--format", help="Only onnx"),
    out: Path | None = typer.Option(None, dir_okay=False, help="File to write (default: MODEL with .onnx)"),
    photo: list[Path] = typer.Option([], help="Photo to check the export on (repeatable; default: the first "
                                              f"{CHECK_PHOTOS} of DATA/protocol/dev_images.txt)"),
    data: Path = typer.Option(Path("../shared/data"), envvar="FEDFACE_DATA", help="Face data root"),
) -> None:
    """Export the model for onnxruntime: input float32 (N, 3, S, S) normalised crops, output the
    L2-normalised embedding (N, d), the manifest in the metadata ("fedface.manifest"). The export is
    checked against torch on real face crops and written only if they agree within 1e-4."""
    from fedface_lab.onnx_export import FORMATS, ExportError, export_onnx
    from fedface_lab.verify import VerifyError, face_crops, load_verifier

    if fmt not in FORMATS:
        raise _fail(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    photos = list(photo) or _dev_photos(data)
    try:
        net, manifest = load_verifier(model)
        crops = [f.crop for f in face_crops(photos, manifest)]
        path, diff = export_onnx(net, manifest, out or model.with_suffix(".onnx"), crops)
    except (VerifyError, ExportError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(json.dumps({"out": str(path), "format": fmt, "architecture": manifest.architecture,
                           "input": [None, 3, manifest.input_size, manifest.input_size],
                           "embedding_dim": manifest.embedding_dim, "checked_photos": len(photos),
                           "max_abs_diff": diff}))


def _dev_photos(data: Path) -> list[Path]:
    from fedface_lab.calibrate import DEV_IMAGES, LFW_ROOT
    from fedface_lab.datasets import read_image_list

    listing = data / DEV_IMAGES
    if not listing.is_file():
        raise _fail(f"no photos to check the export on: give --photo, or --data / FEDFACE_DATA (no {listing})")
    return [data / LFW_ROOT / rel for _, rel in read_image_list(listing)[:CHECK_PHOTOS]]
