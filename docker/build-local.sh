#!/usr/bin/env bash
# Build the goodfit image on a machine with no Docker engine and no Docker Hub, then run it.
#
#   sudo docker/build-local.sh          # as root, on Debian with podman, runc and debootstrap
#
# 1. The base: Debian bookworm with Python 3.11, made by debootstrap from the mirror apt already
#    uses and imported into podman as $BASE_IMAGE (skipped when that image exists).
# 2. The image: `podman build` of the Dockerfile, with pip pointed at the wheel folders and
#    indexes this machine's pip configuration names (mounted read-only into the build) and the
#    CPU torch wheel found there. Chroot isolation needs the host network, but pip is given only
#    local sources.
# 3. The checks, in the image with no network: `--version`; `demo --quick`; a gate that must
#    exit 3 with a JUnit file; that file, the report and a checkpoint readable by another uid;
#    `id -u` not 0. It prints the build time, the image size and one line per check, and exits
#    1 if a check failed, 2 if it could not run.
#
# Flags this sandbox needs (harmless elsewhere): vfs storage, the runc runtime (crun fails on
# hybrid cgroups), chroot isolation, and ulimits no higher than the sandbox allows. The image is
# built in Docker's format, which keeps HEALTHCHECK (OCI's has none).
#
# Environment, all optional:
#   IMAGE (goodfit:local)   CONTEXT (the repository)   DOCKERFILE ($CONTEXT/Dockerfile)
#   BASE_IMAGE (localhost/pybase:bookworm)   MIRROR (the Debian mirror in apt's sources)
#   TORCH_VERSION (2.13.0) TORCHVISION_VERSION (0.28.0): the CPU torch wheel on this machine
#   TORCH_INDEX (the first local index with torchvision)
#   PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS (from `pip config`)
#   CACHE=1 reuses cached layers (the build time printed is then not a clean build's)
#   WORK (/var/tmp/goodfit-image): the base's root file system while it is made, the workspace
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
IMAGE=${IMAGE:-goodfit:local}
CONTEXT=${CONTEXT:-$repo}
DOCKERFILE=${DOCKERFILE:-$CONTEXT/Dockerfile}
BASE_IMAGE=${BASE_IMAGE:-localhost/pybase:bookworm}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCHVISION_VERSION=${TORCHVISION_VERSION:-0.28.0}
WORK=${WORK:-/var/tmp/goodfit-image}

podman=(podman --storage-driver vfs --runtime runc)
limits=(--ulimit nofile=1024:1024 --ulimit nproc=1000:1000)

die() { echo "build-local: $*" >&2; exit 2; }

[[ $(id -u) == 0 ]] || die "run as root: debootstrap and podman's vfs storage need it"
for tool in podman runc debootstrap pip; do
  command -v "$tool" >/dev/null || die "$tool not found (apt-get install podman runc debootstrap)"
done
mkdir -p "$WORK"

# ------------------------------------------------------------------------------------- the base
# The first Debian (not -security) URI in apt's sources, one-line or deb822 format.
apt_mirror() {
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
      2>/dev/null \
    | sed -n -E -e 's/^URIs:[[:space:]]*([^[:space:]]+).*/\1/p' \
                -e 's/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p' \
    | grep -E '/debian/?$' | head -n 1 || true
}

if ! "${podman[@]}" image exists "$BASE_IMAGE"; then
  MIRROR=${MIRROR:-$(apt_mirror)}
  [[ -n $MIRROR ]] || die "no Debian mirror in /etc/apt/sources.list*; set MIRROR"
  echo "build-local: making $BASE_IMAGE with debootstrap from $MIRROR"
  rootfs=$WORK/rootfs
  rm -rf "$rootfs"
  debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates,passwd \
    bookworm "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || die "debootstrap failed; see $WORK/debootstrap.log"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | "${podman[@]}" import --change 'CMD ["python3"]' - "$BASE_IMAGE"
  rm -rf "$rootfs"
fi

