"""Entry point of the scoring service process (``matchmaking serve`` calls ``run``)."""

from __future__ import annotations

import logging
import os

from pydantic import ValidationError

from matchmaking.errors import ConfigError
from matchmaking.markets import catalogue

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


def run(host: str | None = None, port: int | None = None, log_level: str | None = None) -> None:
    """Serve the app with uvicorn, one worker, until interrupted.

    The one settings path of every way of starting the service (``matchmaking serve``,
    ``make serve``, ``python -m serving.main``, the image): ``ServeSettings`` from the
    environment (``MATCHMAKING_SERVE_HOST``, ``_PORT``, ``_LOG_LEVEL``, ...); ``host``,
    ``port`` and ``log_level`` override them only when given (the CLI's options).
    """
    limit_native_threads()
    import uvicorn

    from serving.app import create_app
    from serving.logs import configure_logging
    from serving.settings import ServeSettings

    limit_loaded_pools()
    try:
        settings = ServeSettings()
    except ValidationError as exc:
        raise ConfigError(f"MATCHMAKING_SERVE_* settings are invalid:\n{exc}") from exc
    catalogue()  # read once, here: a bad MATCHMAKING_MARKETS file stops startup (exit 2)
    host = settings.host if host is None else host
    port = settings.port if port is None else port
    level = (log_level or settings.log_level).lower()
    configure_logging(level)
    app = create_app(settings)
    logger.info("listening on http://%s:%d", host, port)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=level,
        access_log=False,  # the app writes its own structured access log
        log_config=None,  # keep the JSON logging configured above
        workers=1,
    )


def main() -> None:
    """``python -m serving.main``: everything from ``MATCHMAKING_SERVE_*``."""
    run()


if __name__ == "__main__":
    main()
