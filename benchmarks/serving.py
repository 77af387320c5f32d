"""Benchmark: our ``/v1/rank`` against ``mlflow models serve`` on the same registered model.

One run, one machine, loopback only, one server worker each:

1. A self-contained MLflow store (SQLite file + artifact dir in a temp dir) gets one LightGBM
   model registered as training registers it (``matchmaking-jakarta``, with a driver table),
   alias ``production``.
2. The same 50-candidate requests go to both servers: ours gets the JSON ranking request,
   ``mlflow models serve`` gets the 50-row feature frame those candidates produce
   (``dataframe_split``), because it cannot compute features.
3. Closed loop at concurrency 8 for each server (throughput, p50, p99), then an open loop on
   ours at half its peak throughput (p99, measured from each request's scheduled time, so a
   stalled server cannot hide queueing).
   The decision log's cost: a second instance of ours, identical but logging every answer to a
   lake (``MATCHMAKING_SERVE_LAKE_URI``), runs beside the first; closed-loop rounds alternate
   between the two (off, on, off, on, ...) so both see the same machine load, and the medians
   are compared (target: logging costs at most 5% of throughput).
4. The floor: ``Booster.predict`` on the same 50-row matrices, in process, single-threaded.
5. Scores: ours and mlflow's must equal ``Booster.predict`` on the online matrix to 1e-9.

Run: ``python benchmarks/serving.py [--report benchmarks/reports/serving.md]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import checks_table, machine_lines, write_report

logger = logging.getLogger("benchmarks.serving")

CITY = "jakarta"
MODEL = f"matchmaking-{CITY}"
N_CANDIDATES = 50
N_REQUESTS = 64  # distinct bodies, cycled
CONCURRENCY = 8
WARMUP_S = 2.0
MEASURE_S = 8.0
TREES, LEAVES = 400, 7  # the size of a trained city model (train.yaml: 7 leaves, <= 800 rounds)
TARGET_RATIO, TARGET_P99_MS = 10.0, 5.0
TARGET_LOG_COST = 0.05  # the decision log may cost at most this share of /v1/rank throughput


@dataclass
class LoadResult:
    name: str
    requests: int
    errors: int
    seconds: float
    latencies_ms: np.ndarray

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        return (
            float(np.percentile(self.latencies_ms, q)) if len(self.latencies_ms) else float("nan")
        )


# -- the model ---------------------------------------------------------------------------------


def train_model(seed: int = 7) -> Any:
    """A LightGBM binary model the size of a trained city model, on plausible random rows."""
    import lightgbm as lgb

    from matchmaking.schema import FEATURE_NAMES, FEATURES

    rng = np.random.default_rng(seed)
    n = 20_000
    lo = np.array([f.typical[0] for f in FEATURES])
    hi = np.array([f.typical[1] for f in FEATURES])
    x = lo + rng.random((n, len(FEATURE_NAMES))) * (hi - lo)
    logit = 1.0 - 0.35 * x[:, 0] + 0.8 * (x[:, 4] - 4) + 0.08 * x[:, 5] + rng.normal(0, 0.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    params = {"objective": "binary", "num_leaves": LEAVES, "learning_rate": 0.05, "verbose": -1}
    params["num_threads"] = 1
    ds = lgb.Dataset(x, y, feature_name=list(FEATURE_NAMES))
    return lgb.train(params, ds, num_boost_round=TREES)


def register(work: Path, booster: Any, driver_ids: list[str]) -> tuple[str, Path]:
    """Log and register the model in a fresh SQLite store; returns (tracking URI, table path)."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    from matchmaking.schema import FEATURE_NAMES

    uri = f"sqlite:///{work / 'mlflow.db'}"
    rng = np.random.default_rng(3)
    n = len(driver_ids)
    offers = rng.integers(0, 150, n).astype(float)
    table = work / "driver_table.parquet"
    pd.DataFrame(
        {
            "driver_id": driver_ids,
            "shift_start_min": rng.integers(0, 1440, n).astype(float),
            "shift_length_min": rng.integers(240, 720, n).astype(float),
            "offers_28d": offers,
            "accepts_28d": np.floor(offers * rng.uniform(0.3, 0.95, n)),
            "offer_eta_sum_28d": offers * rng.uniform(1.5, 5.0, n),
        }
    ).to_parquet(table, index=False)
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, uri)
    exp = client.create_experiment("bench", artifact_location=(work / "artifacts").as_uri())
    example = pd.DataFrame(np.zeros((3, len(FEATURE_NAMES))), columns=list(FEATURE_NAMES))
    with mlflow.start_run(experiment_id=exp) as run:
        info = mlflow.lightgbm.log_model(
            booster,
            name="model",
            signature=infer_signature(example, booster.predict(example.to_numpy())),
            input_example=example,
            extra_files=[str(table)],
        )
    client.create_registered_model(MODEL)
    mv = client.create_model_version(
        MODEL,
        info.model_uri,
        run_id=run.info.run_id,
        model_id=info.model_id,
        tags={"score_kind": "probability", "objective": "binary"},
    )
    client.set_registered_model_alias(MODEL, "production", str(mv.version))
    mlflow.set_tracking_uri(previous_uri)  # as the caller had it
    return uri, table


