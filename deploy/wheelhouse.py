"""Match `name==version` pins against a directory of wheels.

The image build installs offline from `.build/wheelhouse/<image>`, filled from
a wheel cache outside the clone. This tool tells which pins the cache lacks
(so only those are downloaded) and hard-links exactly the pinned wheels into
the build context (so the context holds nothing unpinned).

    python deploy/wheelhouse.py missing --cache DIR REQ.txt
    python deploy/wheelhouse.py stage   --cache DIR --out DIR REQ.txt
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import InvalidWheelFilename, NormalizedName, canonicalize_name, parse_wheel_filename
from packaging.version import Version


def read_pins(path: Path) -> dict[NormalizedName, Version]:
    pins: dict[NormalizedName, Version] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==":
            sys.exit(f"{path}: {line!r} is not an exact == pin")
        pins[canonicalize_name(req.name)] = Version(specs[0].version)
    return pins


def index_wheels(cache: Path) -> dict[tuple[NormalizedName, Version], Path]:
    found: dict[tuple[NormalizedName, Version], Path] = {}
    for path in sorted(cache.glob("*.whl")) if cache.is_dir() else []:
        try:
            name, version, _build, _tags = parse_wheel_filename(path.name)
        except InvalidWheelFilename:
            continue
        # pip only downloads wheels compatible with this interpreter, so the
        # first match per pin is the one pip would pick too.
        found.setdefault((name, version), path)
    return found


def missing(cache: Path, pins: dict[NormalizedName, Version]) -> list[str]:
    have = index_wheels(cache)
    return [f"{n}=={v}" for n, v in sorted(pins.items()) if (n, v) not in have]


def stage(cache: Path, out: Path, pins: dict[NormalizedName, Version]) -> None:
    lacking = missing(cache, pins)
    if lacking:
        sys.exit("wheel cache lacks: " + " ".join(lacking))
    have = index_wheels(cache)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name, version in pins.items():
        src = have[(name, version)]
        try:
            # A hard link costs no space or time; the cache may be on another filesystem.
            os.link(src, out / src.name)
        except OSError:
            shutil.copy2(src, out / src.name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["missing", "stage"])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--out", type=Path)
    parser.add_argument("requirements", type=Path, nargs="+")
    args = parser.parse_args()
    pins: dict[NormalizedName, Version] = {}
    for req_file in args.requirements:
        pins.update(read_pins(req_file))
    if args.command == "missing":
        print("\n".join(missing(args.cache, pins)))
    else:
        if args.out is None:
            parser.error("stage needs --out")
        stage(args.cache, args.out, pins)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
