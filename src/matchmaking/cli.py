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

logger = logging.getLogger(__name__)

app = typer.Typer(
    name="matchmaking",
    help="Ride-hailing driver matchmaking: synthetic world, MLflow pipeline, scoring service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
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
        Path | None, typer.Option(help="Lake directory (default: $MATCHMAKING_DATA_DIR/lake).")
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


@app.command()
def demo(
    days: Annotated[int, typer.Option(min=1, help="Days of history to simulate.")] = 30,
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
