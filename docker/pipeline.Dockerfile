# The pipeline image: the matchmaking package, mlproject/ and dags/, for
#   - MLflow Projects runs (CI's train job, Airflow tasks):
#       docker run --rm -e MLFLOW_TRACKING_URI=http://mlflow:5000 -e MATCHMAKING_DATA_DIR=/data \
#         -v lake:/data matchmaking-pipeline \
#         mlflow run mlproject -e main -P city=jakarta -P end=2026-10-02 --env-manager local
#   - the CLI (`matchmaking promote --all-cities`, CI's promote/rollback jobs),
#   - Airflow's official chart (images.airflow: scheduler, API server, KubernetesExecutor task pods),
#   - the MLflow tracking server of helm/matchmaking (`mlflow server`, PostgreSQL via psycopg2,
#     S3 artifacts via boto3, `--app-name basic-auth` via Flask-WTF).
# Build: docker build -f docker/pipeline.Dockerfile -t matchmaking-pipeline .
#        (--build-arg EXTRAS=deploy leaves Airflow out for a smaller image that only runs projects)
# Everything installs with -c constraints.txt, the `deploy` extra included.
#
# BASE_IMAGE: any Debian 12 image with CPython 3.11 and its venv module. The default is the
# official slim image; scripts/build-images.sh builds on a Debian-made one (debootstrap minbase
# with python3, python3-venv, ca-certificates, libgomp1, slimmed as debian:bookworm-slim is)
# where Docker Hub is out of reach.
# Only `python3` is used before the venv exists (the official image also has `python`,
# Debian's does not); inside the venv both names exist.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm

# ---- build: the venv with the package and its pinned dependencies ---------------------------
FROM ${BASE_IMAGE} AS build
# PIP_CERT: a CA bundle for a TLS-intercepting proxy between the build and the package index,
# mounted for the build only (scripts/build-images.sh passes the host's); empty: pip's own.
# Build stage only: it reaches neither the runtime stage nor the image's history.
ARG PIP_CERT=""
ARG EXTRAS=airflow,deploy
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# The project lives at /app in both stages and is installed editable, so the repository layout
# holds inside the image: matchmaking.pipeline.PROJECT_DIR (src/../mlproject) is /app/mlproject,
# which `matchmaking pipeline` (the `main` entry point) and the DAG tasks run.
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
# The dependencies first, in layers of their own: installed from the project's metadata with
# placeholder packages, so an edit to the code reuses them.
RUN mkdir -p src/matchmaking serving \
    && touch src/matchmaking/__init__.py serving/__init__.py \
    && pip install -c constraints.txt ".${EXTRAS:+[$EXTRAS]}" \
    && pip uninstall -y matchmaking \
    && rm -rf src serving build
# Smaller runtime, same behaviour: the wheels' test suites go, and their shared libraries lose
# the symbols nothing links against (llvmlite's: 133 -> 104 MB, pyarrow's: -19 MB). Not the
# libraries auditwheel rewrote with patchelf (vendored under *.libs/, or with an RPATH into such
# a directory): stripped, they no longer load (numpy's OpenBLAS: "ELF load command
# address/offset not page-aligned"). binutils (strip, readelf) exists only in this stage.
RUN apt-get update && apt-get install -y --no-install-recommends binutils \
    && rm -rf /var/lib/apt/lists/* \
    && find /opt/venv -depth -type d -name tests -exec rm -rf {} + \
    && find /opt/venv -type f \( -name '*.so' -o -name '*.so.[0-9]*' \) -not -path '*.libs/*' \
        -exec sh -c 'for f; do readelf -d "$f" | grep -E "RPATH|RUNPATH" | grep -q "\.libs" || strip --strip-unneeded "$f"; done' sh {} +
# .dockerignore lets only pyproject.toml, constraints.txt, README.md, src/, serving/, mlproject/
# and dags/ through; dags/ may be absent (the DAGs also arrive by git-sync), hence the mkdir.
COPY . .
RUN mkdir -p dags \
    && pip install --no-deps -c constraints.txt -e . \
    && find /opt/venv /app -name '__pycache__' -type d -prune -exec rm -rf {} +

# ---- runtime: the venv, the project files, a non-root user, no compilers ----------------------
FROM ${BASE_IMAGE} AS runtime
ARG MATCHMAKING_GIT_COMMIT=""
# libgomp1: LightGBM's OpenMP runtime. The official slim image lacks it; a base that has it
# (the Debian-made one) needs no apt-get, hence no package index or mirror. No git: runs take
# their source version from MATCHMAKING_GIT_COMMIT (or CI_COMMIT_SHA in CI), GitPython stays
# quiet without the binary.
RUN if [ "$(dpkg-query -W -f='${db:Status-Status}' libgomp1 2>/dev/null)" != installed ]; then \
        apt-get update && apt-get install -y --no-install-recommends libgomp1 \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && useradd --system --uid 10001 --gid 0 --home-dir /opt/airflow --create-home app \
    && mkdir -p /app /data \
    && chown 10001:0 /data /opt/airflow \
    && chmod g+rwX /data /opt/airflow
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GIT_PYTHON_REFRESH=quiet \
    MATCHMAKING_GIT_COMMIT=${MATCHMAKING_GIT_COMMIT} \
    MATCHMAKING_DATA_DIR=/data \
    MPLCONFIGDIR=/tmp/matplotlib \
    AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/app/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False
USER 10001
WORKDIR /app
# No long-running server by default: probes belong to whatever runs the image (the chart's
# tracking server probes /health; Airflow's chart brings its own probes).
HEALTHCHECK NONE
CMD ["matchmaking", "--help"]
