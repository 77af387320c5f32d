"""One base error and a subclass per failure family.

Every message says what is wrong and what to do about it. The CLI maps these to exit codes
(``exit_code``) and the scoring service maps them to HTTP status codes in one table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class MatchmakingError(Exception):
    """Base class of every error this package raises on purpose."""

    exit_code: int = 1


class ConfigError(MatchmakingError):
    """A settings value or a config file is invalid."""

    exit_code = 2


class InputError(MatchmakingError):
    """A user-supplied argument is invalid (unknown city, impossible dates, ...)."""

    exit_code = 2


class UnknownCityError(InputError):
    """A city name is not in the catalogue."""


class StorageError(MatchmakingError):
    """The data lake cannot be read or written (missing partition, unwritable path)."""

    exit_code = 3


class DataQualityError(MatchmakingError):
    """The raw data failed its checks (too many bad rows, a partition missing or mistyping a
    column, an unreadable file); nothing was published."""

    exit_code = 4


class TrackingError(MatchmakingError):
    """The MLflow tracking server or registry failed or holds unexpected state."""

    exit_code = 5


class ModelNotFoundError(MatchmakingError):
    """No model version matches (no Production version for a city, unknown version)."""

    exit_code = 6


class GateFailedError(MatchmakingError):
    """A candidate model failed the promotion gate; Production was left untouched."""

    exit_code = 7


def field_problems(exc: ValidationError, known: str = "") -> list[tuple[str, str]]:
    """``(field, what is wrong)`` for each field a pydantic validation rejected.

    The messages are pydantic's without its input echo and documentation link: "must be a
    valid number", "must be greater than or equal to 1", "unknown parameter; the parameters
    are: <known>". Used to report one line per field in the CLI's error style.
    """
    problems = []
    for err in exc.errors(include_url=False):
        loc = [str(part) for part in err["loc"]]
        name = loc[0] if loc else "?"
        if err["type"] == "extra_forbidden":
            problem = "unknown parameter" + (f"; the parameters are: {known}" if known else "")
        else:
            problem = str(err["msg"])
            if problem.startswith("Input should"):
                problem = "must" + problem.removeprefix("Input should")
            if len(loc) > 1:
                problem = f"item {'.'.join(loc[1:])} {problem}"
        problems.append((name, problem))
    return problems


def cli_lines(message: str) -> str:
    """The command line's error style: every line of ``message`` as ``error: <line>``."""
    return "\n".join(f"error: {line}" for line in message.splitlines() or [""])
