#!/usr/bin/env bash
# Build both images (docker/scoring.Dockerfile, docker/pipeline.Dockerfile) with podman on a
# machine without a Docker engine or Docker Hub (this sandbox, CI runners like it), then print
# each image's size and the Python packages it holds, compared with constraints.txt.
#
#   scripts/build-images.sh            # or: make images
#
# What it does, each step skipped when already done:
#   1. installs podman and debootstrap from Debian's packages (apt-get) when missing;
#   2. makes the base image $BASE_IMAGE (a localhost/ name) when podman does not have it: a
#      Debian 12 minbase root filesystem (debootstrap) with python3 (3.11), python3-venv,
#      ca-certificates and libgomp1, slimmed as Debian's own slim images are (no docs, manual
#      pages or translations, and dpkg told to keep it so), apt caches removed, imported with
#      `podman import` (any other name is pulled by podman build);
#   3. builds both images with `podman build --isolation chroot` (unchanged layers come from
#      podman's cache, so a second run only rebuilds what changed), in Docker's image format
#      (OCI's has no HEALTHCHECK);
#   4. reports: size, user, and the installed distributions against constraints.txt (read from
#      the image's own files: `podman create` + `podman mount` + chroot, since `podman run`
#      does not work in this sandbox). Exit 1 if a distribution is missing from the
#      constraints or has another version there; 2 for a setup error (tools, base, CA bundle).
#
# Environment (all optional):
#   BASE_IMAGE      base of both images (default localhost/debian-python:bookworm-slim, made here;
#                   python:3.11.14-slim-bookworm, the Dockerfiles' default, works where
#                   Docker Hub is reachable)
#   SCORING_IMAGE   tag of the scoring image  (default localhost/matchmaking-scoring:dev)
#   PIPELINE_IMAGE  tag of the pipeline image (default localhost/matchmaking-pipeline:dev)
#   DEBIAN_MIRROR   debootstrap's mirror (default http://deb.debian.org/debian)
#   ONLY            "scoring" or "pipeline" to build one image
#   BUILD_CA_BUNDLE CA bundle pip inside the build trusts (default: $PIP_CERT when set, as on
#                   machines whose TLS to PyPI goes through an intercepting proxy); mounted
#                   read-only for the build's RUN steps, never copied into a layer
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=${BASE_IMAGE:-localhost/debian-python:bookworm-slim}
SCORING_IMAGE=${SCORING_IMAGE:-localhost/matchmaking-scoring:dev}
PIPELINE_IMAGE=${PIPELINE_IMAGE:-localhost/matchmaking-pipeline:dev}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ONLY=${ONLY:-}
BUILD_CA_BUNDLE=${BUILD_CA_BUNDLE:-${PIP_CERT:-}}
BASE_PACKAGES=python3,python3-venv,ca-certificates,libgomp1

log() { echo "== $*"; }
die() { echo "build-images: $*" >&2; exit 2; }

