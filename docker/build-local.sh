#!/usr/bin/env bash
# Build the goodfit images (cpu and cuda targets of the Dockerfile) on a machine with no Docker
# engine and no Docker Hub, then check each the same way.
#
#   sudo docker/build-local.sh                 # as root, on Debian with podman, runc, debootstrap
#   sudo TARGETS=cuda docker/build-local.sh    # one image
#
# 1. The base: Debian bookworm with Python 3.11, made by debootstrap from the mirror apt already
#    uses and imported into podman as $BASE_IMAGE (skipped when that image exists).
# 2. Each image: `podman build --target cpu|cuda` of the Dockerfile, with pip pointed only at the
#    wheel folders and indexes this machine's pip configuration names (mounted read-only; PyPI
#    too where no index-url is configured, unless OFFLINE=1), with pip's CA bundle. The
#    Dockerfile's last builder step (docker/check-stack.py) fails the build when torch,
#    torchvision's compiled ops, timm, optuna or goodfit do not work together. The cpu target
#    needs the CPU builds of the pinned pair (torchvision ${TORCHVISION_VERSION}+cpu): when the
#    local sources have none and TORCH_CPU_INDEX is not set, the cpu image is not built and its
#    line says so (SKIP; the exit status is then 1).
# 3. The checks, in each image with no network: `--version`; `demo --quick`; a gate that must
#    exit 3 with its JUnit file; a 2-trial `goodfit search`; a class-adding `compare` (a 3-class
#    base against its 5-class fine-tune, gated: exit 0 with a loose limit, 3 with a strict one,
#    the base measured with its own head); outputs readable by another uid; `id -u` not 0.
#    Where a GPU is present (nvidia-smi), the cuda image also runs a compiled bf16 channels_last
#    step on it (docker/check-stack.py --gpu) and benchmarks/gpu_check.sh runs from the checkout.
#    It prints each image's build time and size and one line per check, and exits 1 if a check
#    failed or an image was skipped, 2 if it could not run.
#
# Flags this sandbox needs (harmless elsewhere): the runc runtime (crun fails on hybrid
# cgroups), chroot isolation, and ulimits no higher than the sandbox allows. The images are
# built in Docker's format, which keeps HEALTHCHECK (OCI's has none).
#
# Environment, all optional:
#   TARGETS (cpu cuda)   IMAGE (goodfit:local; the cuda image is $IMAGE-cuda)   CONTEXT (the
#   repository)   DOCKERFILE ($CONTEXT/Dockerfile)   BASE_IMAGE (localhost/pybase:bookworm)
#   MIRROR (the Debian mirror in apt's sources)   STORAGE (overlay; vfs where overlay fails)
#   TORCH_VERSION (2.14.1) TORCHVISION_VERSION (0.29.1): the pair both images pin
#   TORCH_CPU_INDEX (the first local index): where the +cpu builds are;  CPU_LOCAL (+cpu)
#   PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_CERT (from `pip config`)
#   OFFLINE=1: no PyPI, only the local sources (the first local index replaces it)
#   CACHE=1 reuses cached layers (the build time printed is then not a clean build's)
#     and keeps the builder stages' untagged images for the next build (without it they are removed)
#   BUILD=0 checks the images already built, without building
#   KEEP=1 keeps the images (default: kept; KEEP=0 removes them after the checks)
#   WORK (/var/tmp/goodfit-image): the base's root file system while it is made, the workspaces
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
TARGETS=${TARGETS:-cpu cuda}
IMAGE=${IMAGE:-goodfit:local}
CONTEXT=${CONTEXT:-$repo}
DOCKERFILE=${DOCKERFILE:-$CONTEXT/Dockerfile}
BASE_IMAGE=${BASE_IMAGE:-localhost/pybase:bookworm}
TORCH_VERSION=${TORCH_VERSION:-2.14.1}
TORCHVISION_VERSION=${TORCHVISION_VERSION:-0.29.1}
CPU_LOCAL=${CPU_LOCAL-+cpu}
WORK=${WORK:-/var/tmp/goodfit-image}

podman=(podman --storage-driver "${STORAGE:-overlay}" --runtime runc)
limits=(--ulimit nofile=1024:1024 --ulimit nproc=1000:1000)

die() { echo "build-local: $*" >&2; exit 2; }

