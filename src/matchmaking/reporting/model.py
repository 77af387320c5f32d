"""What the report shows, built from what was collected: pure functions, no I/O.

The time axis is the **data day**: an evaluation is placed at the last day of its holdout, a
process run at the last day of its window, a gate decision at the last day of the holdout it
used. A move recorded only as a version tag (a rollback, a manual or demo promotion) is placed
at the data day of the latest run that started before it, so the order is the order in which
things happened, in production (where runs follow the calendar) and in a simulation alike.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field

from matchmaking.config import load_yaml_model
from matchmaking.markets import catalogue
from matchmaking.reporting.collect import Collected, RunRecord, VersionRecord
from matchmaking.reporting.drift import DayDrift, DriftConfig

DEFAULT_REPORT_FILE = Path(__file__).resolve().parent.parent / "config" / "report.yaml"

# Evaluate metrics of the model on logged data (offered rows, logged labels) and its
# off-policy (doubly robust) first-offer acceptance from the decision log.
LOGGED_METRICS = ("auc", "logloss", "calibration_error", "dr")
# Evaluate metrics that use the simulator's hidden ground truth: diagnostics, not production.
SIMULATOR_METRICS = ("ndcg_at_1", "hit_at_1", "acceptance", "completion", "pickup_eta_p50_min")
# The evaluate run's metric behind each of the report's names (``matchmaking evaluate``).
EVALUATE_METRICS = {
    "auc": "logged.model.auc",
    "logloss": "logged.model.logloss",
    "calibration_error": "logged.model.calibration_error",
    "dr": "ope.model.dr",
    "dr_ci_low": "ope.model.dr_ci_low",
    "dr_ci_high": "ope.model.dr_ci_high",
    "ndcg_at_1": "sim.oracle.model.ndcg_at_1",
    "hit_at_1": "sim.oracle.model.hit_at_1",
    "acceptance": "sim.replay.model.acceptance",
    "completion": "sim.replay.model.completion",
    "pickup_eta_p50_min": "sim.replay.model.pickup_eta_p50_min",
    "baseline.acceptance": "sim.replay.nearest_eta.acceptance",
}
PROMOTED, REFUSED, ROLLBACK, SET, REPAIRED = "promoted", "refused", "rollback", "set", "repaired"
MOVES = (PROMOTED, ROLLBACK, SET, REPAIRED)
_WINDOW = re.compile(r"(\d{4}-\d{2}-\d{2})_(\d{4}-\d{2}-\d{2})")


class ReportConfig(BaseModel):
    """When a city needs a look (besides drift)."""

    model_config = ConfigDict(extra="forbid")

    bad_share_alert: float = Field(default=0.02, ge=0, le=1)
    stale_evaluation_days: int = Field(default=3, ge=0)
    recent_days: int = Field(default=7, ge=0)


def load_report_config(path: Path | None = None) -> ReportConfig:
    """The report configuration from ``path`` (default: the packaged ``config/report.yaml``)."""
    return load_yaml_model(path or DEFAULT_REPORT_FILE, ReportConfig)


@dataclass(frozen=True)
class Evaluation:
    version: str
    day: date
    window: tuple[date, date]
    metrics: dict[str, float]  # EVALUATE_METRICS' names (nearest-ETA's as baseline.*), drift.*
    run_id: str


@dataclass(frozen=True)
class Event:
    """A move of Production or a gate refusal."""

    kind: str
    version: str
    day: date | None
    at: datetime
    reason: str
    previous: str | None = None
    run_id: str | None = None


@dataclass(frozen=True)
class Health:
    """Data health of one processed window (placed at its last day)."""

    day: date
    start: date
    rows: int
    offered_rows: int
    quarantined: int
    bad_share: float
    quarantine: dict[str, int]
    run_id: str

    @property
    def labelled_share(self) -> float:
        return self.offered_rows / self.rows if self.rows else 0.0


@dataclass(frozen=True)
class Holding:
    """Version ``version`` held Production from ``start`` (to the next holding's start)."""

    version: str
    start: date | None
    kind: str


@dataclass
class CityReport:
    city: str
    name: str
    production: str | None
    production_since: datetime | None
    versions: list[VersionRecord]
    evaluations: list[Evaluation]
    events: list[Event]
    holdings: list[Holding]
    health: list[Health]
    drift: list[DayDrift]
    drift_reference: str | None
    unfinished: list[RunRecord]
    attention: list[str] = field(default_factory=list)

    @property
    def last_evaluation(self) -> Evaluation | None:
        return self.evaluations[-1] if self.evaluations else None

    @property
    def last_health(self) -> Health | None:
        return self.health[-1] if self.health else None

    @property
    def last_drift(self) -> DayDrift | None:
        scored = [d for d in self.drift if d.scored]
        return scored[-1] if scored else None


@dataclass
class FleetReport:
    generated_at: datetime
    cities: list[CityReport]  # the cities that need a look first
    days: tuple[date, date] | None
    drift: DriftConfig
    config: ReportConfig
    calls: dict[str, int]
    since: date | None = None


def _day(value: str | None) -> date | None:
    try:
        return date.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


def window_of(text: str | None) -> tuple[date, date] | None:
    """The ``<start>_<end>`` window named in a dataset path or URI."""
    found = _WINDOW.findall(text or "")
    if not found:
        return None
    start, end = found[-1]
    return date.fromisoformat(start), date.fromisoformat(end)


def _ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, UTC)


