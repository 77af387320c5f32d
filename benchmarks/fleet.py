"""Benchmark: one scoring process serving a fleet of registered models (79, then 1,000).

One run, one machine, loopback only:

1. A real ``mlflow server`` (SQLite backend, proxied artifacts) gets one LightGBM model the
   size of a trained city model (``benchmarks.serving.train_model``) logged once, then
   registered under 79 names (prefix ``m79``) and under 1,000 names (prefix ``m1000``), each
   version at alias ``production`` (copies of one model, as issue 15 measured).
2. A markets file adds 1,000 markets (copies of Jakarta's geography, ``fleet-0000`` ...): a new
   market is configuration, so a fleet of 1,000 city models needs no code.
3. For each fleet size N, a fresh service process (``python -m serving.main``, one worker,
   ``MAX_MODELS`` = N, no hot cities, compilation on, poll every ``POLL_S``):
   - cold first request of every model in turn (client-side latency, p50/p99): the booster
     answers, the compiled forest is built by the background worker meanwhile;
   - memory: the process's RSS before and after loading the N models, per model;
   - warm: closed loop at concurrency 8 over 50-candidate requests spread over all N models
     (peak), then an open loop at half that peak (p99 from the scheduled send time);
   - registry: the service's own counters over ``IDLE_S`` seconds of polling (calls per poll,
     seconds per poll, the poller thread's CPU per poll), next to what the previous poller did
     in the same run (one ``get_model_version_by_alias`` per loaded model, timed here against
     the same server);
   - at N=79 only: the time until every compiled forest is swapped in, the RSS then, and the
     open loop at half peak again (steady state: no swap left to happen).

Run: ``python -m benchmarks.run --only fleet`` (report ``benchmarks/reports/fleet.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks.common import checks_table, write_report
from benchmarks.serving import (
    LoadResult,
    WrkResult,
    free_port,
    http_request,
    machine,
    make_requests,
    run_load,
    run_wrk,
    train_model,
    wait_http,
)

logger = logging.getLogger("benchmarks.fleet")

SIZES = (79, 1000)
POLL_S = 2.0
IDLE_S = 20.0
COLD_P99_GOAL_S = 1.0
WARM_P99_GOAL_MS = 5.0
COMPILE_WAIT_S = 1200.0


# -- fixtures: a tracking server, markets, registered copies -----------------------------------


@contextlib.contextmanager
def process(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def markets_file(path: Path, n: int) -> list[str]:
    """``n`` markets with Jakarta's geography and tariff, ids ``fleet-0000``...; their ids."""
    from matchmaking.markets import get_market

    jakarta = get_market("jakarta")
    ids = [f"fleet-{i:04d}" for i in range(n)]
    rows = [
        {
            "id": city,
            "name": f"Fleet {i}",
            "country": jakarta.country,
            "centre": {"lat": jakarta.lat, "lng": jakarta.lng},
            "radius_km": jakarta.radius_km,
            "daily_bookings": 1000,
            "tariff": {
                "base": jakarta.fare_base,
                "per_km": jakarta.fare_per_km,
                "per_min": jakarta.fare_per_min,
            },
            "speed_kmh": {"peak": 20.0, "offpeak": 30.0, "night": 40.0},
        }
        for i, city in enumerate(ids)
    ]
    path.write_text(yaml.safe_dump({"markets": rows}, sort_keys=False))
    return ids


def register_fleet(uri: str, booster: Any, table: Path, prefixes: dict[str, list[str]]) -> None:
    """Log ``booster`` once, then register it under ``<prefix>-<city>`` for every city."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    from matchmaking.schema import FEATURE_NAMES

    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri, uri)
    exp = client.create_experiment("fleet-bench")
    example = pd.DataFrame(np.zeros((3, len(FEATURE_NAMES))), columns=list(FEATURE_NAMES))
    with mlflow.start_run(experiment_id=exp) as run:
        info = mlflow.lightgbm.log_model(
            booster,
            name="model",
            signature=infer_signature(example, booster.predict(example.to_numpy())),
            input_example=example,
            extra_files=[str(table)],
        )
    mlflow.set_tracking_uri(previous_uri)  # as the caller had it
    tags = {"score_kind": "probability", "objective": "binary"}

    def one(name: str) -> None:
        client.create_registered_model(name)
        mv = client.create_model_version(
            name, info.model_uri, run_id=run.info.run_id, model_id=info.model_id, tags=tags
        )
        client.set_registered_model_alias(name, "production", str(mv.version))

    names = [f"{p}-{c}" for p, cities in prefixes.items() for c in cities]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, names))


# -- measuring the service ---------------------------------------------------------------------


def scrape(port: int) -> dict[str, float]:
    """``/metrics`` as {sample with labels: value}."""
    import httpx

    out = {}
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def models_state(port: int) -> dict[str, Any]:
    import httpx

    body: dict[str, Any] = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=30).json()
    return body


def old_poll(uri: str, names: list[str]) -> tuple[int, float]:
    """What the previous poller did per interval: one alias lookup per loaded model, in turn."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri, uri)
    started = time.perf_counter()
    for name in names:
        client.get_model_version_by_alias(name, "production")
    return len(names), time.perf_counter() - started


