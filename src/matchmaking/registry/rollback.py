"""``matchmaking rollback``: put the previous (or a given) version back in Production, without
the gate, under the same promotion lock and fence as a promotion."""

from __future__ import annotations

import logging

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from matchmaking.config import Settings
from matchmaking.errors import InputError, ModelNotFoundError
from matchmaking.markets import catalogue
from matchmaking.registry.context import Context, ci_tags, default_actor, registry_client
from matchmaking.registry.conventions import (
    GENERATION_TAG,
    PREVIOUS_TAG,
    PROMOTED_AT_TAG,
    ROLLBACK_FROM_TAG,
    country_model_name,
)
from matchmaking.registry.fence import fence
from matchmaking.registry.fleet import (
    COUNTRY_TARGET_PREFIX,
    CityOutcome,
    for_each_city,
    registered_cities,
    registered_countries,
)
from matchmaking.registry.production import (
    current_production,
    get_version,
    is_consistent,
    list_versions,
    set_production,
    verify_consistent,
)
from matchmaking.registry.promote import refresh_choices

logger = logging.getLogger(__name__)


def rollback(
    settings: Settings,
    cities: list[str] | None,
    to: str | None = None,
    actor: str | None = None,
    countries: list[str] | None = None,
) -> list[CityOutcome]:
    """Put each city's (and each country model's) previous Production holder (or version
    ``to``) back in Production; ``cities=None`` and ``countries=None``: every registered city
    and country model (countries first)."""
    client = registry_client(settings)
    every = cities is None and countries is None
    targets = registered_cities(client, settings) if every else list(cities or [])
    country_targets = (
        registered_countries(client, settings) if every else [c.upper() for c in countries or []]
    )
    if to is not None and len(targets) + len(country_targets) != 1:
        raise InputError(
            "--to names one model version: give exactly one --city (or --country) with it"
        )
    ctx = Context(client=client, settings=settings, actor=actor or default_actor())
    outcomes = for_each_city(
        [f"{COUNTRY_TARGET_PREFIX}{c}" for c in country_targets],
        "rollback",
        lambda target: rollback_country(ctx, target.removeprefix(COUNTRY_TARGET_PREFIX), to),
    )
    return outcomes + for_each_city(targets, "rollback", lambda city: rollback_city(ctx, city, to))


def previous_holder(client: MlflowClient, name: str, current: ModelVersion) -> str | None:
    """The version that held Production before ``current``: its ``production.previous`` tag,
    else the most recently promoted other version."""
    recorded = current.tags.get(PREVIOUS_TAG)
    if recorded:
        return recorded
    others = [
        mv
        for mv in list_versions(client, name)
        if mv.tags.get(PROMOTED_AT_TAG) and str(mv.version) != str(current.version)
    ]
    if not others:
        return None
    best = max(others, key=lambda mv: (mv.tags[PROMOTED_AT_TAG], int(mv.version)))
    return str(best.version)


def rollback_city(ctx: Context, city: str, to: str | None) -> CityOutcome:
    """Roll one city back under its promotion lock, then choose again which model serves it."""
    name = ctx.model_name(city)
    try:
        ctx.client.get_registered_model(name)
    except MlflowException as exc:
        raise ModelNotFoundError(f"{city}: no registered model {name}") from exc
    outcome = _rollback(ctx, city, name, to)
    if outcome.status != "unchanged":
        refresh_choices(ctx, [city], outcome)
    return outcome


def rollback_country(ctx: Context, country: str, to: str | None) -> CityOutcome:
    """Roll a country model back under its promotion lock, then choose again which model
    serves each of the country's cities."""
    name = country_model_name(ctx.settings.model_name_prefix, country)
    try:
        ctx.client.get_registered_model(name)
    except MlflowException as exc:
        raise ModelNotFoundError(f"{country}: no registered country model {name}") from exc
    outcome = _rollback(ctx, f"{COUNTRY_TARGET_PREFIX}{country.upper()}", name, to)
    if outcome.status != "unchanged":
        refresh_choices(ctx, catalogue().cities_of(country), outcome)
    return outcome


def _rollback(ctx: Context, city: str, name: str, to: str | None) -> CityOutcome:
    """Roll model ``name`` back under its promotion lock (``city``: its fleet label)."""
    client = ctx.client
    lock = ctx.lock(name)
    with lock.hold() as lease:
        current = current_production(client, name)
        if current is None:
            raise ModelNotFoundError(f"{name} has no Production version to roll back from")
        cur = str(current.version)
        target = to or previous_holder(client, name, current)
        if target is None:
            raise ModelNotFoundError(
                f"{name}: no earlier Production version is recorded; pass --to N"
            )
        get_version(client, name, target)
        if target == cur:
            if is_consistent(client, name):
                return CityOutcome(city, "rollback", "unchanged", cur, cur, "already in Production")
            fence(client, name, lock, lease)  # stages out of step with the alias: set them again
            set_production(client, name, cur, "stage repaired from the alias", ctx.actor)
            verify_consistent(client, name)
            return CityOutcome(city, "rollback", "repaired", cur, cur, "stage Production repaired")
        lease = fence(client, name, lock, lease)
        tags = {
            PREVIOUS_TAG: cur,
            ROLLBACK_FROM_TAG: cur,
            GENERATION_TAG: str(lease.generation),
            **ci_tags(),
        }
        for key, value in tags.items():
            client.set_model_version_tag(name, target, key, value)
        set_production(client, name, target, f"rollback from v{cur}", ctx.actor)
        verify_consistent(client, name)
    return CityOutcome(city, "rollback", "rolled back", target, cur, f"v{cur} -> v{target}")
