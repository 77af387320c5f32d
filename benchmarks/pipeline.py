"""Benchmark: feature processing, training overhead of the platform, and the quality bar.

Three parts, measured in one run, each heavy step in its own subprocess so its peak RSS
(``ru_maxrss``) is its own:

a. ``build_dataset`` on a window of >= 1M candidate rows (with its 28 days of history), built
   from scratch, interleaved with the window-at-once processing it replaced (issue 14; kept
   as the test reference ``tests/support/window_reference.py``) on the same world.
b. A bare ``lgb.train`` (binary, same parameters and early stopping) against the platform's
   ``train`` (MLflow run, lineage, ``log_model``, registry, SQLite store) on the same matrix.
c. The quality bar of issue 3 for three cities at the demo scale: train, evaluate, check.

Run: ``.venv/bin/python -m benchmarks.run --only pipeline`` (writes
benchmarks/reports/pipeline.md).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.common import machine_lines

if TYPE_CHECKING:
    from matchmaking.lake.storage import LocationLike

REPORT = Path(__file__).parent / "reports" / "pipeline.md"
REPO = Path(__file__).resolve().parent.parent

# a + b: one city, 28 days of history before a 10-day window, 18k bookings a day.
LARGE_CITY = "jakarta"
LARGE_START = date(2026, 8, 1)
LARGE_HISTORY_DAYS = 28
LARGE_WINDOW_DAYS = 10
LARGE_BOOKINGS_PER_DAY = 18_000

# c: the issue-3 world: 28 days of history, 28 to train, 7 to hold out, demo scale.
QUALITY_CITIES = ("jakarta", "bangkok", "ho-chi-minh-city")
QUALITY_START = date(2026, 8, 1)
QUALITY_SCALE = 0.002
QUALITY_SEED = 42
EVAL_SEED = 7
TRAIN_DAYS = 28
HOLDOUT_DAYS = 7

# a and b: each processing path and training variant runs this many times, interleaved; the
# report gives the median run.
REPEATS = 3

# The bar (tests/model/test_quality_bar.py).
MAX_ACCEPTANCE_GAP_TO_ORACLE = 0.015
MIN_ACCEPTANCE_GAIN_OVER_NEAREST = 0.03
MAX_AUC_GAP_TO_ORACLE = 0.015

Result = dict[str, Any]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _settings(root: Path) -> Any:
    from matchmaking.config import Settings

    return Settings(data_dir=root, tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def _large_window() -> tuple[date, date]:
    start = LARGE_START + timedelta(days=LARGE_HISTORY_DAYS)
    return start, start + timedelta(days=LARGE_WINDOW_DAYS - 1)


# ---------------------------------------------------------------------------------------------
# Steps: each runs in a fresh interpreter (``--step NAME``) and prints one JSON line.
# ---------------------------------------------------------------------------------------------


def step_large_world(root: Path) -> Result:
    """Generate the world of parts a and b."""
    from matchmaking.world.generate import generate_world

    t0 = time.perf_counter()
    summary = generate_world(
        cities=[LARGE_CITY],
        start=LARGE_START,
        days=LARGE_HISTORY_DAYS + LARGE_WINDOW_DAYS,
        seed=QUALITY_SEED,
        out=_settings(root).lake_dir,
        scale=QUALITY_SCALE,
        bookings_per_day=LARGE_BOOKINGS_PER_DAY,
        progress=False,
    )
    stats = summary.cities[LARGE_CITY]
    return {
        "seconds": time.perf_counter() - t0,
        "bookings": stats.bookings,
        "candidates": stats.candidates,
        "peak_rss_mb": _peak_rss_mb(),
    }


def step_process(root: Path) -> Result:
    """Part a: ``build_dataset`` (validate, featurise, publish) on the 10-day window, from
    scratch (the features of an earlier run are removed first: nothing is reused)."""
    from matchmaking import lake
    from matchmaking.processing.step import build_dataset

    settings = _settings(root)
    shutil.rmtree(Path(settings.features_dir), ignore_errors=True)
    start, end = _large_window()
    t0, cpu0 = time.perf_counter(), time.process_time()
    result = build_dataset(settings, LARGE_CITY, start, end, max_bad_share=0.05)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    peak = _peak_rss_mb()
    raw = lake.read_partitions(
        settings.lake_dir, LARGE_CITY, "candidates", result.history_from, end, ["booking_id"]
    )
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "rows": result.rows,
        "offered_rows": result.offered_rows,
        "raw_candidates_read": raw.num_rows,
        "history_from": result.history_from.isoformat(),
        "dataset_dir": str(result.dataset_dir),
        "peak_rss_mb": peak,
    }


def step_window_at_once(root: Path) -> Result:
    """Part a's baseline: the same window processed at once, as before the per-day engine
    (every raw row of the window and its history read into pandas, validated together, the
    features built over the window) and its rows written as the old step wrote them (one
    zstd parquet file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.support.window_reference import reference_window

    settings = _settings(root)
    start, end = _large_window()
    out = root / "window-at-once.parquet"
    t0, cpu0 = time.perf_counter(), time.process_time()
    ref = reference_window(settings.lake_dir, LARGE_CITY, start, end, round_trip=False)
    pq.write_table(
        pa.Table.from_pandas(ref.rows, preserve_index=False),
        out,
        compression="zstd",
        write_statistics=True,
    )
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    rows = len(ref.rows)
    out.unlink()
    return {"seconds": seconds, "cpu_seconds": cpu, "rows": rows, "peak_rss_mb": _peak_rss_mb()}


def step_store(root: Path) -> Result:
    """Create the SQLite tracking store (schema migrations), so training times exclude it."""
    t0 = time.perf_counter()
    from mlflow.tracking import MlflowClient

    from matchmaking import tracking

    imported = time.perf_counter()
    tracking.configure(_settings(root))
    MlflowClient().search_experiments()
    return {
        "import_seconds": imported - t0,
        "seconds": time.perf_counter() - imported,
        "peak_rss_mb": _peak_rss_mb(),
    }


def step_bare(dataset: Path) -> Result:
    """Part b: what a bare script does: read, label, split by day, ``lgb.train`` (binary)."""
    t0 = time.perf_counter()
    import lightgbm as lgb
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from matchmaking.schema import FEATURE_NAMES, GROUP_COLUMN, LABEL_COLUMN
    from matchmaking.training.params import load_params

    imported, cpu0 = time.perf_counter(), time.process_time()
    params = load_params(overrides={"objectives": ["binary"]})
    from matchmaking.lake.datasets import read_dataset

    rows, _ = read_dataset(dataset)
    rows = rows.loc[rows["offered"]].sort_values(
        ["requested_at", GROUP_COLUMN, "eta_rank"], kind="stable"
    )
    days = np.sort(rows["day"].unique())
    cut = days[-params.valid_days]
    train, valid = rows.loc[rows["day"] < cut], rows.loc[rows["day"] >= cut]
    names = list(FEATURE_NAMES)
    y_train = train[LABEL_COLUMN].to_numpy(dtype=np.float64)
    y_valid = valid[LABEL_COLUMN].to_numpy(dtype=np.float64)
    x_valid = valid[names].to_numpy(dtype=np.float64)
    dtrain = lgb.Dataset(train[names].to_numpy(dtype=np.float64), y_train, feature_name=names)
    dvalid = lgb.Dataset(x_valid, y_valid, feature_name=names, reference=dtrain)
    fit_start = time.perf_counter()
    booster = lgb.train(
        params.lgb_params("binary"),
        dtrain,
        num_boost_round=params.num_boost_round,
        valid_sets=[dvalid],
        valid_names=["valid"],
        callbacks=[
            lgb.early_stopping(params.early_stopping_rounds, first_metric_only=True, verbose=False)
        ],
    )
    done, cpu = time.perf_counter(), time.process_time() - cpu0
    scores = booster.predict(x_valid, num_iteration=booster.best_iteration)
    return {
        "import_seconds": imported - t0,
        "seconds": done - imported,
        "fit_seconds": done - fit_start,
        "cpu_seconds": cpu,
        "train_rows": len(train),
        "valid_rows": len(valid),
        "best_iteration": int(booster.best_iteration),
        "valid_auc": float(roc_auc_score(y_valid, scores)),
        "peak_rss_mb": _peak_rss_mb(),
    }


def step_platform(root: Path, dataset: Path, objectives: str) -> Result:
    """Part b: the platform's ``train`` (``objectives``: ``binary`` or ``default``)."""
    t0 = time.perf_counter()
    from matchmaking.training.params import load_params
    from matchmaking.training.train import train

    imported, cpu0 = time.perf_counter(), time.process_time()
    overrides: dict[str, object] = {"objectives": ["binary"]} if objectives == "binary" else {}
    params = load_params(overrides=overrides)
    result = train(
        _settings(root), LARGE_CITY, dataset, params, process_run_id=None, reuse_existing=False
    )
    seconds, cpu = time.perf_counter() - imported, time.process_time() - cpu0
    fit_seconds = sum(v for k, v in result.metrics.items() if k.startswith("fit_seconds_"))
    return {
        "import_seconds": imported - t0,
        "seconds": seconds,
        "fit_seconds": fit_seconds,
        "cpu_seconds": cpu,
        "objective": result.objective,
        "version": result.version,
        "train_rows": int(result.metrics["train_rows"]),
        "valid_rows": int(result.metrics["valid_rows"]),
        "valid_auc": result.metrics["valid_auc"],
        "best_iteration": int(result.metrics[f"best_iteration_{result.objective}"]),
        "peak_rss_mb": _peak_rss_mb(),
    }


def _propensity_bound(settings: Any, city: str, holdout: LocationLike) -> tuple[float, float]:
    """AUC of the oracle's logit with the hidden driver propensity term removed, and the median
    28-day offer count behind the model's estimate of it (holdout offers).

    ``p_accept = sigmoid(z + propensity)`` (``world.truth``), so ``logit(p_accept) - propensity``
    is the oracle that knows everything except the driver's own habit.
    """
    import numpy as np

    from matchmaking import lake
    from matchmaking.evaluation.metrics import auc
    from matchmaking.evaluation.simulator import holdout_with_truth

    rows, _ = holdout_with_truth(settings, city, holdout)
    hidden = lake.read_driver_truth(settings.lake_dir, city).to_pandas()
    rows = rows.merge(hidden, on="driver_id", how="left", validate="many_to_one")
    offered = rows["offered"].to_numpy(dtype=bool)
    p = np.clip(rows["p_accept"].to_numpy(dtype=np.float64), 1e-12, 1 - 1e-12)
    z = np.log(p / (1 - p)) - rows["propensity"].to_numpy(dtype=np.float64)
    labels = rows.loc[offered, "accepted"].astype("float64").to_numpy()
    history = float(rows.loc[offered, "drv_offers_28d"].median())
    return auc(labels, z[offered]), history


def step_quality(root: Path, city: str) -> Result:
    """Part c for one city: generate, process both windows, train (defaults), evaluate."""
    from matchmaking.evaluation.evaluate import evaluate
    from matchmaking.features.history import HISTORY_DAYS
    from matchmaking.pipeline import windows
    from matchmaking.processing.step import build_dataset
    from matchmaking.training.params import load_params
    from matchmaking.training.train import train
    from matchmaking.world.generate import generate_world

    settings = _settings(root)
    days = HISTORY_DAYS + TRAIN_DAYS + HOLDOUT_DAYS
    timings: dict[str, float] = {}
    t = time.perf_counter()
    generate_world(
        cities=[city],
        start=QUALITY_START,
        days=days,
        seed=QUALITY_SEED,
        out=settings.lake_dir,
        scale=QUALITY_SCALE,
        bookings_per_day=None,
        progress=False,
    )
    timings["generate"] = time.perf_counter() - t
    w = windows(QUALITY_START + timedelta(days=days - 1), TRAIN_DAYS, HOLDOUT_DAYS)
    t = time.perf_counter()
    tr = build_dataset(settings, city, w.train_start, w.train_end, max_bad_share=0.05)
    ho = build_dataset(settings, city, w.holdout_start, w.holdout_end, max_bad_share=0.05)
    timings["process"] = time.perf_counter() - t
    t = time.perf_counter()
    trained = train(settings, city, tr.dataset_dir, load_params(), reuse_existing=False)
    timings["train"] = time.perf_counter() - t
    t = time.perf_counter()
    no_propensity, history = _propensity_bound(settings, city, ho.dataset_dir)
    result = evaluate(
        settings, city, trained.model_uri, ho.dataset_dir, seed=EVAL_SEED, log_run=False
    )
    timings["evaluate"] = time.perf_counter() - t
    # the replay (simulator) per policy; AUC on the logged labels (the oracle's needs the truth)
    table = {
        policy: {
            "acceptance": result.metric(f"sim.replay.{policy}.acceptance"),
            "auc": result.metric(
                f"sim.oracle.{policy}.auc" if policy == "oracle" else f"logged.{policy}.auc"
            ),
        }
        for policy in ("model", "oracle", "nearest_eta", "highest_rating")
    }
    return {
        "city": city,
        "train_rows": tr.rows,
        "train_offered_rows": tr.offered_rows,
        "holdout_offered_rows": ho.offered_rows,
        "objective": trained.objective,
        "valid_auc": trained.metrics.get("valid_auc"),
        "table": table,
        "oracle_auc_no_propensity": no_propensity,
        "median_offers_28d": history,
        "timings": timings,
        "peak_rss_mb": _peak_rss_mb(),
    }


# ---------------------------------------------------------------------------------------------
# Orchestration and report.
# ---------------------------------------------------------------------------------------------


class Loads:
    """The 1-minute load average, sampled before each step (other work shares the 2 cores)."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    def sample(self) -> None:
        self.samples.append(os.getloadavg()[0])


def _run_step(loads: Loads, *args: str) -> Result:
    """Run ``--step ...`` in a fresh interpreter; return the JSON it printed, with wall time."""
    loads.sample()
    load_before = loads.samples[-1]
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.pipeline", "--step", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"step {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    out = dict(json.loads(proc.stdout.strip().splitlines()[-1]))
    out["wall_seconds"] = time.perf_counter() - t0
    out["load_before"] = load_before
    return out


def _machine() -> list[str]:
    return machine_lines(("lightgbm", "numpy", "pandas", "mlflow"))


def _section_a(world: Result, runs: list[Result], baseline_runs: list[Result]) -> list[str]:
    start, end = _large_window()
    proc, base = _median(runs), _median(baseline_runs)
    run_peak = max(r["peak_rss_mb"] for r in runs)
    base_peak = max(r["peak_rss_mb"] for r in baseline_runs)
    if base["rows"] != proc["rows"]:
        raise RuntimeError(f"the baseline published {base['rows']} rows, not {proc['rows']}")
    return [
        "## a. Feature processing",
        "",
        f"{LARGE_CITY}, {LARGE_BOOKINGS_PER_DAY:,} bookings a day, {LARGE_HISTORY_DAYS} days of "
        f"history then the {LARGE_WINDOW_DAYS}-day window {start}..{end}. `build_dataset` reads "
        "the window and its history, validates, builds the point-in-time features and publishes "
        "the window's rows (zstd parquet, atomic rename), a day at a time, from scratch "
        "(nothing reused). No MLflow.",
        "",
        f"Generation ran once (1-minute load average before: {world['load_before']:.2f}). "
        f"`build_dataset` ran {REPEATS} times interleaved with the window-at-once baseline "
        "(the processing before the per-day engine of issue 14, kept as the test reference "
        "`tests/support/window_reference.py`: the window and its history read into pandas at "
        "once, validated together, the features built over the window, written as one zstd "
        "parquet file), each in a fresh interpreter, on the same world; the table gives the "
        "median run of each.",
        "",
        "| path | wall s, each run | CPU s (median run) | peak RSS (MB) |",
        "|---|---:|---:|---:|",
        f"| `build_dataset`, a day at a time | {_each(runs, 'seconds')} "
        f"| {proc['cpu_seconds']:.1f} | {run_peak:,.0f} |",
        f"| window at once (baseline) | {_each(baseline_runs, 'seconds')} "
        f"| {base['cpu_seconds']:.1f} | {base_peak:,.0f} |",
        "",
        f"- Wall time, day at a time / window at once: "
        f"**{proc['seconds'] / base['seconds']:.2f}x** on the medians "
        f"({proc['seconds']:.1f} s vs {base['seconds']:.1f} s); CPU "
        f"{proc['cpu_seconds'] / base['cpu_seconds']:.2f}x; "
        f"peak memory {run_peak / base_peak:.2f}x.",
        "",
        "| step | rows | seconds | rows/s | peak RSS (MB) |",
        "|---|---:|---:|---:|---:|",
        f"| generate the world ({world['bookings']:,} bookings) | {world['candidates']:,} "
        f"candidates | {world['seconds']:.1f} | {world['candidates'] / world['seconds']:,.0f} "
        f"| {world['peak_rss_mb']:,.0f} |",
        f"| `build_dataset`: raw candidate rows read (history {proc['history_from']}..{end}) "
        f"| {proc['raw_candidates_read']:,} | {proc['seconds']:.1f} "
        f"| {proc['raw_candidates_read'] / proc['seconds']:,.0f} | {proc['peak_rss_mb']:,.0f} |",
        f"| `build_dataset`: candidate rows published (window) | {proc['rows']:,} "
        f"| {proc['seconds']:.1f} | **{proc['rows'] / proc['seconds']:,.0f}** "
        f"| {proc['peak_rss_mb']:,.0f} |",
        f"| window at once (baseline): candidate rows published | {base['rows']:,} "
        f"| {base['seconds']:.1f} | {base['rows'] / base['seconds']:,.0f} "
        f"| {base['peak_rss_mb']:,.0f} |",
        "",
        f"Of the window's rows, {proc['offered_rows']:,} were offered (labelled).",
        "",
    ]


def _median(runs: list[Result]) -> Result:
    """The run with the median wall time (its other figures stay consistent with it)."""
    return sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]


def _fastest(runs: list[Result]) -> Result:
    return min(runs, key=lambda r: r["seconds"])


def _each(runs: list[Result], key: str) -> str:
    return ", ".join(f"{r[key]:.1f}" for r in runs)


def _outside_fit(runs: list[Result]) -> float:
    """Median seconds spent outside ``lgb.train`` (the part the platform adds to)."""
    values = sorted(r["seconds"] - r["fit_seconds"] for r in runs)
    return values[len(values) // 2]


def _section_b(
    store: Result, bare_runs: list[Result], binary_runs: list[Result], default_runs: list[Result]
) -> list[str]:
    bare, binary, default = _median(bare_runs), _median(binary_runs), _median(default_runs)
    same = (bare["train_rows"], bare["valid_rows"]) == (binary["train_rows"], binary["valid_rows"])
    variants = (
        ("bare `lgb.train`, binary", bare_runs),
        ("platform `train`, `objectives=[binary]`", binary_runs),
        (
            f"platform `train`, default (binary + lambdarank; kept {default['objective']})",
            default_runs,
        ),
    )
    lines = [
        "## b. Training: bare LightGBM vs the platform",
        "",
        f"The window of part a, offered rows only: {bare['train_rows']:,} training and "
        f"{bare['valid_rows']:,} validation rows (the last 5 days)"
        + ("" if same else " (**the platform's matrix differed**)")
        + ". Same parameters (`config/train.yaml`): `num_boost_round` 800, early stopping "
        "after 40 rounds without a better validation AUC, 2 threads. "
        "Bare: read the parquet, select, split, build the `lgb.Dataset`s, `lgb.train`. "
        "Platform: `train(...)`: the same plus the MLflow run, tags and params, two "
        "`log_input` datasets, feature importance, `log_model` (signature, input example, the "
        "driver table), a new registered version and its wait for READY, on a SQLite store. "
        f"Each variant ran {REPEATS} times, interleaved, each in a fresh interpreter "
        "(import time not included). `fit` is the `lgb.train` call(s) alone; CPU is the "
        "process's CPU time over the same span.",
        "",
        "| run | wall s, each run | fit s, each run | outside fit s (median) | CPU s (median run) "
        "| load before (median run) | best iteration | valid AUC | peak RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, runs in variants:
        r = _median(runs)
        lines.append(
            f"| {name} | {_each(runs, 'seconds')} | {_each(runs, 'fit_seconds')} "
            f"| {_outside_fit(runs):.1f} "
            f"| {r['cpu_seconds']:.1f} | {r['load_before']:.2f} | {r['best_iteration']} "
            f"| {r['valid_auc']:.4f} | {max(x['peak_rss_mb'] for x in runs):,.0f} |"
        )
    fast_bare, fast_binary = _fastest(bare_runs), _fastest(binary_runs)
    added = _outside_fit(binary_runs) - _outside_fit(bare_runs)
    fast_ratio = fast_binary["seconds"] / fast_bare["seconds"]
    fits = [r["fit_seconds"] for r in bare_runs + binary_runs]
    lines += [
        "",
        f"- Overhead ratio, platform binary / bare: **{fast_ratio:.2f}x** "
        f"on the fastest runs ({fast_binary['seconds']:.1f} s vs {fast_bare['seconds']:.1f} s), "
        f"{binary['seconds'] / bare['seconds']:.2f}x on the medians "
        f"({binary['seconds']:.1f} s vs {bare['seconds']:.1f} s).",
        f"- The binary fit itself took {min(fits):.1f}..{max(fits):.1f} s over these "
        f"{len(fits)} identical runs (same trees, same AUC), swinging with the outside load, "
        f"so the robust figure is the time outside the fit: the "
        f"platform adds **{added:.1f} s** per `train` call (MLflow run, lineage, `log_model`, "
        f"registry) over the bare script's {_outside_fit(bare_runs):.1f} s of preparation.",
        f"- The default two-objective `train`: {default['seconds']:.1f} s median "
        f"({_fastest(default_runs)['seconds']:.1f} s fastest); lambdarank is fitted too and "
        f"{default['objective']} is kept.",
        f"- One-off, not in the figures above: creating the SQLite store (schema migrations) "
        f"took {store['seconds']:.1f} s; importing mlflow + the platform "
        f"{binary['import_seconds']:.1f} s vs {bare['import_seconds']:.1f} s for lightgbm alone.",
        "",
    ]
    return lines


def _mark(ok: bool) -> str:
    return "pass" if ok else "**fail**"


def _recovered(r: Result) -> float:
    """Share of the AUC the propensity is worth to the oracle that the model recovers."""
    t, floor = r["table"], r["oracle_auc_no_propensity"]
    return float((t["model"]["auc"] - floor) / (t["oracle"]["auc"] - floor))


def _section_c(results: list[Result]) -> list[str]:
    lines = [
        "## c. Quality bar (issue 3)",
        "",
        f"Each city alone, demo scale ({QUALITY_SCALE}, seed {QUALITY_SEED}): 28 days of "
        f"history, a {TRAIN_DAYS}-day training window, a {HOLDOUT_DAYS}-day holdout; "
        f"`train` with the default params, `evaluate` (replay seed {EVAL_SEED}). Acceptance "
        "is the dispatch replay's acceptance over the holdout's bookings.",
        "",
        "| city | train rows (offered) | model | acceptance: model | oracle | nearest-ETA "
        "| AUC: model | oracle | oracle without propensity | propensity gain recovered |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        t = r["table"]
        lines.append(
            f"| {r['city']} | {r['train_rows']:,} ({r['train_offered_rows']:,}) | {r['objective']} "
            f"| {t['model']['acceptance']:.4f} | {t['oracle']['acceptance']:.4f} "
            f"| {t['nearest_eta']['acceptance']:.4f} | {t['model']['auc']:.4f} "
            f"| {t['oracle']['auc']:.4f} | {r['oracle_auc_no_propensity']:.4f} "
            f"| {_recovered(r):.0%} |"
        )
    lines += [
        "",
        "| city | oracle - model acceptance (<= 1.5 pt) | model - nearest-ETA (>= 3 pt) "
        "| oracle - model AUC (<= 0.015) | bar |",
        "|---|---:|---:|---:|---|",
    ]
    misses: list[str] = []
    for r in results:
        t = r["table"]
        gap_acc = t["oracle"]["acceptance"] - t["model"]["acceptance"]
        gain = t["model"]["acceptance"] - t["nearest_eta"]["acceptance"]
        gap_auc = t["oracle"]["auc"] - t["model"]["auc"]
        checks = (
            gap_acc <= MAX_ACCEPTANCE_GAP_TO_ORACLE,
            gain >= MIN_ACCEPTANCE_GAIN_OVER_NEAREST,
            gap_auc <= MAX_AUC_GAP_TO_ORACLE,
        )
        lines.append(
            f"| {r['city']} | {100 * gap_acc:.2f} pt {_mark(checks[0])} "
            f"| {100 * gain:.2f} pt {_mark(checks[1])} | {gap_auc:.4f} {_mark(checks[2])} "
            f"| {_mark(all(checks))} |"
        )
        if not checks[2]:
            misses.append(
                f"{r['city']} misses the AUC bar by {gap_auc - MAX_AUC_GAP_TO_ORACLE:.4f} "
                f"(gap {gap_auc:.4f})"
            )
    lines += [""]
    if misses:
        lines += ["AUC misses: " + "; ".join(misses) + ".", ""]
    lines += [
        "On the bound: the oracle scores with the true `p_accept`, whose logit includes each "
        "driver's hidden propensity (normal, sd 0.7, `world/population.py`). The model can only "
        "estimate it from the driver's point-in-time offer history (28 days; median offers "
        "behind a holdout offer: "
        + ", ".join(f"{r['city']} {r['median_offers_28d']:.0f}" for r in results)
        + '). "Oracle without propensity" is the oracle\'s logit with '
        "that term subtracted (`logit(p_accept) - propensity`, from `truth/` and the hidden "
        "driver table): the AUC of a scorer that knows everything but the driver's habit. "
        "A model between it and the oracle is recovering part of the propensity from history; "
        '"propensity gain recovered" is (model - without) / (oracle - without). Where the '
        "propensity is worth more AUC to the oracle, the same recovered share leaves a wider "
        "gap, so the 0.015 AUC bar is tightest there. With hundreds of offers per driver the "
        "sampling noise of a 28-day acceptance rate is small (sd about 0.025 at n = 280, "
        "p = 0.8); the likelier limit is that the rate mixes the driver's habit with the "
        "conditions of their past offers (ETA, fare, shift end), a confounded estimate of the "
        "propensity rather than a noisy one (not measured here).",
        "",
        "| city | generate (s) | process both windows (s) | train (s) | evaluate (s) "
        "| peak RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        tm = r["timings"]
        lines.append(
            f"| {r['city']} | {tm['generate']:.1f} | {tm['process']:.1f} | {tm['train']:.1f} "
            f"| {tm['evaluate']:.1f} | {r['peak_rss_mb']:,.0f} |"
        )
    lines.append("")
    return lines


def main(report: Path = REPORT) -> None:
    """Run every part, each heavy step in its own subprocess, and write the markdown report."""
    loads = Loads()
    started = time.perf_counter()
    when = datetime.now().astimezone()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        large, quality = Path(tmp) / "large", Path(tmp) / "quality"
        world = _run_step(loads, "large-world", "--root", str(large))
        process_runs: list[Result] = []
        baseline_runs: list[Result] = []
        for _ in range(REPEATS):  # interleaved: a burst of outside load hits both paths
            process_runs.append(_run_step(loads, "process", "--root", str(large)))
            baseline_runs.append(_run_step(loads, "window-at-once", "--root", str(large)))
        dataset = process_runs[-1]["dataset_dir"]  # each run rebuilt it; the last one is kept
        store = _run_step(loads, "store", "--root", str(large))
        bare: list[Result] = []
        binary: list[Result] = []
        default: list[Result] = []
        for _ in range(REPEATS):  # interleaved, so a burst of outside load hits all three
            bare.append(_run_step(loads, "bare", "--dataset", dataset))
            for objectives, runs in (("binary", binary), ("default", default)):
                runs.append(
                    _run_step(
                        loads,
                        "platform",
                        "--root",
                        str(large),
                        "--dataset",
                        dataset,
                        "--objectives",
                        objectives,
                    )
                )
        results = [
            _run_step(loads, "quality", "--root", str(quality), "--city", city)
            for city in QUALITY_CITIES
        ]
    loads.sample()
    total = time.perf_counter() - started
    lines = [
        "# Pipeline benchmark",
        "",
        "Feature processing throughput, the platform's training overhead over bare LightGBM, "
        "and the issue-3 quality bar for three cities, measured in one run. Every heavy step "
        "runs in a fresh interpreter, so each peak RSS (`ru_maxrss`) is that step's own.",
        "",
        "Command: `.venv/bin/python -m benchmarks.run --only pipeline`",
        "",
        f"Date: {when:%Y-%m-%d %H:%M %Z}; whole run {total / 60:.1f} min.",
        "",
        "## Machine",
        "",
        *_machine(),
        f"- Load: 1-minute load average {min(loads.samples):.2f}..{max(loads.samples):.2f} "
        f"over the run (sampled before each step; {os.cpu_count()} cores, so above "
        f"{os.cpu_count()} other work was competing; the average lags, so the steps' own "
        "threads count too).",
        "",
        *_section_a(world, process_runs, baseline_runs),
        *_section_b(store, bare, binary, default),
        *_section_c(results),
    ]
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines))


STEPS: dict[str, Callable[[argparse.Namespace], Result]] = {
    "large-world": lambda a: step_large_world(a.root),
    "process": lambda a: step_process(a.root),
    "window-at-once": lambda a: step_window_at_once(a.root),
    "store": lambda a: step_store(a.root),
    "bare": lambda a: step_bare(a.dataset),
    "platform": lambda a: step_platform(a.root, a.dataset, a.objectives),
    "quality": lambda a: step_quality(a.root, a.city),
}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--step", choices=sorted(STEPS), help="internal: run one step, print JSON")
    parser.add_argument("--root", type=Path, help="internal: data directory of the step")
    parser.add_argument("--dataset", type=Path, help="internal: published feature dataset")
    parser.add_argument("--objectives", choices=["binary", "default"], default="default")
    parser.add_argument("--city", choices=QUALITY_CITIES)
    parser.add_argument("--report", type=Path, default=REPORT)
    args = parser.parse_args()
    if args.step:
        print(json.dumps(STEPS[args.step](args)))
    else:
        main(args.report)
