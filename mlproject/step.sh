#!/usr/bin/env bash
# One matchmaking command for an MLproject entry point: `bash step.sh <command> [options]`.
#
# Working directory: the repository root (the directory holding mlproject/), not mlproject/
# where MLflow starts entry points, so that relative locations (the default data dir `data`,
# a relative MATCHMAKING_LAKE_URI or -P features=...) mean what they mean for the CLI run from
# the root, as the README does. `matchmaking pipeline` and the DAG tasks pass absolute ones.
#
# Interpreter: the one of the environment that launched the run, not a `matchmaking` on PATH:
#   1. $MATCHMAKING_PYTHON: set by matchmaking itself (pipeline, DAG tasks) to its interpreter;
#   2. the active virtualenv's python ($VIRTUAL_ENV: an activated venv, --env-manager virtualenv);
#   3. the project's .venv (what `make` installs), so `.venv/bin/mlflow run` needs no PATH;
#   4. python on PATH (the pipeline image puts its venv first on PATH).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -n "${MATCHMAKING_PYTHON:-}" ]]; then
    python="$MATCHMAKING_PYTHON"
elif [[ -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/python" ]]; then
    python="$VIRTUAL_ENV/bin/python"
elif [[ -x .venv/bin/python ]]; then
    python="$PWD/.venv/bin/python"
else
    python=python
fi
exec "$python" -m matchmaking "$@"