[[ $(id -u) == 0 ]] || die "run as root: debootstrap and podman's storage need it"
for tool in podman runc debootstrap pip; do
  command -v "$tool" >/dev/null || die "$tool not found (apt-get install podman runc debootstrap)"
done
for target in $TARGETS; do
  [[ $target == cpu || $target == cuda ]] || die "TARGETS: $target is not cpu or cuda"
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
cert=${PIP_CERT:-$(pip_config global.cert)}
first_local=""
for src in $index $extra; do
  if [[ -z $first_local && $src == file://* ]]; then first_local=$src; fi
done
# With no index-url configured, pip asks PyPI as well as the local sources, as it does on this
# machine (the CUDA stack needs packages no local source has). OFFLINE=1 reads only what lies
# here, as an air-gapped build would: the first local index takes PyPI's place.
if [[ -z $index ]]; then
  if [[ ${OFFLINE:-0} == 1 ]]; then index=$first_local; else index=https://pypi.org/simple; fi
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
# pip's CA bundle (a proxy's own CA, say), mounted read-only where only pip looks.
if [[ -f ${cert% } ]]; then mounts+=(-v "${cert% }:/run/goodfit-pip-cert.pem:ro"); fi

# The cpu target reads torch and torchvision from TORCH_CPU_INDEX (plus the find-links
# folders). Unset, it is the local index, and the +cpu torchvision must lie in a local source.
cpu_skip=""
if [[ -z ${TORCH_CPU_INDEX:-} ]]; then
  TORCH_CPU_INDEX=${first_local:-${index% }}
  want="torchvision-${TORCHVISION_VERSION}${CPU_LOCAL}-"
  found=$(find "${!dirs[@]}" -maxdepth 2 \( -name "${want}*.whl" -o -name "${want//+/%2B}*.whl" \) \
            2>/dev/null | head -n 1)
  if [[ -z $found ]]; then
    have=$(find "${!dirs[@]}" -maxdepth 2 -name 'torchvision-*.whl' -printf '%f\n' 2>/dev/null \
             | sed -E 's/^torchvision-([^-]+)-.*/\1/' | sort -u | paste -sd ' ')
    cpu_skip="no ${want%-}*.whl in this machine's pip sources (torchvision there: ${have:-none});"
    cpu_skip+=" set TORCH_CPU_INDEX to an index with the CPU builds"
  fi
fi

common_args=(--build-arg "BASE=$BASE_IMAGE" --build-arg "TORCH_VERSION=$TORCH_VERSION"
             --build-arg "TORCHVISION_VERSION=$TORCHVISION_VERSION")
[[ -z $index ]] || common_args+=(--build-arg "PIP_INDEX_URL=${index% }")
[[ -z $extra ]] || common_args+=(--build-arg "PIP_EXTRA_INDEX_URL=${extra% }")
[[ -z $links ]] || common_args+=(--build-arg "PIP_FIND_LINKS=${links% }")
[[ ! -f ${cert% } ]] || common_args+=(--build-arg "PIP_CERT=/run/goodfit-pip-cert.pem")
cache=(--no-cache)
[[ ${CACHE:-0} == 1 ]] && cache=()

gpu=0
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then gpu=1; fi

results=()
figures=()
failed=0
record() {  # record NAME OK DETAIL
  if [[ $2 == 1 ]]; then results+=("PASS  $1: $3"); else results+=("FAIL  $1: $3"); failed=1; fi
}
: >"$WORK/checks.log"
rc_of() { local rc=0; "$@" >>"$WORK/checks.log" 2>&1 || rc=$?; echo "$rc"; }

# The class-adding update, as a table: old task classes 0-2, new task classes 3-4; the base is
# pretrained with a 3-row head, the fine-tune grows it to 5. Written into the workspace by the
# image's own python (numpy), so nothing but the image is needed.
CLASS_DATA='
import numpy as np
for name, n, cls, seed in (("old_train", 192, [0, 1, 2], 0), ("old_test", 90, [0, 1, 2], 1),
                           ("new_train", 128, [3, 4], 2), ("new_test", 60, [3, 4], 3)):
    rng = np.random.default_rng(seed)
    y = np.resize(np.asarray(cls), n).astype(np.int64)
    c = np.stack([np.cos(y * 2 * np.pi / 5), np.sin(y * 2 * np.pi / 5)], 1) * 3
    np.savez(f"classes/{name}.npz", x=(c + rng.normal(size=(n, 2))).astype(np.float32), y=y)
recipe = """name: classes
seed: 0
device: cpu
data_dir: .
model: {name: mlp, args: {in_features: 2, out_features: OUT, hidden: [16], norm: none}}
data:
  name: npz
  args:
    old: {train: old_train.npz, test: old_test.npz}
    new: {train: new_train.npz, test: new_test.npz}
old_task: {loss: cross_entropy, metrics: [accuracy]}
new_task: {loss: cross_entropy, metrics: [accuracy]}
pretrain: {optimizer: {name: adamw, lr: 1.0e-2}, steps: 60, batch_size: 32}
finetune: {optimizer: {name: adamw, lr: 1.0e-2}, steps: 20, batch_size: 32, arms: [adamw]}
eval: {every: 10, batch_size: 256}
"""
for name, out, new in (("base", 3, "old"), ("update", 5, "new")):  # the base knows no new task
    text = recipe.replace("OUT", str(out)).replace("new: {train: new_", f"new: {{train: {new}_")
    open(f"classes/{name}.yaml", "w").write(text.replace("test: new_", f"test: {new}_"))
'

check_image() {  # check_image TARGET IMAGE
  local target=$1 image=$2 ws out rc file mode
  # The workspace belongs to the image's user, as a CI checkout handed to it would.
  ws=$(mktemp -d "$WORK/workspace-$target.XXXXXX")
  chown 10001:10001 "$ws"
  chmod 0755 "$ws"
  local run=("${podman[@]}" run --rm --network none "${limits[@]}" -v "$ws:/workspace")
  echo "build-local: checking $image in $ws"

  out=$("${run[@]}" "$image" --version 2>>"$WORK/checks.log" || true)
  record "$target --version" "$([[ $out == "goodfit "* ]] && echo 1)" "$out"

  rc=$(rc_of "${run[@]}" "$image" demo --quick --out runs/demo)
  record "$target demo --quick" "$([[ $rc == 0 ]] && echo 1)" "exit $rc"

  rc=$(rc_of "${run[@]}" "$image" compare runs/demo/base runs/demo/finetune \
         --recipe runs/demo/finetune/recipe.yaml --max-old-drop 0 --junit junit.xml \
         --out runs/compare)
  record "$target gate --max-old-drop 0" "$([[ $rc == 3 && -s $ws/junit.xml ]] && echo 1)" \
         "exit $rc (3 expected), junit.xml $([[ -s $ws/junit.xml ]] && echo written || echo missing)"

  rc=$(rc_of "${run[@]}" "$image" search --base runs/demo/base/model.safetensors \
         --recipe runs/demo/finetune/recipe.yaml --trials 2 --no-defaults --out runs/search)
  record "$target search --trials 2" "$([[ $rc == 0 && -s $ws/runs/search/report.json ]] && echo 1)" \
         "exit $rc, report.json $([[ -s $ws/runs/search/report.json ]] && echo written || echo missing)"

  mkdir "$ws/classes" && chown 10001:10001 "$ws/classes"
  rc=$(rc_of "${run[@]}" --entrypoint python "$image" -c "$CLASS_DATA")
  [[ $rc == 0 ]] && rc=$(rc_of "${run[@]}" "$image" pretrain --recipe classes/base.yaml \
                           --out runs/classes-base)
  [[ $rc == 0 ]] && rc=$(rc_of "${run[@]}" "$image" finetune --recipe classes/update.yaml \
                           --base runs/classes-base/model.safetensors --out runs/classes-update \
                           --no-wise)
  local loose=x strict=x measured=missing
  if [[ $rc == 0 ]]; then
    loose=$(rc_of "${run[@]}" "$image" compare runs/classes-base runs/classes-update \
              --recipe classes/update.yaml --max-old-drop 1 --out runs/classes-loose)
    strict=$(rc_of "${run[@]}" "$image" compare runs/classes-base runs/classes-update \
               --recipe classes/update.yaml --max-old-drop 0 --max-nfr 0 \
               --out runs/classes-strict)
    measured=$(grep -o '"measured": "[a-z_]*"' "$ws/runs/classes-loose/report.json" 2>/dev/null \
                 | head -n 1 | cut -d'"' -f4 || true)
  fi
  record "$target compare, 3-class base vs 5-class update" \
         "$([[ $loose == 0 && $strict == 3 && $measured == exact ]] && echo 1)" \
         "loose gate exit $loose (0 expected), strict gate exit $strict (3 expected), base measured: ${measured:-missing} (exact expected)"

  # Read as a uid that is neither root nor the image's user: a CI runner or a teammate.
  for file in junit.xml runs/compare/report.html runs/demo/base/model.safetensors \
              runs/search/report.json; do
    rc=$(rc_of "${run[@]}" --user 10002:10002 --entrypoint cat "$image" "$file")
    mode=$(stat -c %a "$ws/$file" 2>/dev/null || echo missing)
    record "$target $file readable by uid 10002" "$([[ $rc == 0 ]] && echo 1)" "mode $mode"
  done

  out=$("${run[@]}" --entrypoint id "$image" -u 2>>"$WORK/checks.log" || true)
  record "$target id -u" "$([[ $out =~ ^[0-9]+$ && $out != 0 ]] && echo 1)" "$out"

  if [[ $target == cuda && $gpu == 1 ]]; then
    rc=$(rc_of "${run[@]}" --device nvidia.com/gpu=all --entrypoint python "$image" \
           /opt/venv/check-stack.py cuda "$TORCH_VERSION" "$TORCHVISION_VERSION" --gpu)
    record "$target compiled bf16 step on the GPU" "$([[ $rc == 0 ]] && echo 1)" "exit $rc"
    rc=$(rc_of env OUT="$ws" bash "$repo/benchmarks/gpu_check.sh")
    record "$target benchmarks/gpu_check.sh (from the checkout)" "$([[ $rc == 0 ]] && echo 1)" \
           "exit $rc, table in $ws/gpu_check.md"
  fi
}

# ------------------------------------------------------------------------ the builds and checks
dangling_images() { "${podman[@]}" images -q --filter dangling=true | sort -u; }
for target in $TARGETS; do
  image=$IMAGE
  [[ $target == cuda ]] && image=$IMAGE-cuda
  if [[ $target == cpu && -n $cpu_skip ]]; then
    results+=("SKIP  cpu image: $cpu_skip")
    failed=1
    continue
  fi
  args=("${common_args[@]}")
  if [[ $target == cpu ]]; then
    args+=(--build-arg "TORCH_CPU_INDEX=$TORCH_CPU_INDEX" --build-arg "CPU_LOCAL=$CPU_LOCAL")
  fi
  how="clean build"
  [[ ${CACHE:-0} == 1 ]] && how="build with cached layers"
  if [[ ${BUILD:-1} == 1 ]]; then
    echo "build-local: building $image (target $target, torch $TORCH_VERSION, torchvision $TORCHVISION_VERSION)"
    start=$SECONDS
    rc=0
    dangling=$(dangling_images)
    "${podman[@]}" build --format docker --isolation chroot --network host "${limits[@]}" \
      "${cache[@]}" "${mounts[@]}" "${args[@]}" --target "$target" -f "$DOCKERFILE" -t "$image" \
      "$CONTEXT" || rc=$?
    build_s=$((SECONDS - start))
    # The builder stages stay behind as untagged images (the cuda builder's is ~6 GB), a new set
    # per clean build: remove the ones this build made, unless CACHE=1 keeps them for the next.
    if [[ ${CACHE:-0} != 1 ]]; then
      comm -13 <(echo "$dangling") <(dangling_images) \
        | xargs -r "${podman[@]}" rmi >/dev/null 2>&1 || true
    fi
    if [[ $rc != 0 ]]; then
      record "$target build" 0 "podman build exit $rc after ${build_s} s (the build output above says why)"
      continue
    fi
  else
    how="not rebuilt (BUILD=0)"
    build_s="-"
    "${podman[@]}" image exists "$image" || die "BUILD=0: no image $image to check"
  fi
  size=$("${podman[@]}" image inspect --format '{{.Size}}' "$image")
  id=$("${podman[@]}" image inspect --format '{{.Id}}' "$image" | cut -c1-12)
  figures+=("$target image  $image ($id): $how ${build_s} s, size $((size / 1000000)) MB ($size bytes)")
  record "$target build" 1 "$how ${build_s} s, $((size / 1000000)) MB"
  check_image "$target" "$image"
  [[ ${KEEP:-1} == 1 ]] || "${podman[@]}" rmi "$image" >/dev/null
done

# ----------------------------------------------------------------------------------- the figures
echo
printf '%s\n' "${figures[@]}"
echo "log          $WORK/checks.log"
printf '%s\n' "${results[@]}"
exit "$failed"
