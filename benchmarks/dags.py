"""Benchmark: DagBag parse time of ``dags/`` at 70 and 1000 configured cities.

Each size runs in a fresh subprocess (its own ``AIRFLOW_HOME`` and pipeline config listing N
cities): one cold parse (first import of the orchestration config in that process), then
warm parses as the DAG processor repeats them, and the size of the serialized DAGs (what the
DAG processor writes to the metadata database). Run: ``.venv/bin/python -m benchmarks.dags``
(writes benchmarks/reports/dags.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine_lines

SIZES = (70, 1000)
WARM_PARSES = 5
COLD_REPEATS = 5  # fresh subprocesses per size: the cold figure is their median
DAGS_DIR = Path(__file__).resolve().parent.parent / "dags"
REPORT = Path(__file__).parent / "reports" / "dags.md"


def run_one(cities: int) -> dict[str, float]:
    """Parse ``dags/`` in this process (Airflow configured by the caller's environment)."""
    t0 = time.perf_counter()
    import airflow.sdk  # noqa: F401  (the baseline every DAG file pays)

    import_s = time.perf_counter() - t0
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.definitions.taskgroup import MappedTaskGroup
    from airflow.serialization.serialized_objects import DagSerialization

    def parse() -> tuple[float, DagBag]:
        start = time.perf_counter()
        bag = DagBag(dag_folder=str(DAGS_DIR))
        return time.perf_counter() - start, bag

    cold, bag = parse()
    if bag.import_errors:
        raise RuntimeError(f"import errors: {bag.import_errors}")
    warm = [parse()[0] for _ in range(WARM_PARSES)]
    serialized = {d: len(json.dumps(DagSerialization.to_dict(bag.dags[d]))) for d in bag.dag_ids}
    process = bag.dags["matchmaking_data"].get_task("process")
    group = process.task_group
    mapped = group._expand_input.value if isinstance(group, MappedTaskGroup) else None
    over = mapped.get("city") if isinstance(mapped, dict) else None
    if not isinstance(over, list | tuple):
        raise RuntimeError(f"process is not in a task group mapped over a city list: {group!r}")
    return {
        "cities": cities,
        "mapped_over": len(over),
        "airflow_import_s": import_s,
        "cold_s": cold,
        "warm_median_s": statistics.median(warm),
        "warm_max_s": max(warm),
        "serialized_data_kb": serialized["matchmaking_data"] / 1024,
        "serialized_train_kb": serialized["matchmaking_train"] / 1024,
    }


def check_one(how: str) -> float:
    """Cold cost of the city check's catalogue lookup in this process, after what every parse
    imports anyway (the orchestration config): ``ids`` is what the DAG parse does, ``full``
    what it did before (importing the market models and loading the whole catalogue)."""
    from matchmaking.orchestration.config import _catalogue_ids

    start = time.perf_counter()
    if how == "ids":
        _catalogue_ids(os.environ.get("MATCHMAKING_MARKETS", ""))
    else:
        from matchmaking.markets import catalogue

        catalogue()
    return time.perf_counter() - start


def _measure(cities: int, check: str | None = None) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "pipeline.yaml"
        names = "\n".join(f"  - city-{i:04d}" for i in range(cities))
        config.write_text(f"cities:\n{names}\nlake_uri: {Path(tmp) / 'lake'}\n")
        markets = Path(tmp) / "markets.yaml"  # the synthetic ids are markets of their own
        rows = "\n".join(
            f"  - {{id: city-{i:04d}, name: City {i}, country: ID, centre: {{lat: -6.2, "
            "lng: 106.8}, radius_km: 10, daily_bookings: 1000, tariff: {base: 1, per_km: 1, "
            "per_min: 1}, speed_kmh: {peak: 20, offpeak: 30, night: 40}}"
            for i in range(cities)
        )
        markets.write_text(f"markets:\n{rows}\n")
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
            "AIRFLOW_HOME": str(Path(tmp) / "airflow"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_DIR),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            "MATCHMAKING_PIPELINE_CONFIG": str(config),
            "MATCHMAKING_MARKETS": str(markets),
        }
        args = ["--check", check] if check else ["--one", str(cities)]
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.dags", *args],
            capture_output=True,
            text=True,
            check=True,
            env=env,
            cwd=Path(__file__).resolve().parent.parent,
        )
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main(report: Path = REPORT) -> None:
    """Measure every size in fresh subprocesses and write the markdown report."""
    load_before = os.getloadavg()[0]
    rows = []
    for n in SIZES:
        runs = [_measure(n) for _ in range(COLD_REPEATS)]
        row = dict(runs[0])
        row["cold_s"] = statistics.median(r["cold_s"] for r in runs)
        row["cold_min_s"] = min(r["cold_s"] for r in runs)
        row["catalogue_ids_s"] = statistics.median(
            _measure(n, "ids")["s"] for _ in range(COLD_REPEATS)
        )
        row["catalogue_full_s"] = statistics.median(
            _measure(n, "full")["s"] for _ in range(COLD_REPEATS)
        )
        rows.append(row)
    lines = [
        "# DAG parse-time benchmark",
        "",
        "`DagBag(dag_folder='dags/')` (both DAG files: `matchmaking_data`, `matchmaking_train`) "
        "with a pipeline config listing N cities (and a markets file declaring them); each "
        f"size in {COLD_REPEATS} fresh subprocesses. *cold* is the first parse in the process "
        "(after `import airflow.sdk`, timed separately; median and min of the subprocesses), "
        f"*warm* the median and max of {WARM_PARSES} more parses (the DAG processor re-parses "
        "files in a warm process). Serialized size: `DagSerialization.to_dict`, JSON. The "
        "city check's catalogue lookup, cold in a fresh process after the orchestration "
        "config is imported (median of "
        f"{COLD_REPEATS}), in the same run: *ids* is what the parse does now (the ids the "
        "catalogue files declare, read with YAML's C event parser), *full catalogue* what it "
        "did before (`matchmaking.markets.catalogue()`: the pydantic models and every file).",
        "",
        "Command: `.venv/bin/python -m benchmarks.dags`",
        "",
        "## Machine",
        "",
        *machine_lines(("apache-airflow", "pydantic", "pyyaml")),
        f"- Load average (1 min) at the start and end of the run: {load_before:.1f}, "
        f"{os.getloadavg()[0]:.1f} on 2 cores (other jobs share the machine: compare figures "
        "of one run, or of runs at a like load)",
        "",
        "## Figures",
        "",
        "| cities | mapped over | import airflow.sdk (s) | cold parse median (s) | cold min (s) "
        "| warm parse median (s) | warm max (s) | serialized data DAG (KB) "
        "| serialized train DAG (KB) | city check: ids (ms) | city check: full catalogue (ms) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['cities']:,.0f} | {r['mapped_over']:,.0f} | {r['airflow_import_s']:.2f} "
            f"| {r['cold_s']:.3f} | {r['cold_min_s']:.3f} | {r['warm_median_s']:.3f} "
            f"| {r['warm_max_s']:.3f} | {r['serialized_data_kb']:.1f} "
            f"| {r['serialized_train_kb']:.1f} | {1000 * r['catalogue_ids_s']:.1f} "
            f"| {1000 * r['catalogue_full_s']:.1f} |"
        )
    lines += [
        "",
        "The DAG files read only the YAML config at parse time (no MLflow, pandas or lake "
        "access; task bodies import them when they run), and fan out with one mapped task "
        "group per step (`.expand(city=...)`, one group per executor queue), so the DAG has the "
        "same tasks at any number of cities: parse time grows only with reading and "
        "validating the city list. Airflow's default `dagbag_import_timeout` is 30 s.",
        "",
    ]
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--one", type=int, help="internal: measure one size and print JSON")
    parser.add_argument("--check", choices=("ids", "full"), help="internal: time the city check")
    parser.add_argument("--report", type=Path, default=REPORT)
    args = parser.parse_args()
    if args.check:
        print(json.dumps({"s": check_one(args.check)}))
    elif args.one:
        print(json.dumps(run_one(args.one)))
    else:
        main(args.report)