# -- requests ----------------------------------------------------------------------------------


def make_requests(driver_ids: list[str]) -> list[dict[str, Any]]:
    """``N_REQUESTS`` ranking bodies of ``N_CANDIDATES`` candidates around Jakarta."""
    from matchmaking.markets import get_market

    city = get_market(CITY)
    rng = np.random.default_rng(11)
    bodies = []
    for k in range(N_REQUESTS):
        plat = city.lat + rng.uniform(-0.1, 0.1)
        plng = city.lng + rng.uniform(-0.1, 0.1)
        ids = rng.choice(driver_ids, N_CANDIDATES, replace=False).tolist()
        ids[0] = f"new-driver-{k}"  # one unknown driver per request
        cands = []
        for j, d in enumerate(ids):
            c: dict[str, Any] = {
                "driver_id": d,
                "location": {
                    "lat": plat + rng.uniform(-0.025, 0.025),
                    "lng": plng + rng.uniform(-0.025, 0.025),
                },
                "rating": round(float(rng.uniform(3.5, 5.0)), 2),
                "home": {
                    "lat": plat + rng.uniform(-0.1, 0.1),
                    "lng": plng + rng.uniform(-0.1, 0.1),
                },
            }
            if j % 5:  # a fifth of the ETAs are estimated by the service
                c["eta_seconds"] = round(float(rng.uniform(60, 700)), 1)
            cands.append(c)
        hour = int(rng.integers(0, 24))
        bodies.append(
            {
                "booking": {
                    "booking_id": f"bench-{k}",
                    "city": CITY,
                    "pickup": {"lat": plat, "lng": plng},
                    "dropoff": {"lat": plat + rng.uniform(-0.06, 0.06), "lng": plng + 0.05},
                    "requested_at": f"2026-11-27T{hour:02d}:15:00+07:00",
                },
                "candidates": cands,
            }
        )
    return bodies


def online_matrix(body: dict[str, Any], table: Path) -> np.ndarray:
    """The 50-row feature matrix of a request, built as the service builds it: its decoder,
    its request-to-rows helpers and the shared feature code."""
    from matchmaking.features.core import build_matrix
    from matchmaking.features.online import DriverTable, build_online_inputs
    from matchmaking.markets import get_market
    from serving.schemas import decode_rank
    from serving.scoring import online_booking, online_candidates

    req = decode_rank(json.dumps(body).encode())
    inputs = build_online_inputs(
        get_market(req.booking.city),
        [online_booking(req.booking)],
        online_candidates(req.candidates),
        DriverTable.from_parquet(table),
    )
    return build_matrix(inputs)


def http_request(port: int, path: str, payload: bytes) -> bytes:
    """One raw HTTP/1.1 keep-alive POST."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


# -- servers -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(port: int, path: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"server on port {port} did not answer {path} in {timeout} s")


@contextlib.contextmanager
def server(cmd: list[str], env: dict[str, str], log: Path, port: int, ready: str) -> Iterator[None]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_http(port, ready, proc)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def wait_compiled(c: Any, timeout: float = 300.0) -> None:
    """Until every loaded model scores with its compiled forest (the service compiles in the
    background after loading): the benchmark measures the steady state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        models = c.get("/v1/models").json()["models"]
        if models and all(m["engine"] == "lleaves" for m in models):
            return
        time.sleep(0.5)
    logger.warning("the compiled forest was not swapped in within %.0f s", timeout)


