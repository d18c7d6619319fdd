#!/usr/bin/env bash
# Build the toolkit's container image, hgd-toolkit:cpu (also tagged hgd-toolkit:gpu), with no
# network inside the build:
#   1. wheelhouse (host, needs the package index once): docker/wheelhouse/deps/ holds the pinned
#      runtime dependencies of pyproject.toml (pip download), docker/wheelhouse/project/ the toolkit
#      itself (pip wheel --no-deps .). The deps are downloaded again only when the pins change.
#   2. base image: $BASE_IMAGE if given; else python:3.11-slim if it is here or can be pulled; else
#      local/python:3.11-bookworm, made with debootstrap when missing (no registry on CI machines;
#      docs/guide/competition.md, Sandboxing with Docker).
#   3. docker build --network none --build-arg BASE_IMAGE=... -t hgd-toolkit:cpu .
#
# Usage: docker/build_image.sh [--base-only]
#   --base-only: only make sure the base image exists and print its name (the sandbox tests use it).
# Environment: BASE_IMAGE, IMAGE (default hgd-toolkit), DOCKER_HOST (default: the engine of
# docker/start_engine.sh when its socket exists), PYTHON (host python for pip, default python3).
#
# GPU: the :gpu tag is the same CPU image (TensorFlow-CPU), so metadata.json's container_gpu resolves
# everywhere. On a GPU machine, build a GPU variant instead, e.g. with a CUDA base image and
# tensorflow[and-cuda] in the wheelhouse, and tag that hgd-toolkit:gpu (the executor then passes
# the GPUs with a device request).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-hgd-toolkit}
PY=${PYTHON:-python3}
LOCAL_BASE=local/python:3.11-bookworm
WHEELHOUSE=docker/wheelhouse
# pip warns once per package about find-links folders of the host's pip configuration: not ours to fix
PIP_NOISE='is ignored: it is neither a file nor a directory'
if [ -z "${DOCKER_HOST:-}" ] && [ -S /tmp/dockerd/docker.sock ]; then
  export DOCKER_HOST=unix:///tmp/dockerd/docker.sock
fi
docker info >/dev/null 2>&1 || { echo "build_image.sh: no Docker engine answers (start one: docker/start_engine.sh)" >&2; exit 1; }

now() { date +%s; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

ensure_base() {
  if [ -n "${BASE_IMAGE:-}" ]; then
    echo "$BASE_IMAGE"; return
  fi
  if have_image python:3.11-slim || timeout 120 docker pull -q python:3.11-slim >/dev/null 2>&1; then
    echo python:3.11-slim; return
  fi
  if ! have_image "$LOCAL_BASE"; then
    local t0 rootfs
    t0=$(now)
    if [ "$(id -u)" -ne 0 ] || ! command -v debootstrap >/dev/null 2>&1; then
      echo "build_image.sh: python:3.11-slim cannot be pulled and building $LOCAL_BASE needs root and" \
           "debootstrap (docker/start_engine.sh installs it); or set BASE_IMAGE" >&2
      exit 1
    fi
    rootfs=$(mktemp -d /tmp/hgd-rootfs.XXXXXX)
    echo "building base image $LOCAL_BASE with debootstrap (about 90 s)" >&2
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
      bookworm "$rootfs" >"$rootfs.log" 2>&1 || { tail -n 30 "$rootfs.log" >&2; exit 1; }
    # apt's package lists and caches are not needed in the image
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
    tar -C "$rootfs" -c . | docker import -c 'CMD ["/bin/bash"]' - "$LOCAL_BASE" >/dev/null
    rm -rf "$rootfs" "$rootfs.log"
    echo "base image $LOCAL_BASE built in $(( $(now) - t0 )) s" >&2
  fi
  echo "$LOCAL_BASE"
}

BASE=$(ensure_base)
if [ "${1:-}" = "--base-only" ]; then
  echo "$BASE"
  exit 0
fi

# --- wheelhouse ---------------------------------------------------------------------------------
t0=$(now)
mkdir -p "$WHEELHOUSE/deps" "$WHEELHOUSE/project"
# The pinned runtime dependencies, straight from pyproject.toml.
"$PY" - >"$WHEELHOUSE/requirements.new" <<'PYEOF'
import tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
PYEOF
if ! cmp -s "$WHEELHOUSE/requirements.new" "$WHEELHOUSE/deps/requirements.txt"; then
  echo "downloading the runtime dependencies into $WHEELHOUSE/deps" >&2
  rm -rf "$WHEELHOUSE/deps"; mkdir -p "$WHEELHOUSE/deps"
  # Wheels for the image's platform (Linux x86_64, CPython 3.11, glibc <= 2.36 = Debian 12),
  # whatever the host runs. pip does not widen an explicit manylinux tag, so name each glibc.
  platforms=(--platform linux_x86_64 --platform manylinux2014_x86_64)
  for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
  "$PY" -m pip download -q -d "$WHEELHOUSE/deps" --only-binary=:all: "${platforms[@]}" \
    --python-version 3.11 --implementation cp -r "$WHEELHOUSE/requirements.new" 2> >(grep -v "$PIP_NOISE" >&2)
  # pip for the image's virtual environment too (the base's own pip may be old)
  "$PY" -m pip download -q -d "$WHEELHOUSE/deps" --only-binary=:all: --python-version 3.11 pip \
    2> >(grep -v "$PIP_NOISE" >&2)
  mv "$WHEELHOUSE/requirements.new" "$WHEELHOUSE/deps/requirements.txt"
else
  rm -f "$WHEELHOUSE/requirements.new"
fi
# The toolkit itself, rebuilt every time (the sources change more often than the pins). Built from
# a copy of what the wheel needs, so the checkout gets no build/ or egg-info from it.
rm -rf "$WHEELHOUSE/project"; mkdir -p "$WHEELHOUSE/project"
src=$(mktemp -d /tmp/hgd-wheel-src.XXXXXX)
# defense/ and baselines/: the shipped defenses, package data through the links in hgd/shipped/.
tar -cf - --exclude=__pycache__ --exclude="*.pyc" pyproject.toml README.md hgd defense baselines | tar -xf - -C "$src"
"$PY" -m pip wheel -q --no-deps -w "$WHEELHOUSE/project" "$src" 2> >(grep -v "$PIP_NOISE" >&2) >&2
rm -rf "$src"
echo "wheelhouse ready in $(( $(now) - t0 )) s ($(du -sh "$WHEELHOUSE" | cut -f1))" >&2

# --- image --------------------------------------------------------------------------------------
t0=$(now)
echo "building $IMAGE:cpu from $BASE" >&2
# The dependency stage gets a tag of its own: it is the build cache of the slow step (installing
# TensorFlow), and tagged it survives the pruning of superseded images below.
docker build -q --network none --build-arg BASE_IMAGE="$BASE" --target deps -t "$IMAGE:build-deps" . >/dev/null
docker build --network none --build-arg BASE_IMAGE="$BASE" -t "$IMAGE:cpu" .
docker tag "$IMAGE:cpu" "$IMAGE:gpu"   # same image: see the GPU note at the top
# Earlier builds of either stage, now untagged (only this toolkit's images: filtered by label)
docker image prune -f --filter label=org.opencontainers.image.title=hgd-toolkit >/dev/null
echo "image $IMAGE:cpu (also $IMAGE:gpu) built in $(( $(now) - t0 )) s," \
     "$(docker image inspect -f '{{.Size}}' "$IMAGE:cpu" | awk '{printf "%.2f GB", $1/1e9}')" >&2