# ------------------------------------------------------------------------------ pip's sources
pip_config() { pip config get "$1" 2>/dev/null | tr '\n' ' ' || true; }
index=${PIP_INDEX_URL:-$(pip_config global.index-url)}
extra=${PIP_EXTRA_INDEX_URL:-$(pip_config global.extra-index-url)}
links=${PIP_FIND_LINKS:-$(pip_config global.find-links)}
# With no index-url configured, pip would also ask PyPI; the build is to read only what lies on
# this machine (as an air-gapped build would), so the first local index takes PyPI's place.
# It stays among the extra indexes too: the torch line replaces the index with TORCH_INDEX.
if [[ -z $index ]]; then
  for src in $extra; do
    if [[ -z $index && $src == file://* ]]; then index=$src; fi
  done
fi

# Each local source is mounted at the same path, read-only: a find-links folder as it is, a
# file:// index with its parent (a simple index links to ../../files).
declare -A dirs=()
for src in $index $extra; do
  if [[ $src == file://* ]]; then dirs[$(dirname "${src#file://}")]=1; fi
done
for src in $links; do
  src=${src#file://}
  if [[ -d $src ]]; then dirs[$src]=1; fi
done
mounts=()
for dir in "${!dirs[@]}"; do mounts+=(-v "$dir:$dir:ro"); done

TORCH_INDEX=${TORCH_INDEX:-}
for src in $index $extra; do
  if [[ -z $TORCH_INDEX && $src == file://* && -d ${src#file://}/torchvision ]]; then
    TORCH_INDEX=$src
  fi
done
[[ -n $TORCH_INDEX ]] || die "no local index has torchvision; set TORCH_INDEX"

build_args=(--build-arg "BASE=$BASE_IMAGE" --build-arg "TORCH_INDEX=$TORCH_INDEX"
            --build-arg "TORCH_VERSION=$TORCH_VERSION"
            --build-arg "TORCHVISION_VERSION=$TORCHVISION_VERSION")
[[ -z $index ]] || build_args+=(--build-arg "PIP_INDEX_URL=${index% }")
[[ -z $extra ]] || build_args+=(--build-arg "PIP_EXTRA_INDEX_URL=${extra% }")
[[ -z $links ]] || build_args+=(--build-arg "PIP_FIND_LINKS=${links% }")
cache=(--no-cache)
[[ ${CACHE:-0} == 1 ]] && cache=()

# ------------------------------------------------------------------------------------ the build
echo "build-local: building $IMAGE from $DOCKERFILE (torch $TORCH_VERSION from $TORCH_INDEX)"
start=$SECONDS
"${podman[@]}" build --format docker --isolation chroot --network host "${limits[@]}" \
  "${cache[@]}" "${mounts[@]}" "${build_args[@]}" -f "$DOCKERFILE" -t "$IMAGE" "$CONTEXT"
build_s=$((SECONDS - start))
size=$("${podman[@]}" image inspect --format '{{.Size}}' "$IMAGE")

# ----------------------------------------------------------------------------------- the checks
# The workspace belongs to the image's user, as a CI checkout handed to it would.
ws=$(mktemp -d "$WORK/workspace.XXXXXX")
chown 10001:10001 "$ws"
chmod 0755 "$ws"
run=("${podman[@]}" run --rm --network none "${limits[@]}" -v "$ws:/workspace")

results=()
failed=0
record() {  # record NAME OK DETAIL
  if [[ $2 == 1 ]]; then results+=("PASS  $1: $3"); else results+=("FAIL  $1: $3"); failed=1; fi
}
rc_of() { local rc=0; "$@" >>"$WORK/checks.log" 2>&1 || rc=$?; echo "$rc"; }
: >"$WORK/checks.log"

out=$("${run[@]}" "$IMAGE" --version 2>>"$WORK/checks.log" || true)
record "--version" "$([[ $out == "goodfit "* ]] && echo 1)" "$out"

rc=$(rc_of "${run[@]}" "$IMAGE" demo --quick --out runs/demo)
record "demo --quick" "$([[ $rc == 0 ]] && echo 1)" "exit $rc"

rc=$(rc_of "${run[@]}" "$IMAGE" compare runs/demo/base runs/demo/finetune \
       --recipe runs/demo/finetune/recipe.yaml --max-old-drop 0 --junit junit.xml \
       --out runs/compare)
record "gate --max-old-drop 0" "$([[ $rc == 3 ]] && echo 1)" "exit $rc (3 expected)"

# Read as a uid that is neither root nor the image's user: a CI runner or a teammate.
for file in junit.xml runs/compare/report.html runs/demo/base/model.safetensors; do
  rc=$(rc_of "${run[@]}" --user 10002:10002 --entrypoint cat "$IMAGE" "$file")
  mode=$(stat -c %a "$ws/$file" 2>/dev/null || echo missing)
  record "$file readable by uid 10002" "$([[ $rc == 0 ]] && echo 1)" "mode $mode"
done

out=$("${run[@]}" --entrypoint id "$IMAGE" -u 2>>"$WORK/checks.log" || true)
record "id -u" "$([[ $out =~ ^[0-9]+$ && $out != 0 ]] && echo 1)" "$out"

# ----------------------------------------------------------------------------------- the figures
echo
echo "image        $IMAGE ($("${podman[@]}" image inspect --format '{{.Id}}' "$IMAGE" | cut -c1-12))"
echo "build time   ${build_s} s$([[ ${CACHE:-0} == 1 ]] && echo ' (cached layers reused)')"
echo "image size   $((size / 1000000)) MB ($size bytes)"
echo "workspace    $ws (log: $WORK/checks.log)"
printf '%s\n' "${results[@]}"
exit "$failed"
