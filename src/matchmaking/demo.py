"""``matchmaking demo``: one day of the daily retrain through Airflow, on the embedded defaults.

World -> ``matchmaking_data`` (process each city's training and holdout windows) ->
``matchmaking_train`` (train, evaluate) run in-process with ``dag.test()``: Airflow metadata
in SQLite under ``data/airflow``, MLflow in a SQLite store under ``data/``. The first version
of each city then goes straight to Production; the demo shows the registry and the evaluation.

Then the loop closes for Jakarta: a challenger (the same window trained with inverse-propensity
weights) gets 20% of the bookings under the ``challenger`` alias, the scoring service runs as a
process of its own on uvicorn, logging its decisions into the lake, ``world dispatch`` plays the
next day's bookings through it (exploring, so the logs support off-policy estimates) and posts
the outcomes, and the experiment report compares the two arms.

The steps run as processes of their own (MLflow Projects): what they print on stdout (each
city's evaluation table, dataset and model lines) goes to ``data/airflow/steps.log``, so the
demo prints every table once, all cities together; their progress (stderr) stays on screen.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import typer
import yaml

from matchmaking.config import Settings
from matchmaking.features.history import HISTORY_DAYS

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from matchmaking.evaluation.evaluate import EvaluationResult
    from matchmaking.lake.storage import Location

logger = logging.getLogger(__name__)

DEMO_CITIES = ("jakarta", "bangkok", "ho-chi-minh-city")
TRAIN_DAYS = 28
HOLDOUT_DAYS = 7
# The closed loop (docs/experiments.md): one city's next day served through the scoring
# service, an inverse-propensity-weighted challenger on a share of its bookings.
LOOP_CITY = "jakarta"
CHALLENGER_SHARE = 0.2
LOOP_TEMPERATURE = 0.5


@contextlib.contextmanager
def stdout_to(path: Path) -> Iterator[None]:
    """Send file descriptor 1 (this process's and its children's stdout) to ``path``
    (written afresh)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with path.open("wb") as log:
            os.dup2(log.fileno(), 1)
            try:
                yield
            finally:
                sys.stdout.flush()
                os.dup2(saved, 1)
    finally:
        os.close(saved)


def run_demo(
    settings: Settings, days: int = 28, seed: int = 42, progress: bool = False
) -> list[EvaluationResult]:
    """Run the demo and print what happened; returns the evaluation of each city.

    ``progress``: show the world generator's bar (the steps decide for themselves, from
    ``MATCHMAKING_PROGRESS`` or their stderr).
    """
    from matchmaking.world.generate import generate_world

    start = date(2026, 8, 1)
    total_days = HISTORY_DAYS + days + HOLDOUT_DAYS
    end = start + timedelta(days=total_days - 1)
    echo = typer.echo
    echo(f"== world: {', '.join(DEMO_CITIES)}, {start}..{end} (seed {seed})")
    summary = generate_world(
        cities=list(DEMO_CITIES),
        start=start,
        days=total_days,
        seed=seed,
        out=settings.lake_dir,
        scale=0.002,
        bookings_per_day=None,
        progress=progress,
    )
    echo(summary.to_table())

    data_dir = settings.data_dir.resolve()
    airflow_home = data_dir / "airflow"
    airflow_home.mkdir(parents=True, exist_ok=True)
    config = airflow_home / "pipeline.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "cities": list(DEMO_CITIES),
                "lake_uri": (data_dir / "lake").as_uri(),
                "windows": {"train_days": days, "holdout_days": HOLDOUT_DAYS, "lag_days": 1},
                # dag.test() runs one task instance after another: each city's days in one
                # process_day instance, which publishes their summaries too, instead of one
                # instance per (city, day) (days_per_task: 1 in production).
                "days_per_task": total_days,
                "retries": 0,
            },
            sort_keys=False,
        )
    )
    from matchmaking.orchestration.local import configure_airflow, run_day

    configure_airflow(airflow_home, config)
    day = end + timedelta(days=1)
    echo(
        f"\n== Airflow (dag.test, metadata in {airflow_home}): matchmaking_data for {day}, "
        "then matchmaking_train on its features asset"
    )
    steps_log = airflow_home / "steps.log"
    echo(f"   output of the steps: {steps_log}")
    with stdout_to(steps_log):
        outcome = run_day(day)
    for city, published in outcome.event["cities"].items():
        echo(
            f"   {city}: train {'..'.join(published['window'])}, holdout "
            f"{'..'.join(published['holdout_window'])} -> {published['features_uri']}"
        )
    results = _show(settings, outcome.evaluated)
    published_cities = outcome.event["cities"]
    if LOOP_CITY in published_cities:
        _closed_loop(settings, str(published_cities[LOOP_CITY]["features_uri"]), day, seed)
    from matchmaking.reporting.report import build_report

    built = build_report(settings)
    echo(
        f"\n== fleet report: {built.path}\n   (logged as run {built.run_id}: {built.artifact_uri})"
    )
    return results


