"""Progress of the long steps (reading, validating, features, fitting rounds), on stderr.

Library functions take a ``Progress`` and report through it; the default, ``SILENT``, prints
nothing. Only the command line decides to show it (``progress_wanted``): ``--progress``
forces it, ``--no-progress`` turns it off, and by default it shows when stderr is a terminal
(never in logs, CI or a pipe). Steps are whole lines, so they read well between log lines;
boosting rounds are a tqdm bar.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

# Set by the CLI for the step processes it starts (``pipeline``, ``demo``), so a choice made
# on the command line reaches them; read as the default of every ``--progress`` option.
PROGRESS_ENV_VAR = "MATCHMAKING_PROGRESS"


def progress_wanted(flag: bool | None, stream: TextIO | None = None) -> bool:
    """The CLI's rule: ``flag`` when given, else whether ``stream`` (stderr) is a terminal."""
    if flag is not None:
        return flag
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


class Progress:
    """Reports the steps of one command; prints nothing unless ``enabled``."""

    def __init__(self, enabled: bool = False, name: str = "", stream: TextIO | None = None):
        self.enabled = enabled
        self.name = name
        self._stream = stream
        self._started = time.monotonic()

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stderr

    def step(self, message: str) -> None:
        """Announce the step that starts now (one line, with the time since the start)."""
        if self.enabled:
            elapsed = time.monotonic() - self._started
            prefix = f"{self.name}: " if self.name else ""
            self.stream.write(f"[{elapsed:6.1f} s] {prefix}{message}\n")
            self.stream.flush()

    def done(self, message: str = "done") -> None:
        self.step(message)

    def rounds(self, label: str, total: int) -> Rounds:
        """A LightGBM callback showing boosting rounds as a bar; ``close()`` it after training
        (early stopping ends before ``total``)."""
        return Rounds(self, label, total)


class Rounds:
    """``lgb.train(callbacks=[..., rounds])``: one bar tick per boosting round."""

    order = 100  # after LightGBM's own callbacks (early stopping is 30)

    def __init__(self, progress: Progress, label: str, total: int) -> None:
        prefix = f"{progress.name}: " if progress.name else ""
        self._bar = tqdm(
            total=total,
            desc=f"{prefix}{label}",
            unit="round",
            file=progress.stream,
            disable=not progress.enabled,
            leave=True,
        )

    def __call__(self, env: Any) -> None:
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()


SILENT = Progress()
# MLflow's own bars (artifact downloads and uploads); read by MLflow at each transfer.
_MLFLOW_BARS_ENV_VAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


def command_progress(flag: bool | None, name: str) -> Progress:
    """The progress of one command, as its ``--progress/--no-progress`` flag decides
    (``progress_wanted``); when off, MLflow's artifact bars are off too."""
    enabled = progress_wanted(flag)
    if not enabled:
        os.environ[_MLFLOW_BARS_ENV_VAR] = "false"
    return Progress(enabled, name)


def export_choice(flag: bool | None) -> None:
    """Pass a command-line choice on to the step processes this one starts."""
    if flag is not None:
        os.environ[PROGRESS_ENV_VAR] = "1" if flag else "0"