def fleet_bodies(cities: list[str], driver_ids: list[str]) -> list[dict[str, Any]]:
    """50-candidate ranking bodies, one per city (Jakarta's geography), cycling the templates."""
    templates = make_requests(driver_ids)
    bodies = []
    for i, city in enumerate(cities):
        body = json.loads(json.dumps(templates[i % len(templates)]))
        body["booking"]["city"] = city
        body["booking"]["booking_id"] = f"fleet-{i}"
        bodies.append(body)
    return bodies


def measure(
    n: int,
    prefix: str,
    cities: list[str],
    uri: str,
    work: Path,
    base_env: dict[str, str],
    driver_ids: list[str],
) -> dict[str, Any]:
    import httpx

    port = free_port()
    env = {
        **base_env,
        "MATCHMAKING_SERVE_TRACKING_URI": uri,
        "MATCHMAKING_SERVE_MODEL_NAME_PREFIX": prefix,
        "MATCHMAKING_SERVE_MAX_MODELS": str(n),
        "MATCHMAKING_SERVE_POLL_INTERVAL_S": str(POLL_S),
        "MATCHMAKING_SERVE_PORT": str(port),
        "MATCHMAKING_SERVE_ACCESS_LOG_SAMPLE": "0",
    }
    bodies = fleet_bodies(cities, driver_ids)
    out: dict[str, Any] = {"n": n}
    with process([sys.executable, "-m", "serving.main"], env, work / f"serve-{n}.log") as proc:
        wait_http(port, "/readyz", proc)
        time.sleep(1.0)
        rss0 = rss_mb(proc.pid)
        cold = []
        logger.info("N=%d: cold first request of every model", n)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            for body in bodies:
                t0 = time.perf_counter()
                r = c.post("/v1/rank", json=body)
                cold.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    raise RuntimeError(f"cold request failed: {r.status_code} {r.text[:300]}")
        rss1 = rss_mb(proc.pid)
        state = models_state(port)
        out.update(
            cold_p50_s=float(np.percentile(cold, 50)),
            cold_p99_s=float(np.percentile(cold, 99)),
            cold_max_s=float(np.max(cold)),
            rss0_mb=rss0,
            rss1_mb=rss1,
            per_model_mb=(rss1 - rss0) / n,
            loaded=len(state["models"]),
            compiled_at_cold_end=sum(m["engine"] == "lleaves" for m in state["models"]),
        )
        logger.info("N=%d: warm closed loop, then half peak", n)
        raw = [json.dumps(b).encode() for b in bodies]
        payloads = [http_request(port, "/v1/rank", r) for r in raw]
        peak: LoadResult | WrkResult
        if shutil.which("wrk"):
            peak = run_wrk(f"warm peak, {n} models", port, "/v1/rank", raw, work)
        else:
            peak = run_load(f"warm peak, {n} models", port, payloads)
        half = run_load(f"warm half peak, {n} models", port, payloads, rate=peak.rps / 2)
        out.update(
            peak_rps=peak.rps,
            peak_p99_ms=peak.pct(99),
            half_rps=peak.rps / 2,
            half_p50_ms=half.pct(50),
            half_p99_ms=half.pct(99),
            warm_errors=peak.errors + half.errors,
        )
        logger.info("N=%d: %g s of polling", n, IDLE_S)
        before = scrape(port)
        time.sleep(IDLE_S)
        after = scrape(port)

        def delta(key: str) -> float:
            return after.get(key, 0.0) - before.get(key, 0.0)

        polls = delta("matchmaking_registry_poll_seconds_count")
        out.update(
            polls=polls,
            # What the last poll asked (the service's gauge: no window-boundary effects).
            calls_per_poll=after["matchmaking_registry_poll_calls"],
            poll_s=delta("matchmaking_registry_poll_seconds_sum") / polls,
            # The poller thread's CPU: what a poll may hold the GIL for while requests wait.
            poll_cpu_s=delta("matchmaking_registry_poll_cpu_seconds_sum") / polls,
        )
        old_calls, old_s = old_poll(uri, [f"{prefix}-{c}" for c in cities])
        out.update(old_calls_per_poll=old_calls, old_poll_s=old_s)
        compiled = models_state(port)
        out["compiled_at_end"] = sum(m["engine"] == "lleaves" for m in compiled["models"])
        out["compile_s"] = after.get("matchmaking_compile_seconds_sum", 0.0) / max(
            after.get("matchmaking_compile_seconds_count", 0.0), 1.0
        )
        if n <= 100:
            logger.info("N=%d: waiting for every compiled forest", n)
            t0 = time.perf_counter()
            deadline = time.monotonic() + COMPILE_WAIT_S
            while time.monotonic() < deadline:
                st = models_state(port)
                if st["compiles_pending"] == 0 and all(
                    m["engine"] == "lleaves" for m in st["models"]
                ):
                    break
                time.sleep(2)
            out["all_compiled_after_s"] = time.perf_counter() - t0
            out["rss_compiled_mb"] = rss_mb(proc.pid)
            out["per_model_compiled_mb"] = (out["rss_compiled_mb"] - rss0) / n
            out["compiled_at_end"] = sum(m["engine"] == "lleaves" for m in st["models"])
            end = scrape(port)
            out["compile_s"] = end.get("matchmaking_compile_seconds_sum", 0.0) / max(
                end.get("matchmaking_compile_seconds_count", 0.0), 1.0
            )
            # Steady state: every forest compiled, no swap left to happen during the loop.
            logger.info("N=%d: half peak again, every forest compiled", n)
            steady = run_load(f"steady half peak, {n} models", port, payloads, rate=peak.rps / 2)
            out.update(
                steady_p50_ms=steady.pct(50),
                steady_p99_ms=steady.pct(99),
                warm_errors=out["warm_errors"] + steady.errors,
            )
    return out


