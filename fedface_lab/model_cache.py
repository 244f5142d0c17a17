"""Pretrained models cached by data and configuration: the same pretraining is
never run twice (benchmarks and the demo share it)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
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


def face_api_package_path() -> Path:
    """Where the install step keeps npm's tarball of the pinned face-api release
    (FEDFACE_FACE_API_PACKAGE overrides it)."""
    from fedface_common.face import face_api

    explicit = os.environ.get("FEDFACE_FACE_API_PACKAGE")
    if explicit:
        return Path(explicit)
    return default_cache_dir() / "npm" / f"vladmandic-face-api-{face_api.VERSION}.tgz"


def face_api_model_path(models_dir: Path | None = None) -> Path:
    from fedface_common.face import face_api

    return (models_dir or default_cache_dir() / "models") / f"face-api-{face_api.VERSION}-resnet29.safetensors"


def fetch_face_api(dest: Path | None = None) -> Path:
    """npm's tarball of the pinned release, fetched with `npm pack` unless already there; its
    SHA-256 is checked either way (a mismatch is an error and the file is removed)."""
    import hashlib
    import shutil
    import subprocess
    import tempfile

    from fedface_common.face import face_api

    target = dest or face_api_package_path()
    if not target.is_file():
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("npm is needed to fetch the pretrained face network (Debian: apt-get install npm)")
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            subprocess.run([npm, "pack", "--silent", "--pack-destination", tmp,
                            f"{face_api.PACKAGE}@{face_api.VERSION}"], check=True, stdout=subprocess.DEVNULL)
            (packed,) = Path(tmp).glob("*.tgz")
            packed.replace(target)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    if digest != face_api.TARBALL_SHA256:
        target.unlink()
        raise RuntimeError(f"{target}: SHA-256 {digest} is not the pinned {face_api.TARBALL_SHA256}; removed")
    return target


def cached_face_api_model(models_dir: Path | None = None) -> tuple[Path, bool]:
    """dlib's network imported from the pinned face-api package (fetched when missing), and
    whether it came from the cache."""
    from fedface_common.face.face_api import import_face_api

    target = face_api_model_path(models_dir)
    if target.is_file():
        return target, True
    return import_face_api(fetch_face_api(), target), False


def cached_face_api_start(data: Path, models_dir: Path | None = None) -> tuple[Path, bool]:
    """The experiment's start: dlib's imported network with public class centres from CFP
    (fedface_lab.public_centres), cached by the CFP data's fingerprint."""
    from fedface_lab.public_centres import attach_public_centres

    model, cached = cached_face_api_model(models_dir)
    target = model.with_name(f"{model.stem}-cfp-centres-{data_fingerprint(data / 'cfp')[:12]}.safetensors")
    if target.is_file():
        return target, cached
    return attach_public_centres(model, data / "cfp", target), False