# -- load --------------------------------------------------------------------------------------


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, await reader.readexactly(length)


async def _connection(
    port: int,
    payloads: list[bytes],
    offset: int,
    start: float,
    stop: float,
    interval: float | None,
    out: list[float],
    errors: list[int],
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = offset
    scheduled = start + (interval * offset / CONCURRENCY if interval else 0.0)
    try:
        while True:
            if interval is not None:
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                t0 = scheduled
                scheduled += interval
            else:
                t0 = time.perf_counter()
            if t0 >= stop:
                return
            writer.write(payloads[i % len(payloads)])
            status, _ = await _read_response(reader)
            t1 = time.perf_counter()
            if t0 >= start + WARMUP_S:
                out.append((t1 - t0) * 1000.0)
                if status != 200:
                    errors.append(status)
            i += 1
    finally:
        writer.close()


def run_load(name: str, port: int, payloads: list[bytes], rate: float | None = None) -> LoadResult:
    """Closed loop (``rate`` None) or open loop at ``rate`` requests/s, over 8 connections."""
    out: list[float] = []
    errors: list[int] = []
    interval = CONCURRENCY / rate if rate else None

    async def main() -> None:
        start = time.perf_counter()
        stop = start + WARMUP_S + MEASURE_S
        await asyncio.gather(
            *(
                _connection(port, payloads, k, start, stop, interval, out, errors)
                for k in range(CONCURRENCY)
            )
        )

    asyncio.run(main())
    lat = np.array(out)
    return LoadResult(name, len(lat), len(errors), MEASURE_S, lat)


WRK_SCRIPT = """
local bodies = {}
local i = 0
function init(args)
  for line in io.lines(args[1]) do table.insert(bodies, line) end
end
function request()
  i = (i % #bodies) + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, bodies[i])
end
"""


@dataclass
class WrkResult:
    """A closed-loop run measured by wrk (percentiles as wrk reports them)."""

    name: str
    rps: float
    percentiles_ms: dict[float, float]
    errors: int

    def pct(self, q: float) -> float:
        return self.percentiles_ms.get(q, float("nan"))


def _wrk_ms(text: str) -> float:
    for unit, scale in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    return float(text)


def run_wrk(name: str, port: int, path: str, bodies: list[bytes], work: Path) -> WrkResult:
    """Closed loop with wrk (C, one thread, CONCURRENCY connections): a client that leaves the
    servers more of this small machine's cores than the asyncio one. Bodies cycle in order."""
    script, lines = work / "post.lua", work / f"bodies-{port}.txt"
    script.write_text(WRK_SCRIPT)
    lines.write_bytes(b"\n".join(bodies) + b"\n")
    url = f"http://127.0.0.1:{port}{path}"
    base = ["wrk", "-t1", f"-c{CONCURRENCY}", "-s", str(script)]
    subprocess.run(
        [*base, f"-d{WARMUP_S:g}s", url, "--", str(lines)], capture_output=True, check=True
    )
    out = subprocess.run(
        [*base, f"-d{MEASURE_S:g}s", "--latency", url, "--", str(lines)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pct: dict[float, float] = {}
    rps, errors = float("nan"), 0
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].endswith("%") and parts[0][:-1].replace(".", "").isdigit():
            pct[float(parts[0][:-1])] = _wrk_ms(parts[1])
        elif line.startswith("Requests/sec:"):
            rps = float(parts[1])
        elif line.strip().startswith("Non-2xx or 3xx responses:"):
            errors += int(parts[-1])
        elif line.strip().startswith("Socket errors:"):
            errors += sum(int(p.strip(",")) for p in parts[3::2])
    return WrkResult(name, rps, pct, errors)


ROUNDS = 3


def median_of(run: Callable[[], WrkResult]) -> tuple[WrkResult, list[float]]:
    """``ROUNDS`` closed-loop runs back to back: the one with the median throughput, and every
    round's req/s (one run on a noisy 2-core machine can be off by a tenth)."""
    results = sorted((run() for _ in range(ROUNDS)), key=lambda r: r.rps)
    return results[len(results) // 2], [r.rps for r in results]


PAIRED_ROUNDS = 5


def interleaved(
    runs: list[Callable[[], Any]], rounds: int = PAIRED_ROUNDS
) -> list[tuple[Any, list[float]]]:
    """Rounds of several closed-loop runs alternated (a, b, a, b, ...): each run's median round
    and every round's req/s, measured under the same drift of the machine's load."""
    results: list[list[Any]] = [[] for _ in runs]
    for _ in range(rounds):
        for i, run in enumerate(runs):
            results[i].append(run())
    out = []
    for res in results:
        ordered = sorted(res, key=lambda r: r.rps)
        out.append((ordered[len(ordered) // 2], [r.rps for r in res]))
    return out


def booster_floor(booster: Any, matrices: list[np.ndarray]) -> np.ndarray:
    """Per-call time (ms) of ``Booster.predict`` on each 50-row matrix, single-threaded."""
    times = []
    for _ in range(20):
        for m in matrices:
            t0 = time.perf_counter()
            booster.predict(m, num_threads=1)
            times.append((time.perf_counter() - t0) * 1000.0)
    return np.array(times)


# -- main --------------------------------------------------------------------------------------


def machine() -> str:
    return "; ".join(
        line.removeprefix("- ")
        for line in machine_lines(("mlflow", "lightgbm", "fastapi", "uvicorn", "numpy"))
    )


def main(report: Path) -> None:
    """Run everything and write the markdown report to ``report``."""
    import httpx

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="mm-bench-"))
    driver_ids = [f"d-{i}" for i in range(5000)]
    logger.info("training and registering a %d-tree model in %s", TREES, work)
    booster = train_model()
    uri, table = register(work, booster, driver_ids)
    bodies = make_requests(driver_ids)
    matrices = [online_matrix(b, table) for b in bodies]
    from matchmaking.schema import FEATURE_NAMES

    columns = list(FEATURE_NAMES)
    ours_port, mlflow_port, logged_port = free_port(), free_port(), free_port()
    raw_bodies = [json.dumps(b).encode() for b in bodies]
    ours_payloads = [http_request(ours_port, "/v1/rank", raw) for raw in raw_bodies]
    logged_payloads = [http_request(logged_port, "/v1/rank", raw) for raw in raw_bodies]
    use_wrk = shutil.which("wrk") is not None
    ours_rounds: list[float] = []
    theirs_rounds: list[float] = []
    if not use_wrk:
        logger.warning(
            "wrk not found: closed-loop runs use the asyncio client (apt-get install wrk)"
        )
    frames = [
        json.dumps({"dataframe_split": {"columns": columns, "data": m.tolist()}}).encode()
        for m in matrices
    ]
    mlflow_payloads = [http_request(mlflow_port, "/invocations", f) for f in frames]

    base_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MATCHMAKING_"))
    }
    base_env["MLFLOW_TRACKING_URI"] = uri
    # `mlflow models serve --env-manager local` execs `uvicorn` from PATH: use this venv's.
    base_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base_env.get('PATH', '')}"
    ours_env = {
        **base_env,
        "MATCHMAKING_SERVE_TRACKING_URI": uri,
        "MATCHMAKING_SERVE_HOT_CITIES": CITY,
        "MATCHMAKING_SERVE_PORT": str(ours_port),
        "MATCHMAKING_SERVE_LOG_LEVEL": "INFO",
    }
    lake = work / "lake"
    logged_env = {
        **ours_env,
        "MATCHMAKING_SERVE_PORT": str(logged_port),
        "MATCHMAKING_SERVE_LAKE_URI": str(lake),  # the decision log on (its default flush)
    }
    ours_cmd = [sys.executable, "-m", "serving.main"]
    mlflow_cmd = [
        sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{MODEL}@production",
        "--env-manager", "local", "-h", "127.0.0.1", "-p", str(mlflow_port), "-w", "1",
    ]  # fmt: skip

    # Correctness first: both servers score exactly like Booster.predict on the online matrix.
    max_diff_ours = max_diff_mlflow = 0.0
    with server(ours_cmd, ours_env, work / "ours.log", ours_port, "/readyz"):
        with httpx.Client(base_url=f"http://127.0.0.1:{ours_port}") as c:
            wait_compiled(c)
            for body, m in zip(bodies[:16], matrices[:16], strict=True):
                want = dict(
                    zip(
                        (x["driver_id"] for x in body["candidates"]),
                        booster.predict(m),
                        strict=True,
                    )
                )
                got = c.post("/v1/rank", json=body).json()["candidates"]
                max_diff_ours = max(
                    max_diff_ours, *(abs(g["score"] - want[g["driver_id"]]) for g in got)
                )
        logger.info("ours: open loop at half of a first closed-loop peak")
        first = run_load("ours (warm-up)", ours_port, ours_payloads)
        half = run_load("ours at half peak", ours_port, ours_payloads, rate=first.rps / 2)
        with server(ours_cmd, logged_env, work / "logged.log", logged_port, "/readyz"):
            with httpx.Client(base_url=f"http://127.0.0.1:{logged_port}") as c:
                wait_compiled(c)
            logger.info(
                "ours, decision log off vs on: closed loops at concurrency %d, interleaved",
                CONCURRENCY,
            )
            ours: LoadResult | WrkResult
            logged: LoadResult | WrkResult
            if use_wrk:
                (ours, ours_rounds), (logged, logged_rounds) = interleaved(
                    [
                        lambda: run_wrk("ours /v1/rank", ours_port, "/v1/rank", raw_bodies, work),
                        lambda: run_wrk(
                            "ours /v1/rank, decision log on",
                            logged_port,
                            "/v1/rank",
                            raw_bodies,
                            work,
                        ),
                    ]
                )
            else:
                (ours, ours_rounds), (logged, logged_rounds) = interleaved(
                    [
                        lambda: run_load("ours /v1/rank", ours_port, ours_payloads),
                        lambda: run_load(
                            "ours /v1/rank, decision log on", logged_port, logged_payloads
                        ),
                    ]
                )
            with httpx.Client(base_url=f"http://127.0.0.1:{logged_port}") as c:
                metrics = c.get("/metrics").text
        log_dropped = sum(
            float(line.rpartition(" ")[2])
            for line in metrics.splitlines()
            if line.startswith("matchmaking_log_dropped_rows_total")
        )
        from matchmaking.lake.serving_log import read_log

        logged_rows = read_log(lake, "decisions", CITY).num_rows  # flushed at its shutdown
    with server(mlflow_cmd, base_env, work / "mlflow.log", mlflow_port, "/ping"):
        with httpx.Client(base_url=f"http://127.0.0.1:{mlflow_port}", timeout=30) as c:
            for f, m in zip(frames[:16], matrices[:16], strict=True):
                got = c.post(
                    "/invocations", content=f, headers={"Content-Type": "application/json"}
                )
                preds = np.asarray(got.json()["predictions"], dtype=np.float64)
                max_diff_mlflow = max(
                    max_diff_mlflow, float(np.abs(preds - booster.predict(m)).max())
                )
        logger.info("mlflow models serve: closed loop at concurrency %d", CONCURRENCY)
        theirs: LoadResult | WrkResult
        if use_wrk:
            theirs, theirs_rounds = median_of(
                lambda: run_wrk(
                    "mlflow models serve /invocations", mlflow_port, "/invocations", frames, work
                )
            )
        else:
            theirs = run_load("mlflow models serve /invocations", mlflow_port, mlflow_payloads)
    floor = booster_floor(booster, matrices)

    load_after = os.getloadavg()[0]
    ratio = ours.rps / theirs.rps
    logged_ratio = logged.rps / theirs.rps
    log_cost = 1.0 - logged.rps / ours.rps
    checks = {
        f"throughput >= {TARGET_RATIO:g}x mlflow models serve": ratio >= TARGET_RATIO,
        f"decision log costs <= {TARGET_LOG_COST:.0%} of throughput": log_cost <= TARGET_LOG_COST,
        f"with the decision log on, >= {TARGET_RATIO:g}x mlflow models serve": logged_ratio
        >= TARGET_RATIO,
        "decision log: every row published, none dropped": log_dropped == 0 and logged_rows > 0,
        f"p99 <= {TARGET_P99_MS:g} ms at half peak": half.pct(99) <= TARGET_P99_MS,
        "scores equal Booster.predict (1e-9)": max(max_diff_ours, max_diff_mlflow) <= 1e-9,
        "no errors": ours.errors == theirs.errors == half.errors == logged.errors == 0,
    }
    rows = [
        (r.name, f"{r.rps:,.0f}", f"{r.pct(50):.2f}", f"{r.pct(99):.2f}", str(r.errors))
        for r in (ours, logged, theirs, half)
    ]
    lines = [
        "# Scoring benchmark: `/v1/rank` vs `mlflow models serve`",
        "",
        f"- Date: {datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- Machine: {machine()}",
        "- Command: `make bench` (this part alone: "
        "`.venv/bin/python -m benchmarks.run --only serving`)",
        f"- Model: LightGBM binary, {TREES} trees x {LEAVES} leaves, registered as `{MODEL}` "
        "(alias `production`) in a fresh SQLite store, with a 5,000-driver table",
        f"- Requests: {N_REQUESTS} distinct bookings x {N_CANDIDATES} candidates, cycled. Ours "
        "gets the ranking JSON (features computed in the service, a fifth of the ETAs estimated); "
        f"mlflow gets the same {N_CANDIDATES}-row feature frame (`dataframe_split`)",
        f"- Closed loop (peak throughput, both servers): "
        f"{'wrk, 1 thread' if use_wrk else 'raw HTTP/1.1 from one asyncio process'}, "
        f"{CONCURRENCY} keep-alive connections, {WARMUP_S:g} s warm-up then {MEASURE_S:g} s "
        "measured; one uvicorn worker per server; client and server share the machine's cores",
        "- Open loop (p99 at half our peak): the asyncio client on a fixed schedule, latency from "
        "the scheduled send time",
        f"- 1-minute load average before / after the run: {load_before:.2f} / {load_after:.2f} "
        f"on {os.cpu_count()} CPUs (other work on the machine inflates the tails)",
        "",
        "| run | req/s | p50 ms | p99 ms | errors |",
        "| --- | ---: | ---: | ---: | ---: |",
        *[f"| {' | '.join(r)} |" for r in rows],
        "",
        f"- Throughput ratio at concurrency {CONCURRENCY}: **{ratio:.2f}x**"
        + (
            f" (medians: ours {PAIRED_ROUNDS} rounds, mlflow {ROUNDS}; ours "
            f"{', '.join(f'{r:,.0f}' for r in ours_rounds)} req/s, mlflow "
            f"{', '.join(f'{r:,.0f}' for r in theirs_rounds)} req/s)"
            if ours_rounds
            else ""
        ),
        f"- Decision log on vs off (instances side by side, {PAIRED_ROUNDS} interleaved rounds "
        f"each, medians): **{log_cost:+.1%}** of throughput (negative: the logged one was "
        f"faster, i.e. within noise); off {', '.join(f'{r:,.0f}' for r in ours_rounds)} req/s, "
        f"on {', '.join(f'{r:,.0f}' for r in logged_rounds)} req/s; with the log on "
        f"**{logged_ratio:.2f}x** mlflow models serve; {logged_rows:,} decision rows published "
        f"(one per ranked candidate), {log_dropped:.0f} dropped",
        f"- Floor, `Booster.predict` on the same 50-row matrices in process (num_threads=1): "
        f"p50 {np.percentile(floor, 50):.3f} ms, p99 {np.percentile(floor, 99):.3f} ms",
        f"- Largest score difference vs `Booster.predict`: ours {max_diff_ours:.1e}, "
        f"mlflow {max_diff_mlflow:.1e}",
        "",
        *checks_table(checks),
    ]
    write_report(report, lines, logger)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, default=Path("benchmarks/reports/serving.md"))
    main(parser.parse_args().report)