def _model_version(model_uri: str, versions: list[VersionRecord]) -> str:
    """The version an evaluate run's ``model_uri`` names (``models:/name/N`` or ``runs:/``)."""
    if model_uri.startswith("models:/"):
        tail = model_uri.removeprefix("models:/").split("/", 1)
        if len(tail) == 2 and tail[1].split("/")[0].isdigit():
            return tail[1].split("/")[0]
    if model_uri.startswith("runs:/"):
        run_id = model_uri.removeprefix("runs:/").split("/", 1)[0]
        for v in versions:
            if v.run_id == run_id:
                return v.version
    return model_uri


def evaluations(runs: list[RunRecord], versions: list[VersionRecord]) -> list[Evaluation]:
    out = []
    for r in runs:
        if r.step != "evaluate" or r.status != "FINISHED":
            continue
        start, end = _day(r.params.get("holdout_start")), _day(r.params.get("holdout_end"))
        if start is None or end is None:
            continue
        metrics = {k: r.metrics[name] for k, name in EVALUATE_METRICS.items() if name in r.metrics}
        metrics |= {k: v for k, v in r.metrics.items() if k.startswith("drift.")}
        version = _model_version(r.params.get("model_uri", ""), versions)
        out.append(Evaluation(version, end, (start, end), metrics, r.run_id))
    return sorted(out, key=lambda e: (e.day, int(e.version) if e.version.isdigit() else 0))


def health(runs: list[RunRecord]) -> list[Health]:
    """One row per day: of the process runs whose window ends that day, the shortest window
    (the daily holdout rather than the training window), the latest run among equals."""
    best: dict[date, tuple[tuple[int, int], Health]] = {}
    for r in runs:
        if r.step != "process" or r.status != "FINISHED" or "rows" not in r.metrics:
            continue
        start, end = _day(r.params.get("start")), _day(r.params.get("end"))
        if start is None or end is None:
            continue
        row = Health(
            day=end,
            start=start,
            rows=int(r.metrics["rows"]),
            offered_rows=int(r.metrics.get("offered_rows", 0)),
            quarantined=int(r.metrics.get("quarantined_rows", 0)),
            bad_share=float(r.metrics.get("bad_share", 0.0)),
            quarantine={
                k.removeprefix("quarantine."): int(v)
                for k, v in r.metrics.items()
                if k.startswith("quarantine.")
            },
            run_id=r.run_id,
        )
        key = (start.toordinal(), r.start_time)
        if end not in best or key > best[end][0]:
            best[end] = (key, row)
    return [best[d][1] for d in sorted(best)]


class _Clock:
    """Maps a wall-clock time to the data day of the latest run started before it."""

    def __init__(self, runs: list[RunRecord]) -> None:
        pairs = []
        for r in runs:
            day = _run_day(r)
            if day is not None:
                pairs.append((r.start_time, day))
        pairs.sort()
        self.times = [t for t, _ in pairs]
        self.days = [d for _, d in pairs]

    def day_at(self, at: datetime) -> date | None:
        i = bisect_right(self.times, int(at.timestamp() * 1000))
        return self.days[i - 1] if i else None


def _run_day(r: RunRecord) -> date | None:
    if r.step == "evaluate":
        return _day(r.params.get("holdout_end"))
    if r.step == "process":
        return _day(r.params.get("end"))
    if r.step == "promote":
        window = window_of(r.params.get("holdout_dir"))
        return window[1] if window else None
    return None


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def events(runs: list[RunRecord], versions: list[VersionRecord]) -> list[Event]:
    """Every gate decision (the ``promote`` runs) and every move recorded on the versions.

    Version tags hold only the latest move of each version (``production.promoted_at``,
    ``production.reason``, ``production.rollback_from``); the promote runs hold every gate
    decision, the reason of the latest one per version comes from its ``gate.reason`` tag.
    """
    clock = _Clock(runs)
    by_version = {v.version: v for v in versions}
    out: list[Event] = []
    for r in runs:
        if r.step != "promote":
            continue
        version = r.tags.get("candidate_version", "")
        mv = by_version.get(version)
        passed = r.tags.get("gate_result") == "passed"
        if mv is not None and mv.tags.get("gate.run_id") == r.run_id:
            reason = mv.tags.get("gate.reason", "")
        else:
            reason = f"see promotion_report.md of run {r.run_id}"
        out.append(
            Event(
                PROMOTED if passed else REFUSED,
                version,
                _run_day(r) or clock.day_at(_ms(r.start_time)),
                _ms(r.start_time),
                reason,
                r.tags.get("production_version") or None,
                r.run_id,
            )
        )
    for v in versions:
        at = _parse_time(v.tags.get("production.promoted_at"))
        reason = v.tags.get("production.reason", "")
        if at is None or reason.startswith("passed the promotion gate"):
            continue  # never moved, or the move is the promote run's event above
        if v.tags.get("production.rollback_from") and reason.startswith("rollback"):
            kind = ROLLBACK
        elif reason.startswith("stage repaired"):
            kind = REPAIRED
        else:
            kind = SET
        previous = v.tags.get("production.rollback_from") if kind == ROLLBACK else None
        out.append(Event(kind, v.version, clock.day_at(at), at, reason, previous))
    return sorted(out, key=lambda e: e.at)


