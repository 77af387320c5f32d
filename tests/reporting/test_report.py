"""The report built from the real tracking server and lake after a few simulated days."""

from __future__ import annotations

import math
import re
from collections import Counter
from datetime import date
from html import escape
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from support.fleet import CITIES, Fleet

from matchmaking.reporting import report as report_module
from matchmaking.reporting.collect import STEPS
from matchmaking.reporting.drift import METRIC_PREFIX, load_drift_config
from matchmaking.reporting.model import (
    EVALUATE_METRICS,
    PROMOTED,
    REFUSED,
    ROLLBACK,
    CityReport,
    load_report_config,
)
from matchmaking.reporting.report import REPORT_FILE

pytestmark = pytest.mark.slow


def _client(fleet: Fleet) -> MlflowClient:
    uri = str(fleet.settings.tracking_uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _city(fleet: Fleet, city: str) -> CityReport:
    assert fleet.report is not None
    return next(c for c in fleet.report.report.cities if c.city == city)


def _html(fleet: Fleet) -> str:
    assert fleet.report is not None
    return fleet.report.path.read_text()


def _section(html: str, city: str) -> str:
    start = html.index(f'<section id="city-{city}">')
    return html[start : html.index("</section>", start)]


def _row(html: str, needle: str) -> str:
    """The table row of ``html`` that contains ``needle``."""
    at = html.index(needle)
    return html[html.rindex("<tr", 0, at) : html.index("</tr>", at)]


def test_every_city_version_and_promotion_is_in_the_report(fleet: Fleet) -> None:
    client = _client(fleet)
    html = _html(fleet)
    fleet_table = html[html.index('id="fleet"') : html.index("</table>", html.index('id="fleet"'))]
    for city in CITIES:
        name = f"{fleet.settings.model_name_prefix}-{city}"
        c = _city(fleet, city)
        section = _section(html, city)
        assert f'href="#city-{city}"' in fleet_table
        versions = client.search_model_versions(f"name='{name}'")
        assert sorted(v.version for v in c.versions) == sorted(str(v.version) for v in versions)
        for v in versions:
            assert f'<td data-sort="v{v.version}' in section, f"{city} v{v.version} missing"
        production = client.get_model_version_by_alias(name, "production").version
        assert c.production == str(production)
        assert _row(fleet_table, f'href="#city-{city}"').count(f">v{production}<") == 1

    for outcome in fleet.outcomes:
        c = _city(fleet, outcome.city)
        section = _section(html, outcome.city)
        if outcome.action == "promote" and outcome.status in ("promoted", "refused"):
            kind = PROMOTED if outcome.status == "promoted" else REFUSED
            event = next(e for e in c.events if e.run_id == outcome.run_id)
            assert (event.kind, event.version) == (kind, outcome.version)
            assert event.reason == outcome.detail  # the gate's reason, from gate.reason
            row = _row(section, str(outcome.run_id))
            assert f">{kind}<" in row and escape(outcome.detail) in row
        elif outcome.action == "rollback":
            assert outcome.status == "rolled back", outcome
            event = next(e for e in c.events if e.kind == ROLLBACK)
            assert (event.version, event.previous) == (outcome.version, outcome.previous)
            assert c.holdings[-1].version == outcome.version
    kinds = {e.kind for city in CITIES for e in _city(fleet, city).events}
    assert {PROMOTED, ROLLBACK} <= kinds, kinds
    assert REFUSED in kinds, "Bangkok's weak second model should have been refused"


def test_numbers_equal_the_logged_metrics(fleet: Fleet) -> None:
    client = _client(fleet)
    html = _html(fleet)
    quarantined: set[str] = set()
    for city in CITIES:
        c = _city(fleet, city)
        section = _section(html, city)
        evaluations = {e.run_id: e for e in c.evaluations}
        assert set(evaluations) == set(fleet.evaluate_runs[city])
        for run_id in fleet.evaluate_runs[city]:
            logged = client.get_run(run_id).data
            ev = evaluations[run_id]
            assert ev.version == logged.params["model_uri"].rsplit("/", 1)[1]
            assert str(ev.day) == logged.params["holdout_end"]
            row = _row(section, run_id)
            for metric in ("auc", "logloss", "acceptance", "completion"):
                value = logged.metrics[EVALUATE_METRICS[metric]]
                assert ev.metrics[metric] == value
                assert f">{value:.4f}<" in row, (city, metric, value)
        health = {h.run_id: h for h in c.health}
        holdouts = fleet.process_runs[city][1::2][: len(fleet.evaluate_runs[city]) - 1]
        holdouts.append(fleet.process_runs[city][-1])
        for run_id in holdouts:  # the daily holdout windows are the per-day rows
            logged = client.get_run(run_id).data.metrics
            h = health[run_id]
            assert (h.rows, h.offered_rows, h.quarantined) == (
                logged["rows"],
                logged["offered_rows"],
                logged["quarantined_rows"],
            )
            assert h.bad_share == logged["bad_share"]
            table = section[section.index(f'id="health-{city}"') :]
            row = _row(table[: table.index("</table>")], f"{h.start}..{h.day}")
            assert f">{int(logged['rows'])}<" in row
            assert f">{logged['offered_rows'] / logged['rows']:.4f}<" in row
            reasons = {
                k.removeprefix("quarantine."): v
                for k, v in logged.items()
                if k.startswith("quarantine.")
            }
            assert h.quarantine == reasons
            for reason, value in reasons.items():
                assert f"quarantined: {reason}" in table
                assert f">{int(value)}<" in row
            quarantined |= {reason for reason, v in reasons.items() if v}
    assert "candidates.bad_eta" in quarantined, "the corrupted ETAs should show as quarantined rows"


def test_evaluate_logs_drift_of_every_compared_feature(fleet: Fleet) -> None:
    client = _client(fleet)
    config = load_drift_config()
    for city in CITIES:
        for run_id in fleet.evaluate_runs[city]:
            metrics = client.get_run(run_id).data.metrics
            values = [metrics[f"{METRIC_PREFIX}{f}"] for f in config.features]
            assert all(math.isfinite(v) and v >= 0 for v in values)
            assert metrics["drift.max_psi"] == max(values)
            over = sum(v >= config.alert_psi for v in values)
            assert metrics["drift.features_over_alert"] == over
        c = _city(fleet, city)
        assert c.drift_reference is not None and c.drift, f"{city}: drift not measured"
        assert all(d.scored for d in c.drift)


def test_the_registry_is_read_in_a_bounded_number_of_calls(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every client call the build makes is counted, not only the ones it reports itself."""
    made: Counter[str] = Counter()

    class Counting(MlflowClient):
        def __getattribute__(self, name: str) -> Any:
            attr = super().__getattribute__(name)
            if callable(attr) and not name.startswith("_"):
                made[name] += 1
            return attr

    monkeypatch.setattr(report_module, "MlflowClient", Counting)
    built = report_module.build(
        fleet.settings, None, None, load_drift_config(), load_report_config()
    )
    # one page each: models, experiments, versions; one search per step + unfinished runs
    expected = {
        "search_registered_models": 1,
        "search_experiments": 1,
        "search_model_versions": 1,
        "search_runs": len(STEPS) + 1,
    }
    assert dict(made) == expected
    assert built.calls == expected
    assert fleet.report is not None and fleet.report.report.calls == expected


def test_the_report_is_logged_as_an_artifact_of_a_report_run(fleet: Fleet, tmp_path: Path) -> None:
    assert fleet.report is not None and fleet.report.run_id
    run = _client(fleet).get_run(fleet.report.run_id)
    assert run.data.tags["step"] == "report" and run.info.status == "FINISHED"
    got = mlflow.artifacts.download_artifacts(
        run_id=fleet.report.run_id,
        artifact_path=f"report/{REPORT_FILE}",
        dst_path=str(tmp_path),
        tracking_uri=str(fleet.settings.tracking_uri),
    )
    assert Path(got).read_bytes() == fleet.report.path.read_bytes()
    assert re.search(r"<table[^>]*id=\"fleet\"", Path(got).read_text())


def test_cities_and_since_narrow_the_report(fleet: Fleet) -> None:
    since = date(2026, 8, 14)
    built = report_module.build(
        fleet.settings, ["jakarta"], since, load_drift_config(), load_report_config()
    )
    assert [c.city for c in built.cities] == ["jakarta"]
    c = built.cities[0]
    assert c.versions and c.evaluations
    assert all(e.day >= since for e in c.evaluations)
    assert all(h.day >= since for h in c.health) and all(d.day >= since for d in c.drift)
    assert all(e.day is not None and e.day >= since for e in c.events)
    assert built.calls["search_model_versions"] == 1  # name IN (...) instead of LIKE
