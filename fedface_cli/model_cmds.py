"""`fedface models ...`: bring a pretrained face network into the project's model format."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(help="Pretrained face networks: fetch, import.", no_args_is_help=True)

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
