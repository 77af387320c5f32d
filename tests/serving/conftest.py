"""Fixtures of the serving tests: models registered on the real tracking server, live apps."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import lightgbm as lgb
import pytest
from live import ServerThread
from model_factory import random_booster, register_model, write_driver_table

from serving.app import create_app
from serving.settings import ServeSettings

KNOWN_DRIVERS = [f"d-{i}" for i in range(40)]


@dataclass
class Registered:
    """What the module registered on the session's tracking server."""

    uri: str
    prefix: str
    tmp: Path
    boosters: dict[str, lgb.Booster] = field(default_factory=dict)
    tables: dict[str, Path] = field(default_factory=dict)
    versions: dict[str, list[str]] = field(default_factory=dict)

    def name(self, city: str) -> str:
        return f"{self.prefix}-{city}"

    def register(
        self, city: str, seed: int, alias: str | None = "production", objective: str = "binary"
    ) -> str:
        booster = random_booster(seed, objective=objective)
        folder = self.tmp / f"{city}-{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        table = write_driver_table(folder / "driver_table.parquet", KNOWN_DRIVERS, seed)
        version = register_model(self.uri, self.name(city), booster, table, objective, alias)
        self.boosters[f"{city}@{version}"] = booster
        self.tables[f"{city}@{version}"] = table
        self.versions.setdefault(city, []).append(version)
        return version


@pytest.fixture(scope="module")
def registered(tracking_server, tmp_path_factory: pytest.TempPathFactory) -> Registered:  # type: ignore[no-untyped-def]
    """Jakarta v1 and Surabaya v1, both at alias ``production``, under a module-unique prefix."""
    tmp = tmp_path_factory.mktemp("serving-models")
    reg = Registered(uri=tracking_server.uri, prefix=f"svc{uuid.uuid4().hex[:8]}", tmp=tmp)
    for city, seed in (("jakarta", 1), ("surabaya", 2)):
        reg.register(city, seed)
    return reg


@pytest.fixture
def own_registry(tracking_server, tmp_path: Path) -> Registered:  # type: ignore[no-untyped-def]
    """An empty registry space of the test's own (a fresh model-name prefix), for tests that
    register, promote or roll back: the module's ``registered`` and ``live`` stay as every
    other test of the module expects them, whatever order the tests run in."""
    return Registered(uri=tracking_server.uri, prefix=f"own{uuid.uuid4().hex[:8]}", tmp=tmp_path)


def serve_settings(reg: Registered, **overrides: object) -> ServeSettings:
    """Service settings pointing at the test registry (fast polling)."""
    values: dict[str, object] = {
        "tracking_uri": reg.uri,
        "model_name_prefix": reg.prefix,
        "hot_cities": ["jakarta"],
        "poll_interval_s": 0.3,
        "registry_timeout_s": 2,
        "registry_retries": 0,
        "max_body_bytes": 200_000,
    }
    values.update(overrides)
    return ServeSettings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def live(registered: Registered) -> Iterator[ServerThread]:
    """The service under test, on a real uvicorn server, Jakarta preloaded."""
    with ServerThread(create_app(serve_settings(registered))) as server:
        yield server
