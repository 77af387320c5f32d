"""Entry point of the scoring service process (``matchmaking serve`` calls ``run``)."""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

# One request = one small single-threaded predict; native thread pools only add contention.
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def limit_native_threads() -> None:
    """Pin OpenMP/BLAS pools to one thread (unless the operator set them explicitly)."""
    for var in THREAD_ENV:
        os.environ.setdefault(var, "1")


def limit_loaded_pools() -> None:
    """Also cap pools of native libraries already loaded (numpy's BLAS, LightGBM's OpenMP)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        return
    threadpool_limits(limits=1)


def run(host: str, port: int, log_level: str = "info") -> None:
    """Serve the app with uvicorn, one worker, until interrupted.

    Settings (``MATCHMAKING_SERVE_*``) are read from the environment; ``host``, ``port`` and
    ``log_level`` come from the caller (the CLI passes its options).
    """
    limit_native_threads()
    import uvicorn

    from serving.app import create_app
    from serving.logs import configure_logging
    from serving.settings import ServeSettings

    limit_loaded_pools()
    configure_logging(log_level)
    settings = ServeSettings()
    app = create_app(settings)
    logger.info("listening on http://%s:%d", host, port)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level.lower(),
        access_log=False,  # the app writes its own structured access log
        log_config=None,  # keep the JSON logging configured above
        workers=1,
    )


def main() -> None:
    """``python -m serving.main``: host and port from ``MATCHMAKING_SERVE_HOST/PORT``."""
    from serving.settings import ServeSettings

    settings = ServeSettings()
    run(settings.host, settings.port, settings.log_level)


if __name__ == "__main__":
    main()
