#!/usr/bin/env bash
# Fill the wheel cache (outside the clone) with every pinned wheel the images
# need, then hard-link exactly those into the build context at
# .build/wheelhouse/{server,agent}, from where the Dockerfile installs with
# `pip install --no-index`: the image build itself never touches the network.
#
# Only pins missing from the cache are downloaded, so a warm cache needs no
# network at all. torch==2.13.0+cpu is not on PyPI in that form; pip finds it
# through the host's pip configuration (find-links /opt/wheels).
#
# Env:
#   FEDFACE_WHEEL_CACHE  cache dir (default /var/cache/fedface/wheels)
#   PYTHON               interpreter with pip + packaging (default .venv/bin/python, else python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${FEDFACE_WHEEL_CACHE:-/var/cache/fedface/wheels}"
# The project's venv has pip and packaging; fall back to whatever python3 is on PATH.
if [[ -z "${PYTHON:-}" ]]; then
    PYTHON="$ROOT/.venv/bin/python"
    [[ -x "$PYTHON" ]] || PYTHON=python3
fi
"$PYTHON" -c 'import packaging, pip' 2>/dev/null \
    || { echo "[prepare-wheels] $PYTHON lacks pip or packaging; set PYTHON" >&2; exit 1; }
CONTEXT_DIR="$ROOT/.build"

log() { printf '[prepare-wheels] %s\n' "$*" >&2; }
# The host's pip config lists local simple indexes that lack most projects; pip
# warns once per project about them. Drop that noise, keep everything else.
pip_() {
    local rc=0
    "$PYTHON" -m pip "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2) || rc=$?
    return "$rc"
}

mkdir -p "$CACHE" "$CONTEXT_DIR"
# .build/ is generated: a .gitignore of "*" inside it keeps git from seeing it
# (itself included) without touching the repository's .gitignore.
[[ -f "$CONTEXT_DIR/.gitignore" ]] || printf '*\n' >"$CONTEXT_DIR/.gitignore"

for image in server agent; do
    # The build backend goes with each image's wheels: the wheelhouse is all pip may use.
    reqs=("$ROOT/deploy/requirements-$image.txt" "$ROOT/deploy/requirements-build.txt")
    mapfile -t lacking < <("$PYTHON" "$ROOT/deploy/wheelhouse.py" missing --cache "$CACHE" "${reqs[@]}" | sed '/^$/d')
    if ((${#lacking[@]})); then
        log "$image: downloading ${#lacking[@]} wheel(s): ${lacking[*]}"
        # --no-deps: the pin files are already the full closure.
        # --only-binary: an sdist would need a compiler in the image.
        if ! pip_ download --quiet --no-deps --only-binary=:all: --dest "$CACHE" "${lacking[@]}"; then
            log "$image: some pins have no wheel; building them (pure-Python sdists only)"
            pip_ wheel --quiet --no-deps --wheel-dir "$CACHE" "${lacking[@]}"
        fi
    fi
    "$PYTHON" "$ROOT/deploy/wheelhouse.py" stage --cache "$CACHE" --out "$CONTEXT_DIR/wheelhouse/$image" "${reqs[@]}"
    log "$image: $(find "$CONTEXT_DIR/wheelhouse/$image" -name '*.whl' | wc -l) wheels staged in .build/wheelhouse/$image"
done
