"""Compiled forests, built in the background and swapped in when ready.

A model serves with LightGBM's own predict the moment it is loaded; compiling its forest with
lleaves takes seconds of pure-Python code generation and LLVM work, so it never runs on the
request path nor in the serving process's interpreter: a pool of at most ``compile_workers``
worker processes (spawned, niced) writes the native object file, then a thread of the service
loads that file (milliseconds), checks the compiled forest against ``Booster.predict`` on rows
spanning every feature's range (1e-9), and hands the model back to be republished with it: one
reference assignment, so requests in flight finish on the plain booster and later ones use the
compiled forest.

Object files are named by model, version and run (``compile_cache_dir`` when configured, so a
restart does not recompile; else a directory of this process, removed at shutdown).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from matchmaking.features.core import FloatArray
from serving import forest_worker
from serving.metrics import Metrics
from serving.models import _CHECK_TOLERANCE, LoadedModel, Predictor, check_rows

logger = logging.getLogger(__name__)


def lleaves_available() -> bool:
    """Whether lleaves can be imported (it is an optional speed-up)."""
    try:
        import lleaves  # noqa: F401
    except ImportError:
        return False
    return True


def load_compiled(model_text: str, object_file: Path) -> Predictor:
    """The predictor of an already compiled forest (loads the object file; no compilation)."""
    import lleaves

    with tempfile.TemporaryDirectory(prefix="mm-lleaves-") as tmp:
        path = Path(tmp) / "model.txt"
        path.write_text(model_text)
        model = lleaves.Model(model_file=str(path))
        model.compile(cache=str(object_file))

    def predict(matrix: FloatArray) -> FloatArray:
        return np.asarray(model.predict(matrix, n_jobs=1), dtype=np.float64)

    return predict


def compiled_gap(predict: Predictor, booster: object) -> float:
    """Largest difference between ``predict`` and ``Booster.predict`` on the check rows."""
    rows = check_rows(booster.num_feature())  # type: ignore[attr-defined]
    expected = booster.predict(rows, num_threads=1)  # type: ignore[attr-defined]
    return float(np.max(np.abs(predict(rows) - expected)))


Publish = Callable[[LoadedModel], bool]


class Compiler:
    """Compiles loaded models' forests off the request path, ``workers`` at a time.

    ``submit(model, publish)`` returns at once; when the compiled forest is ready and checked,
    ``publish(model.with_compiled(...))`` is called from a background thread (it returns False
    when that version is no longer the one served: evicted or replaced meanwhile).
    """

    def __init__(
        self,
        metrics: Metrics,
        workers: int = 1,
        cache_dir: Path | None = None,
        enabled: bool = True,
    ) -> None:
        self.metrics = metrics
        self.workers = workers
        self.enabled = enabled and lleaves_available()
        if enabled and not self.enabled:
            logger.warning("lleaves is not installed: models serve with LightGBM's predict")
        self._own_dir: Path | None = None
        self.cache_dir = cache_dir
        self._pool: cf.ProcessPoolExecutor | None = None
        # One thread per worker process waits for its compilation, loads and checks the result:
        # a thousand cold models queue here, never a thousand threads.
        self._threads = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="compile")
        self._lock = threading.Lock()
        self._pending: set[tuple[str, str]] = set()
        self._closed = False

    def object_file(self, model: LoadedModel) -> Path:
        """Where the compiled forest of ``model``'s version is (or will be) stored."""
        folder = self.cache_dir if self.cache_dir is not None else self._own_folder()
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{model.name}-v{model.version}-{model.ref.run_id or 'run'}.so"

    def _own_folder(self) -> Path:
        with self._lock:
            if self._own_dir is None:
                self._own_dir = Path(tempfile.mkdtemp(prefix="mm-compiled-"))
            return self._own_dir

    def submit(self, model: LoadedModel, publish: Publish) -> bool:
        """Schedule the compilation of ``model``'s forest; False when it will not be compiled
        (disabled, shutting down, or already scheduled)."""
        if not self.enabled or model.compiled is not None:
            return False
        key = (model.name, model.version)
        with self._lock:
            if self._closed or key in self._pending:
                return False
            self._pending.add(key)
            self.metrics.compiles_pending.set(len(self._pending))
        self._threads.submit(self._run, model, publish, key)
        return True

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def shutdown(self) -> None:
        """Cancel queued compilations, wait for running ones, remove this process's files."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        self._threads.shutdown(wait=False, cancel_futures=True)
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)

    # -- internals -------------------------------------------------------------------------

    def _executor(self) -> cf.ProcessPoolExecutor:
        with self._lock:
            if self._closed:
                raise RuntimeError("compiler is shut down")
            if self._pool is None:
                self._pool = cf.ProcessPoolExecutor(
                    max_workers=self.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=forest_worker.init,
                )
            return self._pool

    def _run(self, model: LoadedModel, publish: Publish, key: tuple[str, str]) -> None:
        started = time.perf_counter()
        try:
            booster = model.scorer.booster
            text = booster.model_to_string()  # type: ignore[attr-defined]
            target = self.object_file(model)
            if not target.exists():
                self._executor().submit(forest_worker.compile_to_file, text, str(target)).result()
            predict = load_compiled(text, target)
            gap = compiled_gap(predict, booster)
            if gap > _CHECK_TOLERANCE:
                target.unlink(missing_ok=True)
                raise ValueError(f"compiled forest differs from the booster by {gap:.3g}")
            seconds = time.perf_counter() - started
            if publish(model.with_compiled(predict, seconds)):
                self.metrics.compile_seconds.observe(seconds)
                logger.info(
                    "%s v%s: compiled forest swapped in after %.2f s",
                    model.name,
                    model.version,
                    seconds,
                )
            else:
                logger.info(
                    "%s v%s: compiled, but no longer served; dropped", model.name, model.version
                )
        except (cf.CancelledError, RuntimeError) as exc:
            if not self._closed:
                self._failed(model, exc)
        except Exception as exc:  # a failed compilation must never take the model down
            self._failed(model, exc)
        finally:
            with self._lock:
                self._pending.discard(key)
                self.metrics.compiles_pending.set(len(self._pending))

    def _failed(self, model: LoadedModel, exc: BaseException) -> None:
        self.metrics.compile_failures.inc()
        logger.error(
            "%s v%s: compilation failed, serving with LightGBM's predict: %s",
            model.name,
            model.version,
            exc,
        )
