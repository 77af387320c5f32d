"""Typer commands ``promote`` and ``rollback``, registered by ``matchmaking.cli``.

They parse options, call ``promote.promote`` (``online.promote_online`` with ``--evidence
online``) / ``rollback.rollback`` / ``scope.choose``, print each model's gate report
(promote) and the fleet summary, and exit with the highest failure code (7 = a gate refused a
candidate). ``--country CC`` acts on the country model ``<prefix>-country-<cc>``;
``--all-cities`` covers the country models too (offline evidence only: a country model has no
challenger on live traffic).
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
    bool,
    typer.Option(
        "--all-cities",
        help="Every city that has a registered model, and every country model (countries first).",
    ),
]
CountryOption = Annotated[
    list[str] | None,
    typer.Option(
        "--country",
        help="Country model to act on (<prefix>-country-<cc>), by ISO code; repeatable or a "
        "comma list (ID,TH). With --city: both.",
    ),
]


def _split(values: list[str] | None) -> list[str]:
    return [c.strip() for value in values or [] for c in value.split(",") if c.strip()]


def _targets(city: list[str] | None, all_cities: bool) -> list[str] | None:
    cities = _split(city)
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


def _fleet_targets(
    city: list[str] | None, country: list[str] | None, all_cities: bool
) -> tuple[list[str] | None, list[str] | None]:
    """``(cities, countries)`` to act on; ``(None, None)``: every registered model."""
    cities, countries = _split(city), [c.upper() for c in _split(country)]
    if all_cities and (cities or countries):
        raise InputError("give --city / --country or --all-cities, not both")
    if not all_cities and not (cities or countries):
        raise InputError(
            "name the models with --city X or --country CC (repeatable) or pass --all-cities"
        )
    return (None, None) if all_cities else (cities, countries)


def _finish(outcomes: list[CityOutcome]) -> None:
    typer.echo(format_summary(outcomes))
    code = exit_code(outcomes)
    if code:
        raise typer.Exit(code)


def promote_command(
    city: CityOption = None,
    all_cities: AllCitiesOption = False,
    country: CountryOption = None,
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
    """Move Production to a candidate version only if it passes the promotion gate.

    A country model is gated on the holdout of each city it was pooled from; after Production
    moves, the serving choice (own or country model) of the cities concerned is made again.
    """
    try:
        if evidence is Evidence.online:
            refuse_offline_options(version, holdout)
            if country:
                raise InputError(
                    "--evidence online gates a city's challenger on its live traffic; a country "
                    "model gets no challenger traffic: promote it with --evidence offline"
                )
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
            cities, countries = _fleet_targets(city, country, all_cities)
            outcomes = promote(
                Settings(),
                cities,
                countries=countries,
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
    country: CountryOption = None,
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
        cities, countries = _fleet_targets(city, country, all_cities)
        outcomes = rollback(Settings(), cities, to=to, actor=actor, countries=countries)
    except MatchmakingError as exc:
        typer.echo(cli_lines(str(exc)), err=True)
        raise typer.Exit(exc.exit_code) from exc
    _finish(outcomes)


def scope_command(
    city: CityOption = None,
    all_cities: AllCitiesOption = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Compare and report; record nothing.")
    ] = False,
    holdout: Annotated[
        str | None,
        typer.Option(help="Holdout feature dataset of the city (default: found); one city only."),
    ] = None,
    gate_config: Annotated[
        Path | None, typer.Option(help="Gate thresholds YAML (default: the packaged gate.yaml).")
    ] = None,
) -> None:
    """Choose which Production model serves each city, its own or its country's, and record
    why on the city's registered model (tags serving.*; docs/pooled.md)."""
    from matchmaking.registry.scope import choose

    try:
        outcomes = choose(
            Settings(),
            _targets(city, all_cities),
            holdout=holdout,
            thresholds=load_thresholds(gate_config),
            dry_run=dry_run,
        )
    except MatchmakingError as exc:
        typer.echo(cli_lines(str(exc)), err=True)
        raise typer.Exit(exc.exit_code) from exc
    _finish(outcomes)
