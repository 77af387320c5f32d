"""Benchmark: the local lake's hot paths with ``Location`` against the code before it.

Issue 10 asks for one location type backed by fsspec "where that costs nothing measurable".
This measures what a local lake does most, with this tree's code and with a baseline source
tree (the commit before ``Location``, checked out elsewhere), alternated in fresh interpreters
on the same generated lake, in one run:

- ``read``: ``lake.read_partitions`` of one city-day, bookings and candidates (best of 5);
- ``list``: ``lake.list_dates`` of the city (29 partitions, each checked for ``_SUCCESS``);
- ``day``: ``DayProcessor.ensure_day(force=True)``: a day's processing (validate, features,
  publish), its 28 history summaries published beforehand.

Run: ``python -m benchmarks.location --baseline /path/to/old/checkout/src`` (writes
benchmarks/reports/location.md). Without ``--baseline`` only this tree is measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from benchmarks.common import machine_lines, write_report

logger = logging.getLogger("benchmarks.location")

REPORT = Path(__file__).parent / "reports" / "location.md"
REPO = Path(__file__).resolve().parents[1]
CITY = "jakarta"
START = date(2026, 8, 1)
HISTORY = 28
BOOKINGS_PER_DAY = 8_000
ROUNDS = 3
READS = 5
DAY = START + timedelta(days=HISTORY)


def child(data: str) -> dict[str, Any]:
    """Time the hot paths with whatever ``matchmaking`` this interpreter imports."""
    from matchmaking import lake
    from matchmaking.config import Settings
    from matchmaking.processing.day import DayProcessor

    settings = Settings(data_dir=Path(data), tracking_uri=f"sqlite:///{Path(data) / 'mlflow.db'}")
    root = Path(data) / "lake"
    reads, lists = [], []
    rows = 0
    for _ in range(READS):
        t = time.perf_counter()
        rows = sum(
            lake.read_partitions(root, CITY, table, DAY, DAY).num_rows
            for table in ("bookings", "candidates")
        )
        reads.append(time.perf_counter() - t)
        t = time.perf_counter()
        days = lake.list_dates(root, CITY)
        lists.append(time.perf_counter() - t)
    proc = DayProcessor(settings, CITY, 0.05)
    for h in proc.history_days(DAY):
        proc.ensure_summary(h)
    t, cpu = time.perf_counter(), time.process_time()
    result = proc.ensure_day(DAY, force=True)
    return {
        "read_s": min(reads),
        "list_s": min(lists),
        "day_s": time.perf_counter() - t,
        "day_cpu_s": time.process_time() - cpu,
        "raw_rows": rows,
        "partitions": len(days),
        "feature_rows": result.manifest["rows"],
        "module": lake.__file__,
    }


def measure(src: Path, data: Path) -> dict[str, Any]:
    """``child`` in a fresh interpreter importing ``matchmaking`` from ``src``; peak RSS too."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(REPO)])}
    env.setdefault("MATCHMAKING_LOG_LEVEL", "WARNING")
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.location", "--child", str(data)],
        stdout=subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise RuntimeError(f"child on {src} failed with status {status}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    return result


def generate(data: Path) -> None:
    from matchmaking.world.generate import generate_world

    generate_world(
        [CITY], START, HISTORY + 1, 7, data / "lake", 0.002, BOOKINGS_PER_DAY, progress=False
    )


def main(report: Path = REPORT, baseline: Path | None = None, this: Path | None = None) -> None:
    """Generate the lake once, then alternate baseline and this tree for ``ROUNDS`` rounds."""
    load_before = os.getloadavg()[0]
    trees = {"Location (this tree)": this or REPO / "src"}
    if baseline is not None:
        trees = {"`str` or `Path` (baseline)": baseline, **trees}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(prefix="bench-location-") as tmp:
        data = Path(tmp)
        t = time.perf_counter()
        generate(data)
        generate_s = time.perf_counter() - t
        for src in trees.values():  # warm-up: history summaries of each code version
            measure(src, data)
        for _ in range(ROUNDS):
            for name, src in trees.items():
                runs[name].append(measure(src, data))
    load_after = os.getloadavg()[0]
    names = list(trees)

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    lines = [
        "# Location benchmark: the local lake's hot paths",
        "",
        "Command: `python -m benchmarks.location"
        + (" --baseline <checkout of the commit before Location>/src`" if baseline else "`"),
        "",
        *machine_lines(("pyarrow", "duckdb", "fsspec")),
        f"- load average (1 min): {load_before:.1f} before, {load_after:.1f} after "
        "(other sessions share the machine: compare the ratios, measured in one run)",
        "",
        f"One city ({CITY}), {HISTORY + 1} days at {BOOKINGS_PER_DAY:,} bookings a day "
        f"(generated in {generate_s:.0f} s); each figure is the median of {ROUNDS} fresh "
        "interpreters, the code versions alternated on the same lake; `read` and `list` are "
        f"the best of {READS} calls within an interpreter.",
        "",
        "| code | read a city-day (s) | list 29 partitions (s) | process a day (s) | "
        "day CPU (s) | peak RSS (MB) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in names:
        lines.append(
            f"| {name} | {med(name, 'read_s'):.4f} | {med(name, 'list_s'):.4f} | "
            f"{med(name, 'day_s'):.2f} | {med(name, 'day_cpu_s'):.2f} | "
            f"{med(name, 'peak_rss_mb'):.0f} |"
        )
    if baseline is not None:
        old, new = names
        lines.append(
            "| ratio (this tree / baseline) | "
            + " | ".join(
                f"{med(new, k) / med(old, k):.2f}"
                for k in ("read_s", "list_s", "day_s", "day_cpu_s", "peak_rss_mb")
            )
            + " |"
        )
    first = runs[names[-1]][0]
    lines += [
        "",
        f"Rows: {first['raw_rows']:,} raw rows read per city-day, {first['feature_rows']:,} "
        f"feature rows per processed day, {first['partitions']} partitions listed.",
        "",
    ]
    write_report(report, lines, logger)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", metavar="DATA", help=argparse.SUPPRESS)
    parser.add_argument("--baseline", type=Path, help="src/ of the code to compare against")
    parser.add_argument("--this", type=Path, help="src/ of this code (default: this tree's)")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child), default=str))
    else:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        main(baseline=args.baseline, this=args.this)
