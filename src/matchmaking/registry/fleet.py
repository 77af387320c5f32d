"""Fleet mode: which cities have a model, running an action on each, and the summary.

A city's failure is recorded in its outcome and never stops the next city; the command exits
with the highest failure code among the cities.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from mlflow.entities.model_registry import RegisteredModel
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from matchmaking.config import Settings
from matchmaking.errors import MatchmakingError
from matchmaking.markets import catalogue
from matchmaking.registry.conventions import city_of_model, country_of_model

logger = logging.getLogger(__name__)


@dataclass
class CityOutcome:
    """What happened to one city; ``exit_code`` 0 means it went as asked."""

    city: str
    action: str
    status: str
    version: str | None = None
    previous: str | None = None
    detail: str = ""  # the gate's reason (promote), or what went wrong
    exit_code: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    report: str = ""  # the gate's markdown report (promote only)
    serving: str = ""  # which model serves the city after the move (``promote.refresh_choices``)


def exit_code(outcomes: list[CityOutcome]) -> int:
    """0 when every city succeeded, else the highest exit code among the failures."""
    return max((o.exit_code for o in outcomes), default=0)


def format_summary(outcomes: list[CityOutcome]) -> str:
    """The fleet summary table the commands print."""
    header = ("city", "action", "status", "version", "previous", "auc", "acceptance", "detail")
    rows = [
        (
            o.city,
            o.action,
            o.status,
            o.version or "-",
            o.previous or "-",
            f"{o.metrics['auc']:.4f}" if "auc" in o.metrics else "-",
            f"{o.metrics['acceptance']:.4f}" if "acceptance" in o.metrics else "-",
            "; ".join(x for x in (o.detail, o.serving) if x),
        )
        for o in outcomes
    ]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for r in [header, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(r[:-1], widths, strict=True)]
        lines.append("  ".join([*cells, str(r[-1])]).rstrip())
    failed = sum(1 for o in outcomes if o.exit_code)
    countries = sum(1 for o in outcomes if o.city.startswith(COUNTRY_TARGET_PREFIX))
    what = f"{len(outcomes) - countries} city(ies)" + (
        f", {countries} country model(s)" if countries else ""
    )
    lines.append(f"{what}, {failed} failed")
    return "\n".join(lines)


#: How a country model is named among the fleet's targets and outcomes: ``country:<CC>``.
COUNTRY_TARGET_PREFIX = "country:"


def _registered_models(client: MlflowClient, prefix: str) -> list[RegisteredModel]:
    """Every registered model whose name begins with ``<prefix>-`` (one paged search)."""
    models: list[RegisteredModel] = []
    token: str | None = None
    while True:
        page = client.search_registered_models(
            filter_string=f"name LIKE '{prefix}-%'", max_results=200, page_token=token
        )
        models.extend(page)
        token = page.token
        if not token:
            return models


def registered_countries(client: MlflowClient, settings: Settings) -> list[str]:
    """Every country (alpha-2, upper case) that has a registered model ``<prefix>-country-<cc>``
    (``conventions.country_of_model``), sorted."""
    prefix = settings.model_name_prefix
    found = {
        country_of_model(rm.name, prefix, tags=rm.tags) for rm in _registered_models(client, prefix)
    }
    return sorted(c for c in found if c is not None)


def registered_cities(client: MlflowClient, settings: Settings) -> list[str]:
    """Every catalogue city that has a registered model ``<prefix>-<city>``.

    Names are parsed strictly (``conventions.city_of_model``): a model whose name only begins
    with the prefix (``<prefix>-cancellation-jakarta``, or another prefix ``<prefix>-v2``) is no
    city's model and is left out, never read as a city called ``cancellation-jakarta``.
    """
    prefix = settings.model_name_prefix
    known = catalogue()
    cities: list[str] = []
    for rm in _registered_models(client, prefix):
        city = city_of_model(rm.name, prefix, known, tags=rm.tags)
        if city is None:
            logger.debug("%s is not a model <%s>-<city>: left out", rm.name, prefix)
        else:
            cities.append(city)
    return sorted(cities)


def for_each_city(
    cities: list[str], action: str, run: Callable[[str], CityOutcome]
) -> list[CityOutcome]:
    """Fleet mode: ``run`` each city in turn; a city's failure is recorded, never fatal."""
    outcomes = []
    for city in cities:
        try:
            outcome = run(city)
        except MatchmakingError as exc:
            logger.error("%s: %s", city, exc)
            outcome = CityOutcome(city, action, "error", detail=str(exc), exit_code=exc.exit_code)
        except MlflowException as exc:
            logger.error("%s: tracking server error: %s", city, exc)
            outcome = CityOutcome(city, action, "error", detail=str(exc), exit_code=5)
        outcomes.append(outcome)
    return outcomes
