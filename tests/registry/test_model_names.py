"""Fleet mode finds the cities from registered model names, and never a wrong one."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from matchmaking.config import Settings
from matchmaking.registry.fleet import registered_cities


def test_longer_model_names_are_never_read_as_cities(tmp_path: Path, isolated_mlflow: str) -> None:
    """``<prefix>-<city>`` models are the fleet; a second model family under the same prefix
    (``<prefix>-cancellation-jakarta``, tagged or not) or a name whose rest is no known city
    is not. Fails when the name is cut after the prefix (the fleet had 'cancellation-jakarta')."""
    settings = Settings(data_dir=tmp_path, tracking_uri=isolated_mlflow, model_name_prefix="mm")
    client = MlflowClient(tracking_uri=isolated_mlflow, registry_uri=isolated_mlflow)
    client.create_registered_model("mm-jakarta", tags={"city": "jakarta"})
    client.create_registered_model("mm-ho-chi-minh-city")  # untagged: the catalogue decides
    client.create_registered_model(
        "mm-cancellation-bangkok", tags={"city": "bangkok", "model_type": "cancellation"}
    )
    client.create_registered_model("mm-cancellation-jakarta")
    client.create_registered_model("mm-eu-bangkok")
    client.create_registered_model("other-bangkok")
    assert registered_cities(client, settings) == ["ho-chi-minh-city", "jakarta"]
