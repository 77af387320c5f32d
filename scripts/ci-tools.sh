#!/usr/bin/env bash
# Installs, idempotently, what running .gitlab-ci.yml locally needs, into ./.tools:
#   Node 22 (npm package `node@22`), gitlab-ci-local under it, and Debian's rsync if missing
#   (gitlab-ci-local's shell executor copies the checkout with rsync).
# Prints the path of the gitlab-ci-local binary on stdout (everything else goes to stderr).
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="$PWD/.tools"
NODE_PREFIX="$TOOLS/node22"
GCL="$NODE_PREFIX/node_modules/.bin/gitlab-ci-local"

if ! command -v npm >/dev/null 2>&1; then
  echo "ci-tools: npm is not installed; install Node.js/npm (apt-get install -y npm) and rerun" >&2
  exit 3
fi

mkdir -p "$NODE_PREFIX"
if [ ! -x "$NODE_PREFIX/node_modules/.bin/node" ]; then
  echo "ci-tools: installing node@22 into $NODE_PREFIX" >&2
  npm install --prefix "$NODE_PREFIX" --no-audit --no-fund --loglevel=error node@22 >&2
fi
if [ ! -x "$GCL" ]; then
  echo "ci-tools: installing gitlab-ci-local into $NODE_PREFIX" >&2
  PATH="$NODE_PREFIX/node_modules/.bin:$PATH" \
    npm install --prefix "$NODE_PREFIX" --no-audit --no-fund --loglevel=error gitlab-ci-local@4.75.1 >&2
fi

if ! command -v rsync >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  echo "ci-tools: installing rsync" >&2
  if ! $SUDO apt-get install -y --no-install-recommends rsync >&2; then
    $SUDO apt-get update >&2
    $SUDO apt-get install -y --no-install-recommends rsync >&2
  fi
fi

echo "$GCL"