# -- main --------------------------------------------------------------------------------------


def main(report: Path) -> None:
    """Run both fleet sizes and write the markdown report to ``report``."""
    import pandas as pd

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="mm-fleet-"))
    driver_ids = [f"d-{i}" for i in range(5000)]
    rng = np.random.default_rng(3)
    offers = rng.integers(0, 150, len(driver_ids)).astype(float)
    table = work / "driver_table.parquet"
    pd.DataFrame(
        {
            "driver_id": driver_ids,
            "shift_start_min": rng.integers(0, 1440, len(driver_ids)).astype(float),
            "shift_length_min": rng.integers(240, 720, len(driver_ids)).astype(float),
            "offers_28d": offers,
            "accepts_28d": np.floor(offers * rng.uniform(0.3, 0.95, len(driver_ids))),
            "offer_eta_sum_28d": offers * rng.uniform(1.5, 5.0, len(driver_ids)),
        }
    ).to_parquet(table, index=False)
    cities = markets_file(work / "markets.yaml", max(SIZES))
    base_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MATCHMAKING_"))
    }
    base_env["MATCHMAKING_MARKETS"] = str(work / "markets.yaml")
    mlflow_port = free_port()
    server_env = {**base_env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server_cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{work / 'mlflow.db'}",
        "--serve-artifacts", "--artifacts-destination", str(work / "artifacts"),
        "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
    ]  # fmt: skip
    uri = f"http://127.0.0.1:{mlflow_port}"
    from benchmarks.serving import LEAVES, TREES

    results = []
    with process(server_cmd, server_env, work / "mlflow.log") as server:
        wait_http(mlflow_port, "/health", server)
        booster = train_model()
        prefixes = {f"m{n}": cities[:n] for n in SIZES}
        logger.info("registering %d models", sum(SIZES))
        t0 = time.perf_counter()
        register_fleet(uri, booster, table, prefixes)
        register_s = time.perf_counter() - t0
        for n in SIZES:
            results.append(measure(n, f"m{n}", cities[:n], uri, work, base_env, driver_ids))
    load_after = os.getloadavg()
    by = {r["n"]: r for r in results}
    for r in results:
        for key in ("cold_p50", "cold_p99", "cold_max", "poll", "poll_cpu", "old_poll"):
            r[f"{key}_ms"] = r[f"{key}_s"] * 1000
    big, small = by[max(SIZES)], by[min(SIZES)]
    checks = {
        f"cold first request p99 < {COLD_P99_GOAL_S:g} s at {big['n']} models": big["cold_p99_s"]
        < COLD_P99_GOAL_S,
        f"warm p99 <= {WARM_P99_GOAL_MS:g} ms at half peak, {big['n']} models": big["half_p99_ms"]
        <= WARM_P99_GOAL_MS,
        "registry calls per poll the same at 79 and 1,000 models": big["calls_per_poll"]
        == small["calls_per_poll"],
        "every model loaded (cache holds the fleet)": all(r["loaded"] == r["n"] for r in results),
        "no failed warm request": all(r["warm_errors"] == 0 for r in results),
    }

    def row(label: str, fmt: str, key: str) -> str:
        return f"| {label} | " + " | ".join(fmt.format(by[n][key]) for n in SIZES) + " |"

    lines = [
        "# Fleet benchmark: one scoring process, 79 and 1,000 registered models",
        "",
        f"- Date: {datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- Machine: {machine()}",
        "- Command: `.venv/bin/python -m benchmarks.run --only fleet` (part of `make bench`)",
        f"- Models: one LightGBM binary model, {TREES} trees x {LEAVES} leaves, with a "
        f"5,000-driver table, logged once and registered under {' and '.join(map(str, SIZES))}"
        f" names (alias `production`) on a real `mlflow server` (SQLite, proxied artifacts, one "
        f"worker) in {register_s:.0f} s; the cities are {max(SIZES)} markets of a markets file",
        f"- Service: `python -m serving.main`, one worker, `MAX_MODELS` = N, no hot cities, "
        f"compilation on (1 background worker), poll every {POLL_S:g} s",
        "- Cold: the first request of each model in turn (client-side, 50 candidates); the "
        "booster answers while the compiled forest is built in the background",
        "- Warm: closed loop at concurrency 8 over all N models (peak; wrk, 1 thread, when "
        "installed), then an open loop at half that peak, latency from the scheduled send time "
        "(asyncio client); clients and server share the 2 cores",
        f"- Registry: the service's counters over {IDLE_S:g} s of polling; 'previous poller': "
        "one alias lookup per loaded model, timed against the same server in the same run",
        f"- Load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in load_before)}; "
        f"after: {', '.join(f'{x:.2f}' for x in load_after)} on {os.cpu_count()} CPUs",
        "",
        "| figure | " + " | ".join(f"{n} models" for n in SIZES) + " |",
        "| --- | " + " | ".join("---:" for _ in SIZES) + " |",
    ]
    lines += [
        row("cold first request p50 (ms)", "{:.0f}", "cold_p50_ms"),
        row("cold first request p99 (ms)", "{:.0f}", "cold_p99_ms"),
        row("cold first request max (ms)", "{:.0f}", "cold_max_ms"),
        row(
            "models compiled when the last cold request was answered", "{}", "compiled_at_cold_end"
        ),
        row("RSS before loading (MB)", "{:.0f}", "rss0_mb"),
        row("RSS after the cold loads (MB)", "{:.0f}", "rss1_mb"),
        row("memory per loaded model (MB, RSS delta / N)", "{:.2f}", "per_model_mb"),
        row("warm peak (req/s, concurrency 8)", "{:,.0f}", "peak_rps"),
        row("warm p50 at half peak (ms)", "{:.2f}", "half_p50_ms"),
        row("warm p99 at half peak (ms)", "{:.2f}", "half_p99_ms"),
        row("registry calls per poll", "{:.1f}", "calls_per_poll"),
        row("time of one poll (ms)", "{:.1f}", "poll_ms"),
        row("CPU of one poll, poller thread (ms)", "{:.1f}", "poll_cpu_ms"),
        row("previous poller: registry calls per poll", "{}", "old_calls_per_poll"),
        row("previous poller: time of one poll (ms)", "{:.0f}", "old_poll_ms"),
        row("mean compile time, background (s)", "{:.2f}", "compile_s"),
        row("models compiled at the end", "{}", "compiled_at_end"),
        "",
    ]
    if "all_compiled_after_s" in small:
        lines += [
            f"- At {small['n']} models every compiled forest was swapped in "
            f"{small['all_compiled_after_s']:.0f} s after the measurements (one niced worker); "
            f"RSS then {small['rss_compiled_mb']:.0f} MB, "
            f"{small['per_model_compiled_mb']:.2f} MB per compiled model. Then, with no "
            f"compilation left to swap in, the open loop at the same half peak: p50 "
            f"{small['steady_p50_ms']:.2f} ms, p99 {small['steady_p99_ms']:.2f} ms (the warm "
            "figures above ran while the background worker compiled and swapped in forests).",
            "",
        ]
    lines += [
        *checks_table(checks),
    ]
    write_report(report, lines, logger)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, default=Path("benchmarks/reports/fleet.md"))
    main(parser.parse_args().report)