def holdings(moves: list[Event]) -> list[Holding]:
    """Who held Production from when: each move in time order starts a holding."""
    return [Holding(e.version, e.day, e.kind) for e in moves if e.kind in MOVES]


S = TypeVar("S", Evaluation, Event, Health, DayDrift)


def _since(items: list[S], since: date | None) -> list[S]:
    return [i for i in items if since is None or (i.day is not None and i.day >= since)]


def city_report(
    collected: Collected,
    city: str,
    drift: list[DayDrift],
    drift_reference: str | None,
    since: date | None = None,
) -> CityReport:
    """One city's section of the report (attention reasons are added by ``fleet``)."""
    versions = collected.versions.get(city, [])
    runs = collected.runs.get(city, [])
    evs = events(runs, versions)
    production = collected.production.get(city)
    since_at = None
    for v in versions:
        if v.version == production:
            since_at = _parse_time(v.tags.get("production.promoted_at"))
    name = versions[0].name if versions else city
    return CityReport(
        city=city,
        name=name,
        production=production,
        production_since=since_at,
        versions=versions,
        evaluations=_since(evaluations(runs, versions), since),
        events=_since(evs, since),
        holdings=holdings(evs),
        health=_since(health(runs), since),
        drift=_since(drift, since),
        drift_reference=drift_reference,
        unfinished=collected.unfinished.get(city, []),
    )


def attention(
    c: CityReport, latest: date | None, drift: DriftConfig, cfg: ReportConfig
) -> list[str]:
    """Why a city needs a look; empty when it does not."""
    out = []
    if c.production is None:
        out.append("no Production version")
    last = c.last_drift
    if last is not None and last.flagged:
        worst = ", ".join(f"{f} {last.psi[f]:.2f}" for f in last.flagged[:3])
        out.append(f"drift on {last.day}: {worst} (PSI >= {drift.alert_psi})")
    h = c.last_health
    if h is not None and h.bad_share > cfg.bad_share_alert:
        out.append(f"{h.bad_share:.1%} of raw rows quarantined on {h.day}")
    if c.production is not None and not c.evaluations:
        out.append("never evaluated")
    ev = c.last_evaluation
    if ev is not None and latest is not None and (latest - ev.day).days > cfg.stale_evaluation_days:
        out.append(f"last evaluation on {ev.day}, {(latest - ev.day).days} days behind")
    recent = [
        e
        for e in c.events
        if e.kind in (REFUSED, ROLLBACK)
        and latest is not None
        and e.day is not None
        and (latest - e.day).days <= cfg.recent_days
    ]
    if recent:
        e = recent[-1]
        what = "gate refused" if e.kind == REFUSED else "rolled back to"
        out.append(f"{what} v{e.version} on {e.day}")
    failed = [r for r in c.unfinished if r.status == "FAILED"]
    if failed:
        out.append(f"{len(failed)} failed run(s)")
    return out


def fleet(
    collected: Collected,
    drift_by_city: dict[str, tuple[list[DayDrift], str | None]],
    drift: DriftConfig,
    cfg: ReportConfig,
    since: date | None = None,
    now: datetime | None = None,
) -> FleetReport:
    """The whole report: one section per city, the cities that need a look first."""
    cities = [
        city_report(collected, c, *drift_by_city.get(c, ([], None)), since=since)
        for c in collected.cities
    ]
    days = sorted(
        {e.day for c in cities for e in c.evaluations}
        | {h.day for c in cities for h in c.health}
        | {d.day for c in cities for d in c.drift}
    )
    latest = days[-1] if days else None
    for c in cities:
        c.attention = attention(c, latest, drift, cfg)
    cities.sort(key=lambda c: (-len(c.attention), c.city))
    return FleetReport(
        generated_at=now or datetime.now(UTC),
        cities=cities,
        days=(days[0], days[-1]) if days else None,
        drift=drift,
        config=cfg,
        calls=dict(collected.calls),
        since=since,
    )


def display_name(city: str) -> str:
    known = catalogue()
    info = known.get(city) if city in known else None
    return info.name if info else city
