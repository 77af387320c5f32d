"""A few simulated days of a two-city fleet on the real tracking server, and its report.

Built once per session (training is the slow part). Day by day, as the daily pipeline does:
process the training and holdout windows, train, evaluate, run the promotion gate; then a
rollback in Jakarta, and a last day that only processes and evaluates. Bangkok's second model
is weak (2 boosting rounds), so its gate is expected to refuse it; whatever each gate decided
is kept in ``Fleet.outcomes`` and the tests check the report shows exactly that.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest
from mlflow.tracking import MlflowClient
from support.tracking_server import TrackingServer

from matchmaking import lake
from matchmaking.config import Settings
from matchmaking.evaluation.evaluate import evaluate
from matchmaking.processing.step import process
from matchmaking.registry.fleet import CityOutcome
from matchmaking.registry.promote import promote
from matchmaking.registry.rollback import rollback
from matchmaking.reporting.report import ReportResult, build_report
from matchmaking.training.params import TrainParams
from matchmaking.training.train import train
from matchmaking.world.generate import generate_world

CITIES = ("jakarta", "bangkok")
START = date(2026, 8, 1)
DAYS = 16
# (training window, holdout window) of each simulated pipeline day
PIPELINE_DAYS = (
    ((date(2026, 8, 3), date(2026, 8, 10)), (date(2026, 8, 11), date(2026, 8, 12))),
    ((date(2026, 8, 5), date(2026, 8, 12)), (date(2026, 8, 13), date(2026, 8, 14))),
)
LAST_HOLDOUT = (date(2026, 8, 15), date(2026, 8, 16))


BAD_ETA_DAY = date(2026, 8, 14)  # a few raw rows with a negative ETA: quarantined as bad_eta


def corrupt_etas(settings: Settings, city: str, day: date, rows: int) -> None:
    """Rewrite the first ``rows`` candidate ETAs of a raw partition as -1 s."""
    bookings = lake.read_partitions(settings.lake_dir, city, "bookings", day, day)
    candidates = lake.read_partitions(settings.lake_dir, city, "candidates", day, day)
    eta = candidates.column("eta_seconds").to_numpy().copy()
    eta[:rows] = -1.0
    index = candidates.schema.get_field_index("eta_seconds")
    candidates = candidates.set_column(index, candidates.schema.field(index), pa.array(eta))
    tables = {"bookings": bookings, "candidates": candidates}
    lake.write_partition(settings.lake_dir, "raw", city, day, tables)


@dataclass
class Fleet:
    settings: Settings
    outcomes: list[CityOutcome] = field(default_factory=list)
    evaluate_runs: dict[str, list[str]] = field(default_factory=dict)
    process_runs: dict[str, list[str]] = field(default_factory=dict)
    report: ReportResult | None = None


def fleet_settings(root: Path, server_uri: str) -> Settings:
    prefix = f"rep-{uuid.uuid4().hex[:8]}"
    return Settings(
        data_dir=root,
        tracking_uri=server_uri,
        model_name_prefix=prefix,
        experiment_prefix=prefix,
        promotion_locks_uri=str(root / "locks"),
    )


@pytest.fixture(scope="session")
def fleet(tracking_server: TrackingServer, tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    root = tmp_path_factory.mktemp("report-fleet")
    settings = fleet_settings(root, tracking_server.uri)
    generate_world(list(CITIES), START, DAYS, 11, settings.lake_dir, 0.002, 300, progress=False)
    corrupt_etas(settings, "jakarta", BAD_ETA_DAY, rows=40)
    base = TrainParams(objectives=["binary"], valid_days=1, num_boost_round=150)
    out = Fleet(settings)
    for day, (train_window, holdout_window) in enumerate(PIPELINE_DAYS):
        for city in CITIES:
            trained_on = process(settings, city, *train_window)
            holdout = process(settings, city, *holdout_window)
            out.process_runs.setdefault(city, []).extend([trained_on.run_id, holdout.run_id])
            weak = city == "bangkok" and day == 1
            params = base.model_copy(update={"num_boost_round": 2} if weak else {"seed": 7 + day})
            model = train(settings, city, trained_on.dataset_dir, params, trained_on.run_id)
            ev = evaluate(settings, city, model.model_uri, holdout.dataset_dir)
            out.evaluate_runs.setdefault(city, []).append(str(ev.run_id))
        out.outcomes += promote(settings, list(CITIES), actor="report-test")
    # Jakarta: move Production away from where the gate left it, as an operator would.
    current = next(o for o in reversed(out.outcomes) if o.city == "jakarta")
    target = "1" if current.status == "promoted" else "2"
    out.outcomes += rollback(settings, ["jakarta"], to=target, actor="report-test")
    client = MlflowClient(tracking_uri=tracking_server.uri, registry_uri=tracking_server.uri)
    for city in CITIES:
        holdout = process(settings, city, *LAST_HOLDOUT)
        out.process_runs[city].append(str(holdout.run_id))
        name = f"{settings.model_name_prefix}-{city}"
        version = client.get_model_version_by_alias(name, "production").version
        ev = evaluate(settings, city, f"models:/{name}/{version}", holdout.dataset_dir)
        out.evaluate_runs[city].append(str(ev.run_id))
    out.report = build_report(settings, out=root / "report")
    return out
