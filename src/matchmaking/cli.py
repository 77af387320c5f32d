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
from matchmaking.progress import PROGRESS_ENV_VAR, command_progress, export_choice, progress_wanted
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
ProgressOption = Annotated[
    bool | None,
    typer.Option(
        "--progress/--no-progress",
        envvar=PROGRESS_ENV_VAR,
        show_default=False,
        help="Show progress on stderr (default: only when stderr is a terminal).",
    ),
]


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
    progress: ProgressOption = None,
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
        progress=progress_wanted(progress),
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
    progress: ProgressOption = None,
) -> None:
    """Validate raw partitions, quarantine bad rows, publish a versioned feature dataset."""
    from matchmaking.processing.step import process as run_process
    from matchmaking.world.cities import get_city

    get_city(city)
    shown = command_progress(progress, f"process {city}")
    result = run_process(
        Settings(), city, _date(start, "--start"), _date(end, "--end"), max_bad_share, shown
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
    progress: ProgressOption = None,
) -> None:
    """Fit binary and LambdaRank LightGBM models, keep the better, register a version."""
    from matchmaking.training.params import load_params, parse_overrides
    from matchmaking.training.train import train as run_train

    p = load_params(params, parse_overrides(set_ or []))
    shown = command_progress(progress, f"train {city}")
    result = run_train(Settings(), city, features, p, process_run_id or None, reuse_existing, shown)
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
    progress: ProgressOption = None,
) -> None:
    """Offline metrics and a dispatch replay against the oracle and two baselines."""
    from matchmaking.evaluation.evaluate import artifact_lines, format_summary
    from matchmaking.evaluation.evaluate import evaluate as run_evaluate

    shown = command_progress(progress, f"evaluate {city}")
    result = run_evaluate(Settings(), city, model_uri, features, seed, progress=shown)
    typer.echo(format_summary([result]))
    typer.echo(f"run_id: {result.run_id}")
    for line in artifact_lines(result):
        typer.echo(line)


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
    progress: ProgressOption = None,
) -> None:
    """Chain process -> train -> evaluate as MLflow Projects runs (the `main` entry point)."""
    from matchmaking.pipeline import run_chain
    from matchmaking.world.cities import get_city

    get_city(city)
    export_choice(progress)  # the steps run as processes of their own
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
    host: Annotated[
        str | None,
        typer.Option(help="Interface to bind (default: $MATCHMAKING_SERVE_HOST, else 127.0.0.1)."),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="Port (default: $MATCHMAKING_SERVE_PORT, else 8000)."),
    ] = None,
) -> None:
    """Serve each city's Production model over HTTP (POST /v1/rank, /v1/match).

    Every other setting comes from MATCHMAKING_SERVE_* (docs/serving.md).
    """
    from serving.main import run

    run(host=host, port=port)


@app.command()
def demo(
    days: Annotated[int, typer.Option(min=7, help="Days in the training window.")] = 28,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
    progress: ProgressOption = None,
) -> None:
    """Run the main job end to end on the embedded defaults (SQLite, local files)."""
    from matchmaking.demo import run_demo

    export_choice(progress)  # the steps run as processes of their own
    run_demo(Settings(), days=days, seed=seed, progress=progress_wanted(progress))


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
