"""Typer commands ``promote`` and ``rollback``, registered by ``matchmaking.cli``.

They parse options, call ``promote.promote`` (``online.promote_online`` with ``--evidence
online``) / ``rollback.rollback``, print each city's gate
report (promote) and the fleet summary, and exit with the highest failure code (7 = a gate
refused a candidate).
"""

from __future__ import annotations

import logging
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from matchmaking.config import Settings
from matchmaking.errors import InputError, MatchmakingError, cli_lines
from matchmaking.registry.fleet import CityOutcome, exit_code, format_summary
from matchmaking.registry.gate import load_thresholds
from matchmaking.registry.online import promote_online, refuse_offline_options
from matchmaking.registry.promote import promote
from matchmaking.registry.rollback import rollback

logger = logging.getLogger(__name__)

CityOption = Annotated[
    list[str] | None,
    typer.Option(
        "--city", help="City to act on; repeat it or give a comma list (jakarta,bangkok)."
    ),
]
AllCitiesOption = Annotated[
    bool, typer.Option("--all-cities", help="Every city that has a registered model.")
]


def _targets(city: list[str] | None, all_cities: bool) -> list[str] | None:
    cities = [c.strip() for value in city or [] for c in value.split(",") if c.strip()]
    if all_cities and cities:
        raise InputError("give either --city or --all-cities, not both")
    if not all_cities and not cities:
        raise InputError("name the cities with --city X (repeatable) or pass --all-cities")
    return None if all_cities else cities


class Evidence(StrEnum):
    """What the gate decides on."""

    offline = "offline"
    online = "online"


def _day(value: str | None, option: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InputError(f"{option} {value!r} is not a date; use YYYY-MM-DD") from None


def _finish(outcomes: list[CityOutcome]) -> None:
    typer.echo(format_summary(outcomes))
    code = exit_code(outcomes)
    if code:
        raise typer.Exit(code)


def promote_command(
    city: CityOption = None,
    all_cities: AllCitiesOption = False,
    version: Annotated[
        str | None, typer.Option(help="Candidate version (default: the newest); one city only.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Run the gate and report; change nothing.")
    ] = False,
    holdout: Annotated[
        str | None,
        typer.Option(
            help="Holdout feature dataset, a dir or a URI (default: the newest published "
            "dataset of the city starting after the training windows); one city only."
        ),
    ] = None,
    gate_config: Annotated[
        Path | None, typer.Option(help="Gate thresholds YAML (default: the packaged gate.yaml).")
    ] = None,
    actor: Annotated[
        str | None, typer.Option(help="Recorded as who promoted (default: CI user or OS user).")
    ] = None,
    evidence: Annotated[
        Evidence,
        typer.Option(
            help="offline: the candidate on the logged holdout (default); online: the version "
            "under alias 'challenger' on its live traffic against Production "
            "(docs/experiments.md)."
        ),
    ] = Evidence.offline,
    since: Annotated[
        str | None,
        typer.Option(help="Online evidence: first day of decisions, YYYY-MM-DD (default: all)."),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(help="Online evidence: last day of decisions, YYYY-MM-DD (default: all)."),
    ] = None,
) -> None:
    """Move Production to a candidate version only if it passes the promotion gate."""
    try:
        if evidence is Evidence.online:
            refuse_offline_options(version, holdout)
            outcomes = promote_online(
                Settings(),
                _targets(city, all_cities),
                dry_run=dry_run,
                actor=actor,
                thresholds=load_thresholds(gate_config),
                since=_day(since, "--since"),
                until=_day(until, "--until"),
            )
        else:
            if since is not None or until is not None:
                raise InputError("--since and --until choose the window of --evidence online")
            outcomes = promote(
                Settings(),
                _targets(city, all_cities),
                version=version,
                dry_run=dry_run,
                holdout=holdout,
                actor=actor,
                thresholds=load_thresholds(gate_config),
            )
    except MatchmakingError as exc:
        typer.echo(cli_lines(str(exc)), err=True)
        raise typer.Exit(exc.exit_code) from exc
    for outcome in outcomes:  # each city's gate report: estimates, intervals, every check
        if outcome.report:
            typer.echo(outcome.report)
    _finish(outcomes)


def rollback_command(
    city: CityOption = None,
    all_cities: AllCitiesOption = False,
    to: Annotated[
        str | None,
        typer.Option(help="Version to put back (default: the previous Production); one city."),
    ] = None,
    actor: Annotated[
        str | None, typer.Option(help="Recorded as who rolled back (default: CI or OS user).")
    ] = None,
) -> None:
    """Put the previous (or the given) version back in Production, without the gate."""
    try:
        outcomes = rollback(Settings(), _targets(city, all_cities), to=to, actor=actor)
    except MatchmakingError as exc:
        typer.echo(cli_lines(str(exc)), err=True)
        raise typer.Exit(exc.exit_code) from exc
    _finish(outcomes)
