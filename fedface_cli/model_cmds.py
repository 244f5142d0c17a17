"""`fedface models ...`: bring a pretrained face network into the project's model format."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(help="Pretrained face networks: fetch, import, calibrate.", no_args_is_help=True)

SOURCES = ("face-api",)


def _source(name: str) -> None:
    if name not in SOURCES:
        raise typer.BadParameter(f"unknown source {name!r}; known: {', '.join(SOURCES)}")


@app.command("fetch")
def fetch(source: str = typer.Argument(..., help="face-api: dlib's ResNet from npm's @vladmandic/face-api"),
          dest: Path | None = typer.Option(None, dir_okay=False, help="Where to keep the tarball (default: cache)"),
          ) -> None:
    """Fetch the pinned package from the npm registry (npm pack) and check its SHA-256."""
    from fedface_lab.model_cache import fetch_face_api

    _source(source)
    try:
        path = fetch_face_api(dest)
    except (RuntimeError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(json.dumps({"package": str(path)}))


@app.command("import")
def import_cmd(
    source: str = typer.Argument(..., help="face-api: dlib's ResNet from npm's @vladmandic/face-api"),
    package: Path | None = typer.Option(None, help="npm tarball (.tgz) or unpacked package folder "
                                                   "(default: the one `fedface models fetch` keeps)"),
    out: Path | None = typer.Option(None, dir_okay=False, help="Model file to write (default: the model cache, "
                                                               "where the demo and the bench look)"),
    unpinned: bool = typer.Option(False, "--unpinned", help="Accept files whose SHA-256 differs from the pinned "
                                                            "release (their structure is still checked)"),
) -> None:
    """Dequantize the package's face descriptor network and write it as a FedFace model file
    (manifest: architecture, input size, normalisation, alignment template, source and licence).
    Nothing is written unless every check passes."""
    from fedface_common.face.checkpoint import load_manifest
    from fedface_common.face.face_api import PackageError, import_face_api
    from fedface_lab.model_cache import face_api_model_path, face_api_package_path

    _source(source)
    src = package or face_api_package_path()
    target = out or face_api_model_path()
    try:
        path = import_face_api(src, target, pinned=not unpinned)
    except PackageError as exc:
        typer.echo(f"error: {exc}; nothing written", err=True)
        raise typer.Exit(2) from exc
    manifest = load_manifest(path)
    typer.echo(json.dumps({"model": str(path), "architecture": manifest.architecture,
                           "input_size": manifest.input_size, "source": manifest.notes.get("source")}))


@app.command("calibrate")
def calibrate_cmd(
    model: Path = typer.Argument(..., exists=True, dir_okay=False, help="Model file (.safetensors)"),
    data: Path = typer.Option(Path("../shared/data"), envvar="FEDFACE_DATA", help="Face data root"),
    far: list[float] = typer.Option([0.001, 0.0001], "--far", help="False accept rate to calibrate for "
                                                                     "(repeatable)"),
    out: Path | None = typer.Option(None, dir_okay=False, help="Model file to write (default: rewrite MODEL)"),
    images: Path | None = typer.Option(None, dir_okay=False, help="identity<TAB>path list, paths under "
                                                                  "DATA/lfw/lfw-deepfunneled "
                                                                  "(default: DATA/protocol/dev_images.txt)"),
    progress: bool | None = typer.Option(None, "--progress/--no-progress",
                                         help="Progress bar (default: when stdout is a terminal)"),
) -> None:
    """Measure the cosine threshold for each FAR on all impostor pairs of the development images and
    store them in the model's manifest, where `fedface verify` (and an app) read them; prints JSON with
    each threshold and the TAR it achieves there."""
    import sys

    from fedface_common.face.checkpoint import ModelFileError
    from fedface_lab.calibrate import calibrate

    bad = [f for f in far if not 0.0 < f < 1.0]
    if bad:
        raise typer.BadParameter(f"FAR must be in (0, 1), got {bad}", param_hint="--far")
    try:
        # The bar is drawn on stdout: by default only where it cannot mix into JSON read by a program.
        path, result = calibrate(model, data, far, out, images,
                                 progress=sys.stdout.isatty() if progress is None else progress)
    except (FileNotFoundError, ModelFileError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(json.dumps({"model": str(path), **result.to_dict()}, indent=2))
