"""A few simulated days of a two-city fleet on the real tracking server, and its report.

Built once per session (training is the slow part). Day by day, as the daily pipeline does:
process the training and holdout windows, train, evaluate, run the promotion gate; then a
rollback in Jakarta, and a last day that only processes and evaluates. Bangkok's second model
is weak (2 boosting rounds), so its gate is expected to refuse it; whatever each gate decided
is kept in ``Fleet.outcomes`` and the tests check the report shows exactly that.
"""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient
from support.fleet import (
    BAD_ETA_DAY,
    CITIES,
    DAYS,
    LAST_HOLDOUT,
    PIPELINE_DAYS,
    START,
    Fleet,
    corrupt_etas,
    fleet_settings,
)
from support.tracking_server import TrackingServer

from matchmaking.evaluation.evaluate import evaluate
from matchmaking.processing.step import process
from matchmaking.registry.promote import promote
from matchmaking.registry.rollback import rollback
from matchmaking.reporting.report import build_report
from matchmaking.training.params import TrainParams
from matchmaking.training.train import train
from matchmaking.world.generate import generate_world


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
