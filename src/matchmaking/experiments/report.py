"""``matchmaking experiment report``: what each arm of a city's live traffic did.

The scoring service logs one ``DECISIONS`` row per ranked candidate of every answer and
dispatch reports one ``OUTCOMES`` row per offer event (``matchmaking.lake.serving_log``). This
module joins them out of core in DuckDB (the files are scanned, never loaded whole: a Jakarta
day is about 800k bookings and 6M decision rows) and reduces them to one row per booking:

- the booking's *served* decision: its first answered request (``served`` true; a retry of the
  same booking does not count twice), its arm and model version (an answer of the city's
  country model, ``model_scope`` country, is labelled ``<model name> v<N>``: never a version
  of the city's own model);
- its first offer (position 1) and that offer's outcome, the number of offers, the ETA of the
  offer that was accepted, and whether the trip completed.

Per arm and version (champion, challenger, fallback): bookings, offers, **first-offer
acceptance** (accepted first offers / bookings whose first offer has an outcome) with its
Wilson interval, any-offer acceptance, **completion** (completed trips / bookings) and the
**pickup ETA** of the accepted offers (p50 and mean). The difference challenger - champion of
first-offer acceptance comes with Newcombe's hybrid score interval (``experiments.stats``),
bookings being the unit (the arms are split by a hash of the booking id).

A *shadow* challenger never answered: its rows are reported apart, with how often its first
choice was the offer actually made first and an self-normalised inverse-propensity estimate of its
first-offer acceptance from the served policy's ``first_propensity`` (consistent only when the
served policy explored; with a greedy champion it is the acceptance of the agreeing bookings
alone).

The verdict compares the interval with the margin of ``OnlineThresholds``: ahead (the lower
end is above the margin), not ahead (the upper end is below it), or *too small to decide*: an
arm below ``min_bookings`` first offers, or an interval that contains the margin. Nothing here
reads the simulator's truth.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from matchmaking.config import Settings
from matchmaking.errors import StorageError
from matchmaking.experiments.stats import (
    DIFFERENCE_METHOD,
    bookings_needed,
    newcombe,
    wilson,
    z_value,
)
from matchmaking.lake import serving_log, storage
from matchmaking.lake.storage import Location

logger = logging.getLogger(__name__)

CHAMPION, CHALLENGER, SHADOW, FALLBACK = "champion", "challenger", "shadow", "fallback"
#: Artifacts of an ``experiment-report`` run.
REPORT_FILE = "experiment_report.md"
TABLE_FILE = "experiment_table.json"
PLOT_FILE = "plots/acceptance_by_arm.png"
#: Verdicts.
AHEAD = "ahead"
NOT_AHEAD = "not ahead"
UNDECIDED = "too small to decide"


class OnlineThresholds(BaseModel):
    """When live traffic decides (``gate.yaml``'s ``online`` section, docs/experiments.md).

    The challenger is ahead when the lower end of the ``confidence`` interval of its first-offer
    acceptance minus the champion's is above ``margin``; each arm needs ``min_bookings``
    bookings with a first offer, else the sample is too small to decide.
    """

    model_config = ConfigDict(extra="forbid")

    margin: float = Field(default=0.0, ge=0.0, lt=1.0)
    confidence: float = Field(default=0.95, gt=0.0, lt=1.0)
    min_bookings: int = Field(default=200, ge=1)


@dataclass(frozen=True)
class ArmStats:
    """One arm and model version over the window (``version`` "" in fallback)."""

    arm: str
    version: str
    bookings: int  # bookings answered by this arm (shadow: scored)
    offered: int  # of them, bookings whose first offer has an outcome
    offers: int  # offer outcomes (positions 1, 2, 3, ...)
    first_accepted: int
    acceptance: float  # first_accepted / offered
    acceptance_ci_low: float
    acceptance_ci_high: float
    any_accepted: int  # bookings where some offer was accepted
    completed: int  # bookings whose trip completed
    completion: float  # completed / bookings
    eta_p50_min: float  # pickup ETA of the accepted offers
    eta_mean_min: float
    agreement: float = math.nan  # shadow: its first choice was the served first offer

    @property
    def label(self) -> str:
        return f"{self.arm} v{self.version}" if self.version else self.arm


@dataclass
class ExperimentReport:
    """The arms of one city's traffic over ``[since, until]`` and the comparison."""

    city: str
    since: date | None
    until: date | None
    thresholds: OnlineThresholds
    arms: list[ArmStats]
    shadow: list[ArmStats]
    challenger: ArmStats | None
    champion: ArmStats | None
    difference: float = math.nan
    difference_ci_low: float = math.nan
    difference_ci_high: float = math.nan
    verdict: str = UNDECIDED
    warnings: list[str] = field(default_factory=list)
    run_id: str | None = None

    @property
    def decided(self) -> bool:
        return self.verdict != UNDECIDED

    @property
    def ahead(self) -> bool:
        """Whether the challenger beats the champion by the margin at the confidence."""
        return self.verdict == AHEAD

    def table(self) -> pd.DataFrame:
        """Every arm (served and shadow) as rows."""
        rows = [{**asdict(a), "served": a.arm != SHADOW} for a in [*self.arms, *self.shadow]]
        return pd.DataFrame(rows)

    def metrics(self) -> dict[str, float]:
        """``challenger.*``, ``champion.*`` and ``difference.*`` (finite values only)."""
        out: dict[str, float] = {}
        for prefix, arm in ((CHALLENGER, self.challenger), (CHAMPION, self.champion)):
            if arm is None:
                continue
            for key in (
                "bookings",
                "offered",
                "offers",
                "acceptance",
                "acceptance_ci_low",
                "acceptance_ci_high",
                "completion",
                "eta_p50_min",
                "eta_mean_min",
            ):
                out[f"{prefix}.{key}"] = float(getattr(arm, key))
        out["difference.acceptance"] = self.difference
        out["difference.acceptance_ci_low"] = self.difference_ci_low
        out["difference.acceptance_ci_high"] = self.difference_ci_high
        out["decided"] = float(self.decided)
        out["challenger_ahead"] = float(self.ahead)
        return {k: v for k, v in out.items() if math.isfinite(v)}


# -- reading the logs ---------------------------------------------------------------------------


def _quoted(value: str) -> str:
    return value.replace("'", "''")


def _scan(con: duckdb.DuckDBPyConnection, files: list[Location], columns: list[str]) -> str:
    """A DuckDB ``read_parquet`` over ``files`` (remote ones through fsspec), projected."""
    uris = []
    for path in files:
        name, fs = Location.of(path).engine_source()
        if fs is not None:
            protocol = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
            if not con.filesystem_is_registered(protocol):
                con.register_filesystem(fs)
        uris.append(f"'{_quoted(name)}'")
    scan = f"read_parquet([{', '.join(uris)}], filename = true, file_row_number = true)"
    return f"(SELECT {', '.join(columns)} FROM {scan})"


_DECISION_COLUMNS = [
    "request_id",
    "booking_id",
    "decided_at",
    "model_name",
    "model_version",
    "model_scope",
    "arm",
    "served",
    "driver_id",
    "position",
    "eta_seconds",
    "first_propensity",
]
# ``filename`` and ``file_row_number`` break ties of ``received_at`` as ``read_log`` does: the
# first stored (files in name order, rows in file order).
_OUTCOME_COLUMNS = [
    "booking_id",
    "driver_id",
    "position",
    "stage",
    "outcome",
    "received_at",
    "filename",
    "file_row_number",
]

_ARM_SQL = """
SELECT arm, version,
       count(*) AS bookings,
       count(first_outcome) AS offered,
       coalesce(sum(offers), 0) AS offers,
       count(*) FILTER (WHERE first_outcome = 'accepted') AS first_accepted,
       count(accepted_eta) AS any_accepted,
       count(*) FILTER (WHERE completed) AS completed,
       median(accepted_eta) / 60.0 AS eta_p50_min,
       avg(accepted_eta) / 60.0 AS eta_mean_min
FROM per_booking GROUP BY arm, version ORDER BY arm, version
"""


def _load(con: duckdb.DuckDBPyConnection, decisions: str, outcomes: str | None) -> None:
    """Tables ``served`` (the served decision rows), ``per_booking`` and ``shadow_top``."""
    # A version is a number of the city's own model; answers of its country's pooled model
    # (``model_scope`` country, docs/pooled.md) are labelled ``<model name> v<N>`` so they
    # never count as a version of the city's model.
    con.execute(
        f"""CREATE TEMP TABLE dec AS
        SELECT *, CASE WHEN model_scope = 'country'
                       THEN model_name || ' v' || coalesce(model_version, '')
                       ELSE coalesce(model_version, '') END AS version
        FROM {decisions}"""
    )
    con.execute(
        """CREATE TEMP TABLE served AS
        WITH first_req AS (
            SELECT booking_id, arg_min(request_id, decided_at) AS request_id
            FROM dec WHERE served GROUP BY booking_id)
        SELECT d.* FROM dec d JOIN first_req f USING (booking_id, request_id) WHERE d.served"""
    )
    if outcomes is None:
        con.execute(
            "CREATE TEMP TABLE outc (booking_id VARCHAR, driver_id VARCHAR, position SMALLINT, "
            "stage VARCHAR, outcome VARCHAR)"
        )
    else:  # one row per OUTCOME_KEY: the first received (as serving_log.read_log)
        con.execute(
            f"""CREATE TEMP TABLE outc AS
            SELECT booking_id, driver_id, position, stage,
                   arg_min(outcome, (received_at, filename, file_row_number)) AS outcome
            FROM {outcomes} GROUP BY booking_id, driver_id, position, stage"""
        )
    con.execute(
        """CREATE TEMP TABLE per_booking AS
        SELECT s.booking_id,
               any_value(s.arm) AS arm,
               any_value(s.version) AS version,
               max(o.outcome) FILTER (WHERE o.stage = 'offer' AND s.position = 1) AS first_outcome,
               count(o.outcome) FILTER (WHERE o.stage = 'offer') AS offers,
               max(s.eta_seconds) FILTER (WHERE o.stage = 'offer' AND o.outcome = 'accepted')
                   AS accepted_eta,
               coalesce(bool_or(o.stage = 'trip' AND o.outcome = 'completed'), false)
                   AS completed
        FROM served s
        LEFT JOIN outc o
          ON o.booking_id = s.booking_id AND o.driver_id = s.driver_id
         AND o.position = s.position
        GROUP BY s.booking_id"""
    )


def _arm_rows(con: duckdb.DuckDBPyConnection, sql: str, confidence: float) -> list[ArmStats]:
    out = []
    for r in con.execute(sql).fetchall():
        arm, version, bookings, offered, offers, acc, any_acc, completed, p50, mean = r
        low, high = wilson(int(acc), int(offered), confidence)
        out.append(
            ArmStats(
                arm=str(arm),
                version=str(version),
                bookings=int(bookings),
                offered=int(offered),
                offers=int(offers),
                first_accepted=int(acc),
                acceptance=acc / offered if offered else math.nan,
                acceptance_ci_low=low,
                acceptance_ci_high=high,
                any_accepted=int(any_acc),
                completed=int(completed),
                completion=completed / bookings if bookings else math.nan,
                eta_p50_min=math.nan if p50 is None else float(p50),
                eta_mean_min=math.nan if mean is None else float(mean),
            )
        )
    return out


def _shadow_rows(con: duckdb.DuckDBPyConnection, confidence: float) -> list[ArmStats]:
    """Shadow scorings: agreement with the served first offer and a self-normalised IPS
    estimate of their first-offer acceptance: each booking whose first offer went to the
    shadow's first choice weighs 1 / (the served policy's ``first_propensity`` of it)."""
    rows = con.execute(
        """WITH sh AS (
            SELECT booking_id, any_value(version) AS version,
                   arg_min(driver_id, position) AS top
            FROM dec WHERE NOT served GROUP BY booking_id),
        joined AS (
            SELECT sh.version, pb.first_outcome, pb.offers,
                   coalesce(f.driver_id = sh.top, false) AS agree, f.first_propensity AS p
            FROM sh JOIN per_booking pb USING (booking_id)
            LEFT JOIN served f ON f.booking_id = sh.booking_id AND f.position = 1),
        terms AS (
            SELECT *, CASE WHEN agree AND p > 0 THEN 1.0 / p ELSE 0.0 END AS w,
                   CASE WHEN first_outcome = 'accepted' THEN 1.0 ELSE 0.0 END AS y
            FROM joined)
        SELECT version, count(*) AS bookings, count(first_outcome) AS offered,
               coalesce(sum(offers), 0) AS offers,
               count(*) FILTER (WHERE agree AND first_outcome = 'accepted') AS agreed_accepted,
               avg(CASE WHEN agree THEN 1.0 ELSE 0.0 END)
                   FILTER (WHERE first_outcome IS NOT NULL) AS agreement,
               coalesce(sum(w) FILTER (WHERE first_outcome IS NOT NULL), 0) AS sw,
               coalesce(sum(w * y) FILTER (WHERE first_outcome IS NOT NULL), 0) AS swy,
               coalesce(sum(w * w) FILTER (WHERE first_outcome IS NOT NULL), 0) AS sww,
               coalesce(sum(w * w * y) FILTER (WHERE first_outcome IS NOT NULL), 0) AS swwy
        FROM terms GROUP BY version ORDER BY version"""
    ).fetchall()
    z = z_value(confidence)
    out = []
    for version, bookings, offered, offers, agreed, agreement, sw, swy, sww, swwy in rows:
        est = swy / sw if sw > 0 else math.nan
        # delta method: Var = sum w^2 (y - est)^2 / (sum w)^2
        spread = swwy * (1.0 - 2.0 * est) + est * est * sww if sw > 0 else math.nan
        half = z * math.sqrt(max(spread, 0.0)) / sw if sw > 0 else math.nan
        out.append(
            ArmStats(
                arm=SHADOW,
                version=str(version),
                bookings=int(bookings),
                offered=int(offered),
                offers=int(offers),
                first_accepted=int(agreed),
                acceptance=est,
                acceptance_ci_low=max(0.0, est - half) if sw > 0 else math.nan,
                acceptance_ci_high=min(1.0, est + half) if sw > 0 else math.nan,
                any_accepted=0,
                completed=0,
                completion=math.nan,
                eta_p50_min=math.nan,
                eta_mean_min=math.nan,
                agreement=math.nan if agreement is None else float(agreement),
            )
        )
    return out


def arm_stats(
    root: Location, city: str, since: date | None, until: date | None, confidence: float
) -> tuple[list[ArmStats], list[ArmStats]]:
    """Served arms and shadow scorings of ``city`` with decisions dated in ``[since, until]``
    (outcomes received up to a day after ``until`` count: a trip ends after midnight).

    Raises:
        StorageError: no decision is logged for the city in the window.
    """
    decisions = serving_log.log_files(root, "decisions", city, since, until)
    if not decisions:
        window = f"{since or 'the start'}..{until or 'the end'}"
        raise StorageError(
            f"no decision of {city} is logged in {storage.join(root, serving_log.SERVING)} for "
            f"{window}: is the scoring service writing its decision log to this lake "
            "(MATCHMAKING_SERVE_LAKE_URI, docs/serving.md), and is the window right?"
        )
    outcome_until = until + timedelta(days=1) if until else None
    outcomes = serving_log.log_files(root, "outcomes", city, since, outcome_until)
    with tempfile.TemporaryDirectory(prefix="mm-experiment-") as scratch:
        con = duckdb.connect(str(Path(scratch) / "report.duckdb"))
        try:
            con.execute("SET threads = 2")
            _load(
                con,
                _scan(con, decisions, _DECISION_COLUMNS),
                _scan(con, outcomes, _OUTCOME_COLUMNS) if outcomes else None,
            )
            return _arm_rows(con, _ARM_SQL, confidence), _shadow_rows(con, confidence)
        finally:
            con.close()


# -- the comparison -----------------------------------------------------------------------------


def _pick(arms: list[ArmStats], arm: str, version: str | None) -> ArmStats | None:
    """The arm's row of ``version``, else (no version asked) its row with most bookings."""
    rows = [a for a in arms if a.arm == arm]
    if version is not None:
        return next((a for a in rows if a.version == str(version)), None)
    return max(rows, key=lambda a: a.bookings, default=None)


def compare(
    city: str,
    since: date | None,
    until: date | None,
    arms: list[ArmStats],
    shadow: list[ArmStats],
    thresholds: OnlineThresholds,
    challenger_version: str | None = None,
    champion_version: str | None = None,
) -> ExperimentReport:
    """The report of ``arms``: challenger vs champion (the given versions, else each arm's
    version with the most bookings), the difference with its interval, verdict, warnings."""
    t = thresholds
    challenger = _pick(arms, CHALLENGER, challenger_version)
    champion = _pick(arms, CHAMPION, champion_version)
    report = ExperimentReport(city, since, until, t, arms, shadow, challenger, champion)
    for arm, version in ((CHALLENGER, challenger_version), (CHAMPION, champion_version)):
        several = sorted(a.version for a in arms if a.arm == arm)
        if version is None and len(several) > 1:
            chosen = _pick(arms, arm, None)
            report.warnings.append(
                f"the {arm} arm served versions {', '.join(several)} in the window; compared: "
                f"v{chosen.version if chosen else '?'} (the most bookings); narrow the window "
                "to one version"
            )
    if challenger is None or champion is None:
        missing = [
            f"{name}" + (f" v{v}" if v else "")
            for name, row, v in (
                (CHALLENGER, challenger, challenger_version),
                (CHAMPION, champion, champion_version),
            )
            if row is None
        ]
        report.warnings.append(
            f"no served booking of the {' and the '.join(missing)} in the window: nothing to "
            "compare (a challenger needs a share of live traffic, docs/experiments.md)"
        )
        return report
    d, low, high = newcombe(
        challenger.first_accepted,
        challenger.offered,
        champion.first_accepted,
        champion.offered,
        t.confidence,
    )
    report.difference, report.difference_ci_low, report.difference_ci_high = d, low, high
    small = [a for a in (challenger, champion) if a.offered < t.min_bookings]
    if small:
        report.warnings.append(
            "too small to decide: "
            + ", ".join(f"{a.label} has {a.offered} first offers" for a in small)
            + f"; each arm needs >= {t.min_bookings} (min_bookings)"
        )
        report.verdict = UNDECIDED
    elif low > t.margin:
        report.verdict = AHEAD
    elif high < t.margin:
        report.verdict = NOT_AHEAD
    else:
        need = bookings_needed(
            challenger.acceptance, champion.acceptance, abs(d - t.margin), t.confidence
        )
        report.warnings.append(
            f"too small to decide: the {t.confidence:.0%} interval [{low:+.4f}, {high:+.4f}] "
            f"of the difference contains the margin {t.margin:+.4f}"
            + (
                f"; about {need} first offers per arm would settle a difference of {d:+.4f}"
                if need
                else ""
            )
        )
        report.verdict = UNDECIDED
    return report


def build_report(
    settings: Settings,
    city: str,
    since: date | None,
    until: date | None,
    thresholds: OnlineThresholds,
    challenger_version: str | None = None,
    champion_version: str | None = None,
) -> ExperimentReport:
    """Read the city's decision and outcome logs and compare the arms (no MLflow run)."""
    arms, shadow = arm_stats(settings.lake_dir, city, since, until, thresholds.confidence)
    return compare(
        city, since, until, arms, shadow, thresholds, challenger_version, champion_version
    )


# -- rendering ----------------------------------------------------------------------------------


def _pct(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.1%}"


def _num(value: float, fmt: str = ".2f") -> str:
    return "-" if not math.isfinite(value) else format(value, fmt)


def render(report: ExperimentReport) -> str:
    """The report as markdown (printed by the command, logged as ``experiment_report.md``)."""
    t = report.thresholds
    level = f"{t.confidence:.0%}"
    window = f"{report.since or 'start'}..{report.until or 'end'}"
    lines = [
        f"# Experiment report: {report.city}, {window}",
        "",
        f"- verdict: **{report.verdict}** (challenger - champion first-offer acceptance, "
        f"{level} {DIFFERENCE_METHOD} interval, margin {t.margin:+.4f}, "
        f">= {t.min_bookings} first offers per arm)",
    ]
    c, p = report.challenger, report.champion
    if c is not None and p is not None:
        lines.append(
            f"- difference {c.label} - {p.label}: "
            f"{_num(report.difference, '+.4f')} [{_num(report.difference_ci_low, '+.4f')}, "
            f"{_num(report.difference_ci_high, '+.4f')}]"
        )
    lines += [f"- warning: {w}" for w in report.warnings]
    lines += [
        "",
        f"| arm | version | bookings | offers | first-offer acceptance [{level}] | "
        "any accepted | completion | pickup ETA p50 / mean (min) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for a in report.arms:
        lines.append(
            f"| {a.arm} | {a.version or '-'} | {a.bookings} | {a.offers} | "
            f"{_pct(a.acceptance)} [{_pct(a.acceptance_ci_low)}, {_pct(a.acceptance_ci_high)}] "
            f"({a.first_accepted}/{a.offered}) | {_pct(a.any_accepted / a.bookings)} | "
            f"{_pct(a.completion)} | {_num(a.eta_p50_min)} / {_num(a.eta_mean_min)} |"
        )
    if report.shadow:
        lines += [
            "",
            "Shadow scorings (never answered): how often their first choice was the offer made "
            "first, and a self-normalised inverse-propensity estimate of their first-offer "
            "acceptance from the served policy's propensities (consistent only when the "
            "served policy explored).",
            "",
            f"| version | bookings | agreement | SNIPS first-offer acceptance [{level}] |",
            "| --- | --- | --- | --- |",
        ]
        for a in report.shadow:
            lines.append(
                f"| {a.version or '-'} | {a.bookings} | {_pct(a.agreement)} | "
                f"{_pct(a.acceptance)} [{_pct(a.acceptance_ci_low)}, "
                f"{_pct(a.acceptance_ci_high)}] |"
            )
    return "\n".join(lines) + "\n"


def params(report: ExperimentReport) -> dict[str, Any]:
    """The run's params: the window, the rule and what was compared."""
    t = report.thresholds
    return {
        "city": report.city,
        "since": report.since.isoformat() if report.since else "",
        "until": report.until.isoformat() if report.until else "",
        "confidence": t.confidence,
        "margin": t.margin,
        "min_bookings": t.min_bookings,
        "interval": DIFFERENCE_METHOD,
        "challenger_version": report.challenger.version if report.challenger else "",
        "champion_version": report.champion.version if report.champion else "",
    }


# -- the MLflow run -----------------------------------------------------------------------------


def log_report(settings: Settings, report: ExperimentReport) -> str:
    """Log the ``experiment-report-<city>`` run in the city's experiment: params (window, rule,
    versions), metrics (``challenger.*``, ``champion.*``, ``difference.*``, ``decided``), the
    markdown report, the table of arms and the acceptance plot. Returns the run id.

    Raises:
        TrackingError: the tracking server refused or could not be reached.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from matchmaking import tracking
    from matchmaking.errors import TrackingError
    from matchmaking.evaluation.plots import close_figure, plot_arm_acceptance

    try:
        tracking.configure(settings)
        tracking.use_experiment(settings, report.city)
        with mlflow.start_run(run_name=f"experiment-report-{report.city}") as run:
            mlflow.set_tags(
                tracking.reproducibility_tags(
                    step="experiment_report", city=report.city, verdict=report.verdict
                )
            )
            mlflow.log_params(params(report))
            mlflow.log_metrics(report.metrics())
            mlflow.log_text(render(report), REPORT_FILE)
            table = report.table()
            mlflow.log_table(table, TABLE_FILE)
            figure = plot_arm_acceptance(table, report.thresholds.confidence)
            mlflow.log_figure(figure, PLOT_FILE)
            close_figure(figure)
            report.run_id = run.info.run_id
            return run.info.run_id
    except MlflowException as exc:
        raise TrackingError(
            f"the experiment report of {report.city} could not be logged to MLflow ({exc}); "
            "check the tracking server and rerun"
        ) from exc


def experiment_report(
    settings: Settings,
    city: str,
    since: date | None,
    until: date | None,
    thresholds: OnlineThresholds,
) -> ExperimentReport:
    """``matchmaking experiment report``: build the report and log it as an MLflow run."""
    report = build_report(settings, city, since, until, thresholds)
    log_report(settings, report)
    logger.info("experiment report %s: %s (run %s)", city, report.verdict, report.run_id)
    return report
