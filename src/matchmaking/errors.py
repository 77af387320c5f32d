"""One base error and a subclass per failure family.

Every message says what is wrong and what to do about it. The CLI maps these to exit codes
(``exit_code``) and the scoring service maps them to HTTP status codes in one table.
"""

from __future__ import annotations


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
    """Too many raw rows failed validation; nothing was published."""

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
