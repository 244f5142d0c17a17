#!/usr/bin/env bash
# Build the coordinator image with podman and prove it starts and turns ready,
# on a host without a container engine or a registry.
#
#   1. base image from Debian packages (build-base.sh, cached outside the clone)
#   2. pinned wheels into .build/wheelhouse (prepare-wheels.sh, cached outside the clone)
#   3. podman build --isolation=chroot (no runc/crun or namespaces needed)
#   4. podman create + podman mount: the image's root filesystem on the host
#   5. in a private mount (and, for the embedded backends, network) namespace:
#      mount /proc and /dev, chroot into the rootfs as the image's user with the
#      image's Env, run its ENTRYPOINT + CMD, and poll /readyz until it answers 200
#   6. run the image's HEALTHCHECK command, then stop the server; the namespace's
#      mounts vanish with it; podman unmount + rm.
#
# Env:
#   FEDFACE_CHECK_BACKENDS  embedded (default): SQLite + fakeredis + local blobs inside
#                           the image, private network namespace, the image's CMD as is.
#                           host: the host's Postgres and Redis on 127.0.0.1 (shared
#                           network, so the server gets a free port instead of 8000).
#   FEDFACE_CHECK_DATABASE_URL  for host mode (default postgresql+asyncpg://postgres@127.0.0.1:5432/test)
#   FEDFACE_CHECK_REDIS_URL     for host mode (default redis://127.0.0.1:6379/15)
#   FEDFACE_CHECK_TIMEOUT   seconds to wait for /readyz (default 120)
#   FEDFACE_IMAGE           tag to build (default localhost/fedface-coordinator:check)
#   FEDFACE_SKIP_BUILD=1    check an already built $FEDFACE_IMAGE
#   FEDFACE_BASE_IMAGE, FEDFACE_BASE_CACHE, FEDFACE_WHEEL_CACHE: see build-base.sh / prepare-wheels.sh
#   FEDFACE_PODMAN_STORAGE_DRIVER  force a storage driver (e.g. vfs where overlay fails)
# Exit status: 0 ready; 1 build or check failed (the reason is the last [image-check] line).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/deploy/podman"
IMAGE="${FEDFACE_IMAGE:-localhost/fedface-coordinator:check}"
BACKENDS="${FEDFACE_CHECK_BACKENDS:-embedded}"
TIMEOUT="${FEDFACE_CHECK_TIMEOUT:-120}"

log() { printf '[image-check] %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

[[ $EUID -eq 0 ]] || die "must run as root (podman mount and chroot need it)"
case "$BACKENDS" in embedded | host) ;; *) die "FEDFACE_CHECK_BACKENDS must be embedded or host" ;; esac

# ---------------------------------------------------------------- podman ----
if ! command -v podman >/dev/null; then
    log "installing podman"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman >/dev/null; }; then
        die "cannot install podman with apt-get"
    fi
fi
PODMAN=(podman)
driver="${FEDFACE_PODMAN_STORAGE_DRIVER:-}"
if [[ -z "$driver" ]] && ! podman info >/dev/null 2>&1; then
    # overlay needs kernel support that some sandboxes lack; vfs works anywhere (slower, bigger).
    log "podman's default storage does not work here; using vfs"
    driver=vfs
fi
if [[ -n "$driver" ]]; then
    # A store of its own: podman refuses a graph root created with another driver.
    PODMAN+=(--storage-driver "$driver" --root "/var/lib/containers/storage-$driver")
fi

