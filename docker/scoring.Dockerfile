# The scoring service: `docker build -f docker/scoring.Dockerfile -t matchmaking-scoring .`
# Run: docker run -p 8000:8000 -e MATCHMAKING_SERVE_TRACKING_URI=http://mlflow:5000 \
#        -e MATCHMAKING_SERVE_HOT_CITIES=jakarta,bangkok matchmaking-scoring
# Settings: docs/serving.md. The image holds no model: models come from the registry at runtime.
#
# BASE_IMAGE: any Debian 12 image with CPython 3.11 and its venv module. The default is the
# official slim image; scripts/build-images.sh builds on a Debian-made one (debootstrap minbase
# with python3, python3-venv, ca-certificates, libgomp1, slimmed as debian:bookworm-slim is)
# where Docker Hub is out of reach.
# Only `python3` is used before the venv exists (the official image also has `python`,
# Debian's does not); inside the venv both names exist.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm

# ---- build: resolve and install the pinned dependencies into a venv ---------------------------
FROM ${BASE_IMAGE} AS build
# PIP_CERT: a CA bundle for a TLS-intercepting proxy between the build and the package index,
# mounted for the build only (scripts/build-images.sh passes the host's); empty: pip's own.
# Build stage only: it reaches neither the runtime stage nor the image's history.
ARG PIP_CERT=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml constraints.txt ./
# The service's own dependencies, not the package's: pyproject.toml's `serving` group (the modules
# it imports at run time, mlflow-skinny for mlflow's client), pinned by constraints.txt, in a
# layer of its own so an edit to src/ or serving/ reuses it. Debian's venv has pip 23, which
# lacks --group: the list is read with tomllib.
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['dependency-groups']['serving']))" >serving.txt \
    && pip install -c constraints.txt -r serving.txt
# Smaller runtime, same behaviour:
# - the wheels' test suites go;
# - a library a wheel ships under several names (wheels hold no symlinks: pyarrow's
#   libarrow_python.so, .so.2500, .so.2500.1.0) becomes one file, its SONAME, and links to it;
# - shared libraries lose the symbols nothing links against (llvmlite's: 133 -> 104 MB,
#   pyarrow's: -19 MB), except the ones auditwheel rewrote with patchelf (vendored under
#   *.libs/, or with an RPATH into such a directory): stripped, they no longer load (numpy's
#   OpenBLAS: "ELF load command address/offset not page-aligned");
# - pyarrow keeps its Parquet, compute and filesystem libraries but not Arrow Flight (its RPC
#   framework, 38 MB, which nothing here imports: `import pyarrow.flight` says it is not built
#   in), nor its C++/Cython headers and sources.
# binutils (strip, readelf) exists only in this stage.
RUN apt-get update && apt-get install -y --no-install-recommends binutils \
    && rm -rf /var/lib/apt/lists/* \
    && find /opt/venv -depth -type d -name tests -exec rm -rf {} + \
    && find /opt/venv -type f -name 'lib*.so*' -exec sh -c 'for f; do \
            so=$(readelf -d "$f" | sed -n "s/.*(SONAME).*\[\(.*\)\]/\1/p"); d=$(dirname "$f"); \
            if [ -n "$so" ] && [ "$so" != "${f##*/}" ] && [ -f "$d/$so" ] && cmp -s "$f" "$d/$so"; then \
                ln -sf "$so" "$f"; fi; done' sh {} + \
    && find /opt/venv -type f \( -name '*.so' -o -name '*.so.[0-9]*' \) -not -path '*.libs/*' \
        -exec sh -c 'for f; do readelf -d "$f" | grep -E "RPATH|RUNPATH" | grep -q "\.libs" || strip --strip-unneeded "$f"; done' sh {} + \
    && pa=/opt/venv/lib/python3.11/site-packages/pyarrow \
    && rm -rf "$pa/include" "$pa/includes" "$pa/src" "$pa"/*.pxd "$pa"/*.pxi "$pa"/*.pyx \
        "$pa"/_flight.*.so "$pa"/libarrow_flight.so* "$pa"/libarrow_python_flight.so*
COPY README.md ./
COPY src ./src
COPY serving ./serving
# The package without its declared dependencies (the group above is what it needs here), then
# no installer: pip and setuptools have no use at run time. Bytecode: the root filesystem is
# read-only in the cluster, so what the service imports is compiled here, once, or it would be
# compiled again at every pod start; the modules it never imports (most of mlflow's flavours,
# scipy's other subpackages, the CLI's side of the package) ship as source only. `python -P`:
# the installed serving package, not the source tree in this directory.
RUN pip install --no-deps -c constraints.txt . \
    && pip uninstall -y pip setuptools \
    && find /opt/venv -name __pycache__ -type d -prune -exec rm -rf {} + \
    && python -P -c "import serving.main, serving.app, serving.models, uvicorn.main, uvicorn.loops.auto, uvicorn.protocols.http.auto, uvicorn.lifespan.on, pyarrow.parquet, lleaves, mlflow.artifacts, mlflow.store.artifact.artifact_repository_registry"

# ---- runtime: the venv, a non-root user, nothing else -----------------------------------------
FROM ${BASE_IMAGE} AS runtime
# libgomp1: LightGBM's OpenMP runtime. The official slim image lacks it; a base that has it
# (the Debian-made one) needs no apt-get, hence no package index or mirror.
RUN if [ "$(dpkg-query -W -f='${db:Status-Status}' libgomp1 2>/dev/null)" != installed ]; then \
        apt-get update && apt-get install -y --no-install-recommends libgomp1 \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && useradd --system --uid 10001 --home-dir /home/app --create-home app
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OMP_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    MATCHMAKING_SERVE_HOST=0.0.0.0 \
    MATCHMAKING_SERVE_PORT=8000 \
    TMPDIR=/tmp
USER 10001
WORKDIR /home/app
EXPOSE 8000
# A read-only root filesystem works with a writable /tmp (model downloads are staged there).
HEALTHCHECK --interval=10s --timeout=2s --start-period=30s \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["python", "-m", "serving.main"]