# ---- 1. tools -----------------------------------------------------------------------------
need=()
command -v podman >/dev/null || need+=(podman)
command -v debootstrap >/dev/null || need+=(debootstrap)
if ((${#need[@]})); then
  [[ $(id -u) == 0 ]] || die "missing ${need[*]}: install them (apt-get install ${need[*]}) or run as root"
  log "installing ${need[*]} (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
log "$(podman --version)"

# ---- 2. the Debian-made base ----------------------------------------------------------------
if ! podman image exists "$BASE_IMAGE" && [[ $BASE_IMAGE != localhost/* ]]; then
  log "$BASE_IMAGE is not in podman's store: podman build pulls it"
elif ! podman image exists "$BASE_IMAGE"; then
  root=$(mktemp -d /var/tmp/mm-base.XXXXXX)
  trap 'rm -rf "$root"' EXIT
  log "making $BASE_IMAGE: debootstrap minbase bookworm + $BASE_PACKAGES"
  start=$SECONDS
  debootstrap --variant=minbase --include="$BASE_PACKAGES" bookworm "$root/rootfs" \
    "$DEBIAN_MIRROR" >"$root/debootstrap.log" 2>&1 \
    || { tail -20 "$root/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
  # What debian:bookworm-slim (the official python image's base) leaves out, and dpkg's rule
  # that keeps it out of later installs: documentation but the copyright files, manual and
  # info pages, translations (46 MB of the 176 MB base here).
  printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
    'path-exclude /usr/share/man/*' 'path-exclude /usr/share/groff/*' \
    'path-exclude /usr/share/info/*' 'path-exclude /usr/share/lintian/*' \
    'path-exclude /usr/share/linda/*' 'path-exclude /usr/share/locale/*' \
    >"$root/rootfs/etc/dpkg/dpkg.cfg.d/docker-slim"
  find "$root/rootfs/usr/share/doc" -mindepth 1 -not -type d -not -name copyright -delete
  find "$root/rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$root"/rootfs/usr/share/{man,groff,info,lintian,linda,locale}/*
  # What an image does not need: downloaded .debs, package indexes, logs.
  rm -rf "$root"/rootfs/var/cache/apt/archives/*.deb "$root"/rootfs/var/lib/apt/lists/* \
    "$root"/rootfs/var/log/* "$root"/rootfs/tmp/*
  tar -C "$root/rootfs" --numeric-owner -c . | podman import \
    --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "$BASE_IMAGE" >/dev/null
  rm -rf "$root"
  trap - EXIT
  log "made $BASE_IMAGE in $((SECONDS - start)) s"
fi

# ---- 3. build -------------------------------------------------------------------------------
build() {  # build NAME TAG
  local start=$SECONDS ca=()
  if [[ -n $BUILD_CA_BUNDLE ]]; then
    [[ -r $BUILD_CA_BUNDLE ]] || die "BUILD_CA_BUNDLE=$BUILD_CA_BUNDLE: not a readable file"
    ca=(-v "$(realpath "$BUILD_CA_BUNDLE"):/run/build-ca.pem:ro" --build-arg PIP_CERT=/run/build-ca.pem)
  fi
  log "building $2 from docker/$1.Dockerfile on $BASE_IMAGE"
  podman build --isolation chroot --layers --format docker --build-arg "BASE_IMAGE=$BASE_IMAGE" "${ca[@]}" \
    -f "docker/$1.Dockerfile" -t "$2" .
  log "built $2 in $((SECONDS - start)) s"
}

# ---- 4. report ------------------------------------------------------------------------------
report() {  # report TAG
  local ctr mnt size user freeze
  size=$(podman image inspect --format '{{.Size}}' "$1")
  user=$(podman image inspect --format '{{.Config.User}}' "$1")
  ctr=$(podman create "$1" /bin/true)
  mnt=$(podman mount "$ctr")
  freeze=$(mktemp)
  local rc=0
  echo "== $1: $((size / 1000000)) MB, user ${user:-root}"
  # The image's own interpreter lists its own distributions.
  chroot "$mnt" /opt/venv/bin/python -c '
import importlib.metadata as m
for d in sorted(m.distributions(), key=lambda d: d.metadata["Name"].lower()):
    print(d.metadata["Name"] + "==" + d.version)
' >"$freeze" || rc=$?
  podman umount "$ctr" >/dev/null
  podman rm "$ctr" >/dev/null
  ((rc == 0)) || { rm -f "$freeze"; die "could not list the packages of $1"; }
  python3 - "$freeze" constraints.txt <<'EOF' || rc=$?
import re
import sys

def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()

def pins(path: str) -> dict[str, str]:
    out = {}
    for line in open(path):
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[norm(name)] = version.split(";", 1)[0].strip()
    return out

installed, constraints = pins(sys.argv[1]), pins(sys.argv[2])
# The venv's own tools and the project itself are not pinned in constraints.txt.
unpinned_ok = {"pip", "setuptools", "wheel", "matchmaking"}
bad = []
for name, version in sorted(installed.items()):
    want = constraints.get(name)
    if name in unpinned_ok:
        mark = "(not pinned)"
    elif want == version:
        mark = "= constraints.txt"
    else:
        mark = f"!= constraints.txt ({want or 'absent'})"
        bad.append(name)
    print(f"   {name}=={version}  {mark}")
print(f"   {len(installed)} distributions, {len(bad)} differ from constraints.txt")
sys.exit(1 if bad else 0)
EOF
  rm -f "$freeze"
  return "$rc"
}

status=0
images=()
[[ -z $ONLY || $ONLY == scoring ]] && images+=("scoring $SCORING_IMAGE")
[[ -z $ONLY || $ONLY == pipeline ]] && images+=("pipeline $PIPELINE_IMAGE")
((${#images[@]})) || die "ONLY=$ONLY: expected scoring or pipeline"
for spec in "${images[@]}"; do
  read -r name tag <<<"$spec"
  build "$name" "$tag"
done
for spec in "${images[@]}"; do
  read -r name tag <<<"$spec"
  report "$tag" || status=1
done
exit "$status"
