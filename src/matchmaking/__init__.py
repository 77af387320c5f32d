"""matchmaking: an MLflow-centric platform for ride-hailing driver matchmaking.

The package follows the pipeline: ``world`` (raw data) -> ``features`` -> ``training`` ->
``evaluation`` -> ``registry`` -> ``serving`` (a separate top-level package).
"""

__version__ = "0.1.0"
