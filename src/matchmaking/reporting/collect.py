"""Read what the fleet's report needs from the tracking server, in a bounded number of calls.

Paged searches only, never a call per city or per version: the registered models
(``name LIKE '<prefix>-%'``), every version of them in one ``search_model_versions``, the
cities' experiments, and ``search_runs`` over up to ``EXPERIMENTS_PER_SEARCH`` experiments at
once, one search per step (``tags.step = 'process'`` ...) plus one for runs that did not finish.
The run searches are independent and run side by side (``PARALLEL_SEARCHES`` threads).
``Collected.calls`` counts the calls made, per API.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from matchmaking import tracking
from matchmaking.config import Settings
from matchmaking.errors import TrackingError
from matchmaking.markets import catalogue
from matchmaking.registry.conventions import PRODUCTION_ALIAS

logger = logging.getLogger(__name__)

T = TypeVar("T")
_COUNT_LOCK = threading.Lock()

STEPS = ("process", "evaluate", "promote")
EXPERIMENTS_PER_SEARCH = 100
RUNS_PAGE = 1000
PARALLEL_SEARCHES = 4
VERSIONS_PAGE = 10_000
MODELS_PAGE = 1000


@dataclass(frozen=True)
class RunRecord:
    """One run, as the report needs it."""

    run_id: str
    city: str
    step: str
    status: str
    start_time: int  # epoch ms
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]


@dataclass(frozen=True)
class VersionRecord:
    """One registered model version."""

    city: str
    name: str
    version: str
    created: int  # epoch ms
    run_id: str | None
    stage: str
    tags: dict[str, str]


@dataclass
class Collected:
    """Everything read from the tracking server for one report."""

    cities: list[str]
    production: dict[str, str]  # city -> version behind alias ``production``
    versions: dict[str, list[VersionRecord]]  # city -> versions, oldest first
    runs: dict[str, list[RunRecord]]  # city -> runs of the report's steps, oldest first
    unfinished: dict[str, list[RunRecord]]  # city -> runs (any step) not FINISHED
    experiment_ids: dict[str, str]  # city -> experiment id
    calls: Counter[str] = field(default_factory=Counter)

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())


def _pages(fetch: Callable[[str | None], Any], calls: Counter[str], api: str) -> Iterator[Any]:
    token: str | None = None
    while True:
        try:
            page = fetch(token)
        except MlflowException as exc:
            raise TrackingError(
                f"the tracking server refused {api} ({exc}); check MLFLOW_TRACKING_URI and that "
                "the server is up"
            ) from exc
        with _COUNT_LOCK:
            calls[api] += 1
        yield from page
        token = page.token
        if not token:
            return


def _quote(value: str) -> str:
    return value.replace("'", "''")


def _run(record: Any, city: str) -> RunRecord:
    return RunRecord(
        run_id=record.info.run_id,
        city=city,
        step=record.data.tags.get("step", ""),
        status=record.info.status,
        start_time=int(record.info.start_time or 0),
        params=dict(record.data.params),
        metrics=dict(record.data.metrics),
        tags=dict(record.data.tags),
    )


def collect(client: MlflowClient, settings: Settings, cities: list[str] | None) -> Collected:
    """Models, versions, experiments and runs of ``cities`` (None: every city found)."""
    calls: Counter[str] = Counter()
    model_prefix = f"{settings.model_name_prefix}-"
    production: dict[str, str] = {}
    models: set[str] = set()
    for rm in _pages(
        lambda token: client.search_registered_models(
            filter_string=f"name LIKE '{_quote(model_prefix)}%'",
            max_results=MODELS_PAGE,
            page_token=token,
        ),
        calls,
        "search_registered_models",
    ):
        city = rm.name[len(model_prefix) :]
        if not rm.name.startswith(model_prefix) or city not in catalogue():
            continue
        models.add(city)
        aliases = rm.aliases or {}
        if PRODUCTION_ALIAS in aliases:
            production[city] = str(aliases[PRODUCTION_ALIAS])

    exp_prefix = f"{settings.experiment_prefix}-"
    experiment_ids: dict[str, str] = {}
    for exp in _pages(
        lambda token: client.search_experiments(
            filter_string=f"name LIKE '{_quote(exp_prefix)}%'",
            max_results=1000,
            page_token=token,
        ),
        calls,
        "search_experiments",
    ):
        city = exp.name[len(exp_prefix) :]
        if city in catalogue():
            experiment_ids[city] = str(exp.experiment_id)

    wanted = sorted(models | experiment_ids.keys()) if cities is None else sorted(cities)
    chosen = set(wanted)
    versions: dict[str, list[VersionRecord]] = {c: [] for c in wanted}
    if models & chosen:
        names = [tracking.model_name(settings, c) for c in sorted(models & chosen)]
        filter_string = (
            f"name LIKE '{_quote(model_prefix)}%'"
            if cities is None
            else "name IN (" + ", ".join(f"'{_quote(n)}'" for n in names) + ")"
        )
        for mv in _pages(
            lambda token: client.search_model_versions(
                filter_string=filter_string, max_results=VERSIONS_PAGE, page_token=token
            ),
            calls,
            "search_model_versions",
        ):
            city = mv.name[len(model_prefix) :]
            if city not in chosen:
                continue
            versions[city].append(
                VersionRecord(
                    city=city,
                    name=mv.name,
                    version=str(mv.version),
                    created=int(mv.creation_timestamp or 0),
                    run_id=mv.run_id,
                    stage=str(mv.current_stage or ""),
                    tags=dict(mv.tags or {}),
                )
            )
    for city in versions:
        versions[city].sort(key=lambda v: int(v.version))

    by_experiment = {experiment_ids[c]: c for c in wanted if c in experiment_ids}
    runs: dict[str, list[RunRecord]] = {c: [] for c in wanted}
    unfinished: dict[str, list[RunRecord]] = {c: [] for c in wanted}
    ids = sorted(by_experiment)
    searches = [
        (f, ids[i : i + EXPERIMENTS_PER_SEARCH], into)
        for i in range(0, len(ids), EXPERIMENTS_PER_SEARCH)
        for f, into in [
            *((f"tags.step = '{s}'", runs) for s in STEPS),
            ("attributes.status != 'FINISHED'", unfinished),
        ]
    ]

    def search(filter_string: str, chunk: list[str]) -> list[Any]:
        def fetch(token: str | None) -> Any:
            return client.search_runs(
                chunk, filter_string=filter_string, max_results=RUNS_PAGE, page_token=token
            )

        return list(_pages(fetch, calls, "search_runs"))

    # The searches are independent: run them side by side (each one's pages stay in order).
    with ThreadPoolExecutor(PARALLEL_SEARCHES) as pool:
        found = list(pool.map(lambda s: search(s[0], s[1]), searches))
    for (_, _, into), records in zip(searches, found, strict=True):
        for r in records:
            city = by_experiment[r.info.experiment_id]
            into[city].append(_run(r, city))
    for table in (runs, unfinished):
        for city in table:
            table[city].sort(key=lambda r: (r.start_time, r.run_id))
    logger.info(
        "read %d cities, %d versions, %d runs in %d calls",
        len(wanted),
        sum(len(v) for v in versions.values()),
        sum(len(r) for r in runs.values()),
        sum(calls.values()),
    )
    return Collected(wanted, production, versions, runs, unfinished, experiment_ids, calls)