# ----------------------------------------------------------------- build ----
t0=$(now)
if [[ "${FEDFACE_SKIP_BUILD:-0}" != 1 ]]; then
    PODMAN="${PODMAN[*]}" "$HERE/build-base.sh" || die "base image"
    log "base image ready ($(elapsed "$t0"))"
    t1=$(now)
    "$HERE/prepare-wheels.sh" || die "wheelhouse"
    log "wheelhouse ready ($(elapsed "$t1"))"
    t1=$(now)
    build_log="$ROOT/.build/image-build.log"
    # --format docker keeps HEALTHCHECK (the OCI format has no such field).
    build_args=()
    [[ -n "${FEDFACE_BASE_IMAGE:-}" ]] && build_args+=(--build-arg "BASE=$FEDFACE_BASE_IMAGE")
    if ! nice "${PODMAN[@]}" build --isolation=chroot --format docker --target coordinator \
        "${build_args[@]}" --tag "$IMAGE" "$ROOT" >"$build_log" 2>&1; then
        tail -n 30 "$build_log" >&2
        die "podman build (full log: $build_log)"
    fi
    log "image $IMAGE built ($(elapsed "$t1"))"
fi
"${PODMAN[@]}" image exists "$IMAGE" || die "no image $IMAGE"

# ----------------------------------------------------- rootfs on the host ----
inspect() { "${PODMAN[@]}" image inspect --format "$1" "$IMAGE"; }
USER_SPEC=$(inspect '{{.Config.User}}')
WORKDIR=$(inspect '{{.Config.WorkingDir}}')
mapfile -t IMAGE_ENV < <(inspect '{{range .Config.Env}}{{println .}}{{end}}' | sed '/^$/d')
mapfile -t ENTRYPOINT < <(inspect '{{range .Config.Entrypoint}}{{println .}}{{end}}' | sed '/^$/d')
mapfile -t CMD < <(inspect '{{range .Config.Cmd}}{{println .}}{{end}}' | sed '/^$/d')
mapfile -t HEALTHCHECK < <(inspect '{{if .Config.Healthcheck}}{{range .Config.Healthcheck.Test}}{{println .}}{{end}}{{end}}' \
    | sed '/^$/d')
