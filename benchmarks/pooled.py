"""Benchmark: pooled country models for small cities (issue 15, quality target).

At the demo's scale (0.002 of the catalogue's volumes, as ``matchmaking demo``; seed 42; 28
days of history, 28 to train, 7 to hold out), small cities (< 150 bookings a day) of two
countries and larger cities of the same countries are generated and processed; each city gets
its own model (``train``, defaults) and each country a pooled model (``train-country``,
defaults). Then the platform's own path decides, on logged data alone: ``promote --all-cities``
(the real gate, countries first), whose moves re-make each city's serving choice
(``registry.scope``, recorded as ``serving.*`` tags on the city's registered model). Finally
the simulator diagnostics (``evaluate`` where the lake has ``truth/``: the oracle's AUC and the
dispatch replay's acceptance) score both models of every city on its holdout; only this
benchmark reads them.

Target: on at least three small cities of at least two countries, the model that serves each
city is within 0.015 of the oracle's AUC and within 1.5 points of its replay acceptance.

Run: ``.venv/bin/python -m benchmarks.run --only pooled`` (writes benchmarks/reports/pooled.md);
``python -m benchmarks.pooled --root DIR`` keeps (and reuses) the lake and the store in DIR.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.common import checks_table, machine_lines, write_report

logger = logging.getLogger("benchmarks.pooled")

REPORT = Path(__file__).parent / "reports" / "pooled.md"
COUNTRIES: dict[str, tuple[str, ...]] = {
    "ID": ("makassar", "denpasar", "medan", "bandung", "surabaya", "jakarta"),
    "TH": ("phuket", "chiang-mai", "bangkok"),
}
SMALL_BELOW = 150  # bookings a day at the benchmark's scale
START = date(2026, 8, 1)
SCALE = 0.002
SEED = 42
EVAL_SEED = 7
TRAIN_DAYS = 28
HOLDOUT_DAYS = 7
MAX_AUC_GAP = 0.015
MAX_ACCEPTANCE_GAP = 0.015
MIN_SMALL_CITIES = 3
MIN_COUNTRIES = 2


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _gaps(metrics: dict[str, float]) -> dict[str, float]:
    model_auc, oracle_auc = metrics["logged.model.auc"], metrics["sim.oracle.oracle.auc"]
    model_acc = metrics["sim.replay.model.acceptance"]
    oracle_acc = metrics["sim.replay.oracle.acceptance"]
    return {
        "auc": model_auc,
        "oracle_auc": oracle_auc,
        "auc_gap": oracle_auc - model_auc,
        "acceptance": model_acc,
        "oracle_acceptance": oracle_acc,
        "acceptance_gap": oracle_acc - model_acc,
        "nearest_eta_acceptance": metrics["sim.replay.nearest_eta.acceptance"],
    }


def gate() -> Any:
    """The packaged gate, with the latency bound lifted: the machine is shared (load 20-30
    while this ran), which makes single-booking p99 latency swing past 50 ms; latency is the
    serving benchmarks' business, quality is this one's."""
    from matchmaking.registry.gate import load_thresholds

    return load_thresholds().model_copy(update={"max_latency_p99_ms": 10_000.0})


def run(root: Path) -> dict[str, Any]:
    """Generate, process, train, promote (with the serving choice), diagnose; the figures."""
    from mlflow.tracking import MlflowClient

    from matchmaking.config import Settings
    from matchmaking.evaluation.evaluate import evaluate
    from matchmaking.features.history import HISTORY_DAYS
    from matchmaking.markets import catalogue
    from matchmaking.pipeline import windows
    from matchmaking.processing.step import build_dataset
    from matchmaking.registry.conventions import (
        SERVING_MODEL_TAG,
        SERVING_REASON_TAG,
        SERVING_SCOPE_TAG,
    )
    from matchmaking.registry.promote import promote
    from matchmaking.training.params import load_params
    from matchmaking.training.pooled import train_country
    from matchmaking.training.train import train
    from matchmaking.world.generate import generate_world

    settings = Settings(data_dir=root, tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    cities = [c for members in COUNTRIES.values() for c in members]
    days = HISTORY_DAYS + TRAIN_DAYS + HOLDOUT_DAYS
    timings: dict[str, float] = {}
    loads: dict[str, float] = {}

    def step(name: str, started: float) -> None:
        timings[name] = time.perf_counter() - started
        logger.info("%s: %.0f s (load %.1f)", name, timings[name], os.getloadavg()[0])

    loads["start"] = os.getloadavg()[0]
    t = time.perf_counter()
    last = START + timedelta(days=days - 1)
    lake = Path(settings.lake_dir)
    done = [lake / "raw" / f"city={c}" / f"date={last}" / "_SUCCESS" for c in cities]
    if not all(p.exists() for p in done):  # a kept --root with the world already generated
        generate_world(cities, START, days, SEED, settings.lake_dir, SCALE, None, progress=False)
    step("generate", t)
    w = windows(START + timedelta(days=days - 1), TRAIN_DAYS, HOLDOUT_DAYS)
    t = time.perf_counter()
    train_dirs, holdout_dirs, offered = {}, {}, {}
    for city in cities:
        tr = build_dataset(settings, city, w.train_start, w.train_end, max_bad_share=0.05)
        ho = build_dataset(settings, city, w.holdout_start, w.holdout_end, max_bad_share=0.05)
        train_dirs[city], holdout_dirs[city] = tr.dataset_dir, ho.dataset_dir
        offered[city] = (tr.offered_rows, ho.offered_rows)
    step("process", t)
    params = load_params()
    t = time.perf_counter()
    own = {c: train(settings, c, train_dirs[c], params, reuse_existing=False) for c in cities}
    step("train_cities", t)
    t = time.perf_counter()
    pooled = {
        cc: train_country(
            settings, cc, {c: train_dirs[c] for c in members}, params, reuse_existing=False
        )
        for cc, members in COUNTRIES.items()
    }
    step("train_countries", t)
    loads["promote"] = os.getloadavg()[0]
    t = time.perf_counter()
    outcomes = promote(settings, None, thresholds=gate())  # countries first
    step("promote_and_choose", t)
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    t = time.perf_counter()
    known = catalogue()
    rows: dict[str, dict[str, Any]] = {}
    for cc, members in COUNTRIES.items():
        for city in members:
            figures = {}
            for kind, uri in (("city", own[city].model_uri), ("country", pooled[cc].model_uri)):
                result = evaluate(settings, city, uri, holdout_dirs[city], EVAL_SEED, log_run=False)
                figures[kind] = _gaps(result.metrics)
            tags = client.get_registered_model(own[city].model_name).tags
            scope = tags.get(SERVING_SCOPE_TAG, "")
            rows[city] = {
                "country": cc,
                "bookings_per_day": known.get(city).daily_bookings * SCALE,
                "offered": offered[city],
                "own": figures["city"],
                "pooled": figures["country"],
                "scope": scope,
                "serving_model": tags.get(SERVING_MODEL_TAG, ""),
                "reason": tags.get(SERVING_REASON_TAG, ""),
                "served": figures.get(scope, figures["city"]),
                "own_objective": own[city].objective,
            }
    step("diagnose", t)
    return {
        "rows": rows,
        "outcomes": [(o.city, o.status, o.version, o.detail) for o in outcomes],
        "pooled": {
            cc: (r.model_name, r.version, r.objective, r.metrics.get("valid_auc", float("nan")))
            for cc, r in pooled.items()
        },
        "timings": timings,
        "loads": loads,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _passes(figures: dict[str, float]) -> bool:
    return figures["auc_gap"] <= MAX_AUC_GAP and figures["acceptance_gap"] <= MAX_ACCEPTANCE_GAP


def _short(text: str, n: int = 160) -> str:
    text = text.replace("|", "/")
    return text if len(text) <= n else text[: n - 3] + "..."


def render(result: dict[str, Any], command: str) -> tuple[list[str], dict[str, bool]]:
    rows = result["rows"]
    small = {c: r for c, r in rows.items() if r["bookings_per_day"] < SMALL_BELOW}
    passing = {c: r for c, r in small.items() if _passes(r["served"])}
    checks = {
        f"served model within {MAX_AUC_GAP} AUC and {MAX_ACCEPTANCE_GAP * 100:.1f} pt of the "
        f"oracle on >= {MIN_SMALL_CITIES} small cities": len(passing) >= MIN_SMALL_CITIES,
        f"... of >= {MIN_COUNTRIES} countries": len({r["country"] for r in passing.values()})
        >= MIN_COUNTRIES,
        "every small city served by the better of its two models (AUC gap)": all(
            r["served"]["auc_gap"] <= min(r["own"]["auc_gap"], r["pooled"]["auc_gap"]) + 1e-9
            for r in small.values()
        ),
    }
    lines = [
        "# Pooled country models for small cities (issue 15)",
        "",
        f"Run {datetime.now().isoformat(timespec='minutes')} with `{command}`.",
        "",
        *machine_lines(("lightgbm", "numpy", "pandas", "mlflow")),
        f"- 1-minute load average: {result['loads']['start']:.1f} at the start, "
        f"{result['loads']['promote']:.1f} before promoting (other sessions share the cores)",
        "",
        f"World: demo scale ({SCALE} of the catalogue's volumes), seed {SEED}, {START} + 28 days "
        f"of history, {TRAIN_DAYS} days to train, {HOLDOUT_DAYS} to hold out. Cities: "
        + "; ".join(f"{cc}: {', '.join(m)}" for cc, m in COUNTRIES.items())
        + f". Small: under {SMALL_BELOW} bookings a day. Every model with the default "
        "`train.yaml`. Choice made by the platform on logged data: `promote --all-cities` with "
        "the packaged gate (its latency bound lifted: a shared, loaded machine; every other "
        "threshold as packaged; countries first), each move re-making the cities' serving choice "
        "(`serving.*` tags); the figures below are the simulator's diagnostics on the same "
        "holdouts (oracle = the true `p_accept`; acceptance = the dispatch replay).",
        "",
        "## Checks",
        "",
        *checks_table(checks),
        "## Per city: own model, country model, and the one that serves",
        "",
        "| city | country | bookings/day | offered rows train / holdout | own: AUC gap | own: "
        "acceptance gap (pt) | country: AUC gap | country: acceptance gap (pt) | serves | "
        "served: AUC gap | served: acceptance gap (pt) | target |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for city, r in rows.items():
        o, p, s = r["own"], r["pooled"], r["served"]
        target = ("pass" if _passes(s) else "FAIL") if city in small else "(not small)"
        lines.append(
            f"| {city} | {r['country']} | {r['bookings_per_day']:.0f} | "
            f"{r['offered'][0]:,} / {r['offered'][1]:,} | {o['auc_gap']:.4f} | "
            f"{o['acceptance_gap'] * 100:.2f} | {p['auc_gap']:.4f} | "
            f"{p['acceptance_gap'] * 100:.2f} | {r['scope'] or '-'} | {s['auc_gap']:.4f} | "
            f"{s['acceptance_gap'] * 100:.2f} | {target} |"
        )
    lines += [
        "",
        "AUC gap = oracle AUC - model AUC (logged labels of the holdout's offers); acceptance "
        "gap = oracle - model replay acceptance, in points. Absolute figures:",
        "",
        "| city | oracle AUC | own AUC | country AUC | oracle acceptance | own | country | "
        "nearest-ETA |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for city, r in rows.items():
        o, p = r["own"], r["pooled"]
        lines.append(
            f"| {city} | {o['oracle_auc']:.4f} | {o['auc']:.4f} | {p['auc']:.4f} | "
            f"{o['oracle_acceptance']:.4f} | {o['acceptance']:.4f} | {p['acceptance']:.4f} | "
            f"{o['nearest_eta_acceptance']:.4f} |"
        )
    lines += ["", "## The per-city choice, as recorded (`serving.reason`)", ""]
    lines += ["| city | serving.scope | serving.model | serving.reason |", "|---|---|---|---|"]
    for city, r in rows.items():
        reason = _short(r["reason"], 400)
        lines.append(f"| {city} | {r['scope'] or '-'} | {r['serving_model'] or '-'} | {reason} |")
    lines += ["", "## Gate outcomes (`promote --all-cities`)", ""]
    lines += ["| model | status | version | detail |", "|---|---|---|---|"]
    for target, status, version, detail in result["outcomes"]:
        lines.append(f"| {target} | {status} | {version or '-'} | {_short(detail, 300)} |")
    lines += ["", "## Country models", ""]
    for name, version, objective, valid_auc in result["pooled"].values():
        lines.append(f"- {name} v{version}: {objective}, validation AUC {valid_auc:.4f}")
    t = result["timings"]
    lines += [
        "",
        "Seconds: "
        + ", ".join(f"{k} {v:.0f}" for k, v in t.items())
        + f"; peak RSS {result['peak_rss_mb']:.0f} MB (one process).",
        "",
    ]
    return lines, checks


def main(report: Path = REPORT, root: Path | None = None) -> None:
    command = "python -m benchmarks.run --only pooled"
    if root is None:
        with tempfile.TemporaryDirectory(prefix="bench-pooled-") as tmp:
            result = run(Path(tmp))
    else:
        root.mkdir(parents=True, exist_ok=True)
        result = run(root)
        command = f"python -m benchmarks.pooled --root {root}"
    lines, checks = render(result, command)
    write_report(report, lines, logger)
    if not all(checks.values()):
        logger.warning("pooled: target not met: %s", [k for k, v in checks.items() if not v])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, help="keep (and reuse) the lake and store here")
    parser.add_argument("--report", type=Path, default=REPORT)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    main(args.report, args.root)
    sys.exit(0)
