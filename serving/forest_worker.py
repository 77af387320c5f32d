"""What runs in a compile worker process (``serving.compile``): kept to the standard library and
lleaves, so a worker does not import MLflow, LightGBM or the service."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

#: Niceness of the compile workers: compilation yields the CPU to scoring.
WORKER_NICENESS = 10


def init() -> None:
    """In each compile worker: lower its priority, one native thread."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    with contextlib.suppress(OSError):  # not permitted on some platforms
        os.nice(WORKER_NICENESS)


def compile_to_file(model_text: str, object_file: str) -> float:
    """Worker process: compile a LightGBM model (its text form) to ``object_file``; seconds."""
    import lleaves

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mm-lleaves-") as tmp:
        path = Path(tmp) / "model.txt"
        path.write_text(model_text)
        partial = Path(f"{object_file}.{os.getpid()}.part")
        lleaves.Model(model_file=str(path)).compile(cache=str(partial))
        partial.replace(object_file)  # readers never see a half-written object file
    return time.perf_counter() - started