[[ ${#ENTRYPOINT[@]} -gt 0 ]] || die "image has no ENTRYPOINT"
[[ -n "$USER_SPEC" && "$USER_SPEC" != root && "$USER_SPEC" != 0* ]] || die "image runs as root (User=$USER_SPEC)"

mkdir -p "$ROOT/.build"; [[ -f "$ROOT/.build/.gitignore" ]] || printf "*\n" >"$ROOT/.build/.gitignore"
CTR=""
MNT=""
cleanup() {
    if [[ -n "$CTR" ]]; then
        "${PODMAN[@]}" unmount "$CTR" >/dev/null 2>&1 || true
        "${PODMAN[@]}" rm --force "$CTR" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT
CTR=$("${PODMAN[@]}" create "$IMAGE")
MNT=$("${PODMAN[@]}" mount "$CTR")
log "rootfs of $IMAGE mounted at $MNT"

# What the server runs with: the image's Env, plus the backends under test.
RUN_ENV=("${IMAGE_ENV[@]}" "HOME=$WORKDIR" "FEDFACE_LOG_JSON=false")
PORT=8000
# --pid: the server is in its own PID namespace, so everything it started dies with the check.
UNSHARE=(unshare --mount --propagation private --fork --pid)
if [[ "$BACKENDS" == host ]]; then
    RUN_ENV+=("FEDFACE_DATABASE_URL=${FEDFACE_CHECK_DATABASE_URL:-postgresql+asyncpg://postgres@127.0.0.1:5432/test}"
        "FEDFACE_REDIS_URL=${FEDFACE_CHECK_REDIS_URL:-redis://127.0.0.1:6379/15}")
    # The host network is shared with whatever else runs here: take a free port.
    PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    CMD=("serve" "--host" "127.0.0.1" "--port" "$PORT")
else
    # A private network namespace: the image's own CMD (port 8000) cannot clash with the host.
    UNSHARE+=(--net)
fi

# --------------------------------------------------------- run and probe ----
# The inner script runs inside the new namespaces; every mount it makes is
# private to them and disappears when it exits, even if it is killed.
inner=$(
    cat <<'INNER'
set -euo pipefail
mnt=$1 user=$2 workdir=$3 port=$4 timeout=$5 log=$6 hc_len=$7; shift 7
hc=("${@:1:$hc_len}"); shift "$hc_len"
env_len=$1; shift; run_env=("${@:1:$env_len}"); shift "$env_len"
argv=("$@")
say() { printf '[image-check] %s\n' "$*" >&2; }
ip link set lo up 2>/dev/null || true
mount -t proc proc "$mnt/proc"
mount --bind /dev "$mnt/dev"
in_image() { chroot --userspec="$user" "$mnt" /usr/bin/env -i "${run_env[@]}" "$@"; }

# Preflight: the interpreter, the venv and the console script work as the image's user.
in_image /bin/sh -c "cd '$workdir' && fedface --help" >/dev/null \
    || { say "FAILED: 'fedface --help' does not run inside the image"; exit 1; }

say "starting: ${argv[*]} (as $user)"
in_image /bin/sh -c 'cd "$0" && exec "$@"' "$workdir" "${argv[@]}" >"$log" 2>&1 &
pid=$!
stop() {
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
}
trap stop EXIT

probe='import sys, urllib.request
try:
    sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=3).status == 200 else 1)
except Exception:
    sys.exit(1)'
deadline=$((SECONDS + timeout))
while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
        wait "$pid" && rc=0 || rc=$?
        say "entrypoint output (last 40 lines):"; tail -n 40 "$log" >&2
        say "FAILED: the entrypoint exited with status $rc before /readyz answered"
        exit 1
    fi
    if in_image python3 -c "$probe" "http://127.0.0.1:$port/readyz"; then break; fi
    if ((SECONDS >= deadline)); then
        say "entrypoint output (last 40 lines):"; tail -n 40 "$log" >&2
        say "FAILED: /readyz did not answer 200 within ${timeout}s"
        exit 1
    fi
    sleep 1
done
say "/readyz answered 200"
# What operators do first: register a model with the CLI inside the image (numpy and safetensors only).
make_model='import json, sys
import numpy as np
from fedface_common.tensors import encode
from fedface_common.wire import MANIFEST_METADATA_KEY
manifest = {MANIFEST_METADATA_KEY: json.dumps({"architecture": "image-check", "embedding_dim": 2})}
open(sys.argv[1], "wb").write(encode({"w": np.zeros((2, 2), np.float32)}, manifest))'
register_log="$log.register"
if ! in_image /bin/sh -c 'cd "$0" && python3 -c "$1" "${FEDFACE_DATA_DIR:-fedface-data}/image-check.safetensors" &&
        fedface admin --server "http://127.0.0.1:$2" --token-file "${FEDFACE_DATA_DIR:-fedface-data}/admin-token" \
        models register "${FEDFACE_DATA_DIR:-fedface-data}/image-check.safetensors" --serve' "$workdir" "$make_model" "$port" >"$register_log" 2>&1; then
    tail -n 20 "$register_log" >&2
    say "FAILED: 'fedface admin models register' does not work inside the image"
    exit 1
fi
say "fedface admin models register worked inside the image"
if ((${#hc[@]})); then
    [[ "${hc[0]}" == CMD ]] || { say "FAILED: HEALTHCHECK is not an exec-form CMD: ${hc[*]}"; exit 1; }
    # The image's HEALTHCHECK probes port 8000; in host mode the server listens elsewhere.
    if [[ "$port" == 8000 ]]; then
        in_image "${hc[@]:1}" || { say "FAILED: the image's HEALTHCHECK command failed"; exit 1; }
        say "HEALTHCHECK command passed"
    fi
fi
INNER
)

log_file="$ROOT/.build/image-run.log"
t1=$(now)
"${UNSHARE[@]}" bash -c "$inner" inner "$MNT" "$USER_SPEC" "$WORKDIR" "$PORT" "$TIMEOUT" "$log_file" \
    "${#HEALTHCHECK[@]}" "${HEALTHCHECK[@]}" "${#RUN_ENV[@]}" "${RUN_ENV[@]}" "${ENTRYPOINT[@]}" "${CMD[@]}" \
    || die "image did not become ready (server log: $log_file)"
log "OK: $IMAGE ready in $(elapsed "$t1") ($BACKENDS backends); total $(elapsed "$t0")"
