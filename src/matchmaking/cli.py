"""The one command-line interface. Every MLproject entry point and DAG task calls into it."""

from __future__ import annotations

import logging
import sys
from datetime import date
from pathlib import Path
from typing import Annotated

import typer

from matchmaking.config import Settings
from matchmaking.errors import MatchmakingError
from matchmaking.registry.commands import promote_command, rollback_command

logger = logging.getLogger(__name__)

app = typer.Typer(
    name="matchmaking",
    help="Ride-hailing driver matchmaking: synthetic world, MLflow pipeline, scoring service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("promote")(promote_command)
app.command("rollback")(rollback_command)
world_app = typer.Typer(help="The synthetic ride-hailing world (stands in for production data).")
app.add_typer(world_app, name="world")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _cities(value: str) -> list[str]:
    return [c.strip() for c in value.split(",") if c.strip()]


@world_app.command("generate")
def world_generate(
    cities: Annotated[
        str, typer.Option(help="Comma-separated city ids (see `matchmaking world cities`).")
    ] = "jakarta",
    start: Annotated[str, typer.Option(help="First day, YYYY-MM-DD (local calendar).")] = (
        "2026-10-01"
    ),
    days: Annotated[int, typer.Option(min=1, max=3660, help="Number of days.")] = 30,
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same bytes.")] = 42,
    out: Annotated[
        str | None,
        typer.Option(
            help="Lake: a directory or a URI such as s3://bucket/lake (default: "
            "$MATCHMAKING_LAKE_URI, else $MATCHMAKING_DATA_DIR/lake)."
        ),
    ] = None,
    scale: Annotated[
        float,
        typer.Option(min=0.0, help="Share of each city's real daily volume to simulate."),
    ] = 0.002,
    bookings_per_day: Annotated[
        int | None, typer.Option(min=1, help="Override: bookings per city-day (ignores --scale).")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Generate drivers, bookings, candidates, dispatch logs and the hidden ground truth."""
    from matchmaking.world.generate import generate_world

    settings = Settings()
    try:
        start_date = date.fromisoformat(start)
    except ValueError:
        _fail(f"--start {start!r} is not a date; use YYYY-MM-DD, for example 2026-10-01", 2)
    summary = generate_world(
        cities=_cities(cities),
        start=start_date,
        days=days,
        seed=seed,
        out=out or settings.lake_dir,
        scale=scale,
        bookings_per_day=bookings_per_day,
        progress=progress,
    )
    typer.echo(summary.to_table())


@world_app.command("cities")
def world_cities(
    country: Annotated[str | None, typer.Option(help="Filter by ISO country code.")] = None,
) -> None:
    """List the city catalogue."""
    from matchmaking.world.cities import CITIES

    for c in CITIES.values():
        if country is None or c.country == country.upper():
            typer.echo(f"{c.id:<24} {c.country}  {c.name:<24} {c.tz:<20} size={c.size}")


def _date(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not a date; use YYYY-MM-DD, for example 2026-10-01",
            param_hint=option,
        ) from None


@app.command()
def process(
    city: Annotated[str, typer.Option(help="City id.")],
    start: Annotated[str, typer.Option(help="First day of the window, YYYY-MM-DD.")],
    end: Annotated[str, typer.Option(help="Last day of the window, YYYY-MM-DD (inclusive).")],
    max_bad_share: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Fail when more raw rows than this are bad.")
    ] = 0.05,
) -> None:
    """Validate raw partitions, quarantine bad rows, publish a versioned feature dataset."""
    from matchmaking.processing.step import process as run_process
    from matchmaking.world.cities import get_city

    get_city(city)
    result = run_process(
        Settings(), city, _date(start, "--start"), _date(end, "--end"), max_bad_share
    )
    typer.echo(
        f"features: {result.dataset_dir}\ndigest: {result.digest}\nrows: {result.rows} "
        f"(offered {result.offered_rows}), quarantined: {result.quarantined} "
        f"{result.quarantine_counts or ''}\nrun_id: {result.run_id}"
    )


@app.command()
def train(
    city: Annotated[str, typer.Option(help="City id.")],
    features: Annotated[
        str,
        typer.Option(help="Feature dataset printed by `process`: a dir, file:// or s3:// URI."),
    ],
    params: Annotated[
        Path | None, typer.Option(help="Training parameters YAML (default: built-in).")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a parameter: KEY=VALUE (repeatable)."),
    ] = None,
    process_run_id: Annotated[str | None, typer.Option(help="Lineage: the process run.")] = None,
    reuse_existing: Annotated[
        bool, typer.Option(help="Reuse a version trained on the same data, code and params.")
    ] = True,
) -> None:
    """Fit binary and LambdaRank LightGBM models, keep the better, register a version."""
    from matchmaking.training.params import load_params, parse_overrides
    from matchmaking.training.train import train as run_train

    p = load_params(params, parse_overrides(set_ or []))
    result = run_train(Settings(), city, features, p, process_run_id or None, reuse_existing)
    typer.echo(
        f"model: {result.model_name} v{result.version} ({result.objective})"
        f"{' [reused]' if result.reused else ''}\nrun_id: {result.run_id}\n"
        f"model_uri: {result.model_uri}"
    )


@app.command()
def evaluate(
    city: Annotated[str, typer.Option(help="City id.")],
    model_uri: Annotated[
        str, typer.Option(help="models:/matchmaking-<city>/<version> or runs:/...")
    ],
    features: Annotated[
        str, typer.Option(help="Holdout feature dataset (a later window): a dir or a URI.")
    ],
    seed: Annotated[int, typer.Option(help="Seed of the replay's outcome draws.")] = 7,
) -> None:
    """Offline metrics and a dispatch replay against the oracle and two baselines."""
    from matchmaking.evaluation.evaluate import evaluate as run_evaluate
    from matchmaking.evaluation.evaluate import format_summary

    result = run_evaluate(Settings(), city, model_uri, features, seed)
    typer.echo(format_summary([result]))
    typer.echo(f"run_id: {result.run_id}")


@app.command()
def pipeline(
    city: Annotated[str, typer.Option(help="City id.")],
    end: Annotated[str, typer.Option(help="Last day of data (the holdout ends here).")],
    train_days: Annotated[int, typer.Option(min=2, help="Days in the training window.")] = 28,
    holdout_days: Annotated[int, typer.Option(min=1, help="Days in the later holdout.")] = 7,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a training parameter: KEY=VALUE (repeatable)."),
    ] = None,
) -> None:
    """Chain process -> train -> evaluate as MLflow Projects runs (the `main` entry point)."""
    from matchmaking.pipeline import run_chain
    from matchmaking.world.cities import get_city

    get_city(city)
    overrides = {}
    for item in set_ or []:
        key, _, value = item.partition("=")
        if value.strip() not in ("", "''", '""'):
            overrides[key] = value
    out = run_chain(Settings(), city, _date(end, "--end"), train_days, holdout_days, overrides)
    for key, value in out.items():
        typer.echo(f"{key}: {value}")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
) -> None:
    """Serve each city's Production model over HTTP (POST /v1/rank, /v1/match)."""
    from serving.main import run

    run(host=host, port=port, log_level=Settings().log_level.lower())


@app.command()
def report(
    cities: Annotated[
        str | None, typer.Option(help="Comma-separated city ids (default: every city found).")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="First data day shown, YYYY-MM-DD (default: all).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Directory for index.html (default: <data dir>/report).")
    ] = None,
    drift_config: Annotated[
        Path | None, typer.Option(help="Drift YAML (default: the packaged drift.yaml).")
    ] = None,
) -> None:
    """Static HTML report of the fleet (performance, Production history, data health, drift),
    logged to MLflow as the artifact of a `report` run."""
    from matchmaking.reporting.drift import load_drift_config
    from matchmaking.reporting.report import build_report
    from matchmaking.world.cities import get_city

    chosen = _cities(cities) if cities else None
    for city in chosen or []:
        get_city(city)
    result = build_report(
        Settings(),
        chosen,
        _date(since, "--since") if since else None,
        out,
        load_drift_config(drift_config),
    )
    looks = sum(1 for c in result.report.cities if c.attention)
    typer.echo(
        f"report: {result.path}\ncities: {len(result.report.cities)} ({looks} need a look)\n"
        f"run_id: {result.run_id}\nartifact: {result.artifact_uri}"
    )


@app.command()
def demo(
    days: Annotated[int, typer.Option(min=7, help="Days in the training window.")] = 28,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
) -> None:
    """Run the main job end to end on the embedded defaults (SQLite, local files)."""
    from matchmaking.demo import run_demo

    run_demo(Settings(), days=days, seed=seed)


def _fail(message: str, code: int) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def main() -> None:
    """Console-script entry: configure logging once, map package errors to exit codes."""
    settings = Settings()
    _setup_logging(settings.log_level)
    try:
        app()
    except MatchmakingError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