def _show(settings: Settings, evaluated: list[dict[str, object]]) -> list[EvaluationResult]:
    """First version of each city to Production; print the registry and the evaluation."""
    from mlflow.tracking import MlflowClient

    from matchmaking import tracking
    from matchmaking.evaluation.evaluate import artifact_lines, format_summary
    from matchmaking.registry.production import current_production, set_production

    uri = tracking.configure(settings)
    client = MlflowClient()
    echo = typer.echo
    echo("\n== registry")
    for item in evaluated:
        name, version = str(item["model_name"]), str(item["version"])
        if current_production(client, name) is None:
            set_production(
                client,
                name,
                version,
                reason="first version of the city: promoted on registration (demo)",
                actor="matchmaking demo",
            )
        prod = current_production(client, name)
        echo(
            f"   {name}: trained v{version}{' (reused)' if item['reused'] else ''}, "
            f"Production v{prod.version if prod else '-'}"
        )
    results = [_evaluation(client, str(item["evaluate_run_id"])) for item in evaluated]
    echo("\n== evaluation on the holdout (logged data, off-policy estimates, simulator checks)")
    echo(format_summary(results))
    for r in results:
        echo(f"   {r.city}: " + "\n   ".join([f"evaluate run {r.run_id}", *artifact_lines(r)]))
    echo(f"\nMLflow store: {uri}\nbrowse it: .venv/bin/mlflow ui --backend-store-uri {uri}")
    echo("serve the Production models: make serve")
    return results


def _evaluation(client: MlflowClient, run_id: str) -> EvaluationResult:
    """An ``EvaluationResult`` rebuilt from the metrics the evaluate run logged."""
    from matchmaking.evaluation.evaluate import result_from_run

    return result_from_run(client, run_id)


def _closed_loop(settings: Settings, features: str, day: date, seed: int) -> None:
    """Serve ``day`` of ``LOOP_CITY`` through the real scoring service with a challenger on
    ``CHALLENGER_SHARE`` of the bookings, then print the experiment report."""
    from mlflow.tracking import MlflowClient

    from matchmaking import tracking
    from matchmaking.experiments.report import experiment_report, render
    from matchmaking.lake import storage
    from matchmaking.registry import conventions
    from matchmaking.registry.gate import load_thresholds
    from matchmaking.training.params import load_params
    from matchmaking.training.train import train
    from matchmaking.world.served import DispatchRequest, dispatch_day

    echo = typer.echo
    uri = tracking.configure(settings)
    client = MlflowClient()
    echo(f"\n== closed loop: {LOOP_CITY} on {day}, served through the scoring service")
    params = load_params(overrides={"sample_weights": ["ipw"]})
    with stdout_to(settings.data_dir.resolve() / "airflow" / "challenger.log"):
        challenger = train(settings, LOOP_CITY, storage.local_path(features), params)
    name = challenger.model_name
    client.set_registered_model_alias(name, conventions.CHALLENGER_ALIAS, challenger.version)
    client.set_registered_model_tag(name, conventions.CHALLENGER_SHARE_TAG, str(CHALLENGER_SHARE))
    client.set_registered_model_tag(name, conventions.CHALLENGER_MODE_TAG, "split")
    echo(
        f"   challenger: {name} v{challenger.version} (sample_weights=ipw) under the "
        f"{conventions.CHALLENGER_ALIAS!r} alias, {CHALLENGER_SHARE:.0%} of the bookings"
    )
    lake_dir = settings.lake_dir.resolve()
    with _scoring_service(uri, lake_dir, settings.data_dir.resolve()) as url:
        echo(f"   scoring service: {url} (decision log under {lake_dir / 'serving'})")
        _wait_for_challenger(url)
        summary = dispatch_day(
            DispatchRequest(city=LOOP_CITY, day=day, url=url, out=lake_dir, seed=seed)
        )
        echo("   " + "\n   ".join(summary.to_text().splitlines()))
    # The service flushed its log on shutdown: every decision and outcome is in the lake.
    # Decisions are dated by the service's clock (today), not the simulated day: the report
    # takes the whole log, which holds this one served day.
    report = experiment_report(settings, LOOP_CITY, None, None, load_thresholds(None).online)
    echo("\n== experiment report\n" + render(report))
    echo(f"   (logged as run {report.run_id}; docs/experiments.md says how to read it)")


@contextlib.contextmanager
def _scoring_service(tracking_uri: str, lake_dir: Location, data_dir: Path) -> Iterator[str]:
    """``matchmaking serve`` as a process of its own on a free port, until the block ends
    (then SIGTERM: the service flushes its decision log and exits)."""
    import signal
    import socket
    import subprocess
    import time

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "MATCHMAKING_SERVE_PORT": str(port),
        "MATCHMAKING_SERVE_TRACKING_URI": tracking_uri,
        "MATCHMAKING_SERVE_HOT_CITIES": LOOP_CITY,
        "MATCHMAKING_SERVE_LAKE_URI": str(lake_dir),
        "MATCHMAKING_SERVE_EXPLORATION": f"{LOOP_CITY}={LOOP_TEMPERATURE}",
        "MATCHMAKING_SERVE_POLL_INTERVAL_S": "2",
        "MATCHMAKING_SERVE_LOG_LEVEL": "WARNING",
    }
    log = (data_dir / "airflow" / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "matchmaking", "serve"], env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"matchmaking serve exited {proc.returncode}; see {log.name}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"matchmaking serve was not ready in 120 s; see {log.name}")
            time.sleep(0.25)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait_for_challenger(url: str, timeout_s: float = 120.0) -> None:
    """Until the service's poller has loaded the challenger (``/metrics`` shows its share), so
    that the whole served day is split, not only the part after the challenger arrived."""
    import time

    import httpx

    wanted = f'matchmaking_challenger_share{{city="{LOOP_CITY}",mode="split"}}'
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        metrics = httpx.get(f"{url}/metrics", timeout=5).text
        if any(line.startswith(wanted) for line in metrics.splitlines()):
            return
        time.sleep(0.5)
    raise RuntimeError(f"the scoring service at {url} did not load the challenger in {timeout_s} s")
