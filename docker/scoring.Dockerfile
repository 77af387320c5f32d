# The scoring service: `docker build -f docker/scoring.Dockerfile -t matchmaking-scoring .`
# Run: docker run -p 8000:8000 -e MATCHMAKING_SERVE_TRACKING_URI=http://mlflow:5000 \
#        -e MATCHMAKING_SERVE_HOT_CITIES=jakarta,bangkok matchmaking-scoring
# Settings: docs/serving.md. The image holds no model: models come from the registry at runtime.

# ---- build: resolve and install the pinned dependencies into a venv ---------------------------
FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# LightGBM needs libgomp at runtime; lleaves' llvmlite wheels are self-contained.
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
COPY serving ./serving
RUN pip install -c constraints.txt .

# ---- runtime: the venv, a non-root user, nothing else -----------------------------------------
FROM python:3.11.14-slim-bookworm AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
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
